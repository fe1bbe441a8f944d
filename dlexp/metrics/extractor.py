"""A feature extractor for sample-quality scores: a frozen classifier and its input normalisation. Features are
the input of its last linear layer; probabilities its softmax. (Where extractors come from: dlexp/engine/extractors.py.)"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Extractor:
    """A frozen net with its input normalisation; features() and probs() take [0, 1] images (B, C, H, W)."""

    net: nn.Module
    mean: torch.Tensor
    std: torch.Tensor
    protocol: dict[str, Any]
    image_size: int | None = None  # resize to this (inception: 299)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if self.image_size and x.shape[-1] != self.image_size:
            x = nn.functional.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        if x.shape[1] == 1 and self.mean.shape[1] == 3:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def run(self, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, D), class probabilities (N, K)) of [0, 1] images."""
        last = [m for m in self.net.modules() if isinstance(m, nn.Linear)][-1]
        captured: list[torch.Tensor] = []
        hook = last.register_forward_pre_hook(lambda module, args: captured.append(args[0].flatten(1)))
        feats, probs = [], []
        try:
            for chunk in images.split(batch_size):
                captured.clear()
                logits = self.net(self._prepare(chunk))
                feats.append(captured[-1].double())
                probs.append(torch.softmax(logits.double(), dim=1))
        finally:
            hook.remove()
        return torch.cat(feats), torch.cat(probs)
