"""Character-level language modelling as a LightningModule: predict the next character at every position."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dlexp.tasks.supervised import SupervisedTask


class LanguageModelTask(SupervisedTask):
    """Cross-entropy of logits (B, T, V) against the next characters (B, T), per character: stage/loss in nats and
    stage/bpc = loss / ln 2 in bits per character; val/loss_best is the lowest val/loss so far."""

    eval_report = "language_model"  # dlexp eval: test loss and bits per character (dlexp/engine/evaluation.py)
    # what `monitor` may name (checked before a run or a search starts: dlexp/config/checks.py)
    logged_metrics = ("train/loss", "train/bpc", "train/reg_loss", "val/loss", "val/bpc", "val/loss_best",
                      "test/loss", "test/bpc")
    best_metric = "loss"

    def step_metrics(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
        """Mean cross-entropy per character (nats) and in bits, and the number of sequences."""
        x, y = batch
        logits = self.net(x)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        return {"loss": loss, "bpc": loss / math.log(2)}, y.shape[0]

    @torch.no_grad()
    def generate(self, prompt_ids: torch.Tensor, n: int, temperature: float | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """n character ids after prompt_ids (T0,), sampled by the net (temperature 0/None: greedy)."""
        return self.net.generate(prompt_ids, n, temperature, generator)

    def check_batch(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Fail before training when the net does not give one distribution per position over the alphabet."""
        logits = self.net(x)
        if logits.ndim != 3 or logits.shape[:2] != y.shape or logits.shape[2] <= int(y.max()):
            raise ValueError(f"the model outputs {tuple(logits.shape)} for targets {tuple(y.shape)} with ids up to "
                             f"{int(y.max())}; a language model gives (batch, positions, vocab_size) logits")
