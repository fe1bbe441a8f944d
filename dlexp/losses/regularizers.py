"""Weight penalties and constraints, applied to weight matrices and kernels (not biases or norm scales)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def penalized(module: nn.Module) -> list[torch.nn.Parameter]:
    """Weights a penalty applies to: trainable tensors of 2 or more dims (linear and conv weights)."""
    return [p for p in module.parameters() if p.ndim >= 2 and p.requires_grad]


@dataclass
class Regularization:
    """What regularizer=... chose: loss penalties, max-norm, dropout (read by the model) and label smoothing.

    l2 here is lambda * sum(w^2) added to the loss (Keras' kernel_regularizer). optimizer.weight_decay
    is different: SGD's weight_decay=wd equals l2=wd/2; Adam's folds the decay into the adaptive
    step, and AdamW's decays the weights outside the gradient altogether.
    """

    l1: float = 0.0
    l2: float = 0.0
    max_norm: float | None = None
    dropout: float = 0.0
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        for name in ("l1", "l2", "dropout", "label_smoothing"):
            if getattr(self, name) < 0:
                raise ValueError(f"regularizer.{name} must be >= 0, got {getattr(self, name)}")
        if self.dropout >= 1 or self.label_smoothing >= 1:
            raise ValueError("regularizer.dropout and regularizer.label_smoothing must be < 1")
        if self.max_norm is not None and self.max_norm <= 0:
            raise ValueError(f"regularizer.max_norm must be positive, got {self.max_norm}")

    @property
    def has_penalty(self) -> bool:
        return self.l1 > 0 or self.l2 > 0

    def penalty(self, module: nn.Module) -> torch.Tensor:
        """l1 * sum|w| + l2 * sum w^2 over the module's weights."""
        total = torch.zeros((), device=next(module.parameters()).device)
        for w in penalized(module):  # may be none: e.g. only biases are trained
            if self.l1 > 0:
                total = total + self.l1 * w.abs().sum()
            if self.l2 > 0:
                total = total + self.l2 * w.pow(2).sum()
        return total

    @torch.no_grad()
    def apply_max_norm(self, module: nn.Module) -> None:
        """Rescale each output unit's incoming weights to L2 norm <= max_norm (the notes' max-norm)."""
        if self.max_norm is None:
            return
        for w in penalized(module):
            w.copy_(w.renorm(2, 0, self.max_norm))  # dim 0 = output units of Linear and Conv weights
