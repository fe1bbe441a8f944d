"""Learning-rate schedules, each built from (optimizer, total_steps, steps_per_epoch) into a Lightning scheduler dict.

The per-batch schedules are LambdaLR multipliers written as small dataclasses, so their state is
plain numbers in the checkpoint (docs/contracts.md, C4) and a linear warmup composes with any of them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR, ReduceLROnPlateau


@dataclass
class Multiplier:
    """lr factor at a step: linear warmup over warmup_steps, then the schedule's decay()."""

    warmup_steps: int = 0

    def __call__(self, step: int) -> float:
        warmup = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        return warmup * self.decay(step)

    def decay(self, step: int) -> float:
        return 1.0


@dataclass
class ExponentialDecay(Multiplier):
    """The notes' formula: lr * decay_rate ** (step / decay_steps)."""

    decay_rate: float = 0.1
    decay_steps: int = 10000

    def decay(self, step: int) -> float:
        return self.decay_rate ** (step / self.decay_steps)


@dataclass
class StepDecay(Multiplier):
    """lr * gamma ** (epoch // step_size), with the epoch counted from batches."""

    gamma: float = 0.1
    step_size: int = 10
    steps_per_epoch: int = 1

    def decay(self, step: int) -> float:
        return self.gamma ** (step // (self.step_size * self.steps_per_epoch))


@dataclass
class CosineDecay(Multiplier):
    """Half a cosine from 1 down to min_factor over total_steps."""

    total_steps: int = 1
    min_factor: float = 0.0

    def decay(self, step: int) -> float:
        progress = min(1.0, step / max(1, self.total_steps))
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def _per_step(optimizer: Optimizer, multiplier: Multiplier) -> dict:
    return {"scheduler": LambdaLR(optimizer, multiplier), "interval": "step"}


def constant(optimizer: Optimizer, total_steps: int, steps_per_epoch: int, warmup_steps: int = 0) -> dict:
    """Constant lr, after an optional linear warmup."""
    return _per_step(optimizer, Multiplier(warmup_steps))


def exponential(optimizer: Optimizer, total_steps: int, steps_per_epoch: int, decay_rate: float = 0.1,
                decay_steps: int = 10000, warmup_steps: int = 0) -> dict:
    """lr * decay_rate ** (step / decay_steps), stepped every batch."""
    if decay_steps <= 0:
        raise ValueError(f"scheduler.decay_steps must be positive, got {decay_steps}")
    return _per_step(optimizer, ExponentialDecay(warmup_steps, decay_rate, decay_steps))


def step(optimizer: Optimizer, total_steps: int, steps_per_epoch: int, step_size: int = 10, gamma: float = 0.1,
         warmup_steps: int = 0) -> dict:
    """lr * gamma every step_size epochs."""
    if step_size <= 0:
        raise ValueError(f"scheduler.step_size must be positive, got {step_size}")
    return _per_step(optimizer, StepDecay(warmup_steps, gamma, step_size, max(1, steps_per_epoch)))


def cosine(optimizer: Optimizer, total_steps: int, steps_per_epoch: int, min_factor: float = 0.0,
           warmup_steps: int = 0) -> dict:
    """Cosine annealing over the whole run."""
    return _per_step(optimizer, CosineDecay(warmup_steps, total_steps, min_factor))


def onecycle(optimizer: Optimizer, total_steps: int, steps_per_epoch: int, max_lr: float = 0.01,
             pct_start: float = 0.25) -> dict:
    """Smith's one-cycle policy over the whole run (its own warmup is pct_start)."""
    if not 0 < pct_start < 1:
        raise ValueError(f"scheduler.pct_start must be in (0, 1), got {pct_start}")
    # OneCycleLR divides by pct_start * total_steps - 1: a run shorter than that stops early in the cycle
    shortest = math.floor(1 / pct_start) + 1
    return {"scheduler": OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(total_steps, shortest),
                                    pct_start=pct_start), "interval": "step"}


# their curve spans the whole run, so its length cannot change on resume (dlexp resume refuses trainer.max_epochs)
cosine.plans_run_length = True
onecycle.plans_run_length = True


def plateau(optimizer: Optimizer, total_steps: int, steps_per_epoch: int, monitor: str = "val/loss",
            mode: str = "min", factor: float = 0.1, patience: int = 5) -> dict:
    """Reduce lr by factor when `monitor` stalls for patience epochs."""
    return {"scheduler": ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience),
            "interval": "epoch", "monitor": monitor}
