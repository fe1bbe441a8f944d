"""Whole-batch augmentations on the device: one kernel per batch instead of one PIL call per image."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def random_flip(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Flip each image of (B, C, H, W) left-right with probability p."""
    flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < p
    return torch.where(flip, x.flip(3), x)


def random_translate(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Shift each image by its own random (dy, dx) in [-max_shift, max_shift], zero fill (pad + random crop)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)  # (B, C, H + 2s, W + 2s)
    dy = torch.randint(0, 2 * max_shift + 1, (b, 1, 1), device=x.device)
    dx = torch.randint(0, 2 * max_shift + 1, (b, 1, 1), device=x.device)
    rows = dy + torch.arange(h, device=x.device).view(1, h, 1)  # (B, H, 1)
    cols = dx + torch.arange(w, device=x.device).view(1, 1, w)  # (B, 1, W)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
