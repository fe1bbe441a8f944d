"""Non-finite losses: stop the run at the step they appear (before any update), or skip that batch."""
from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch

log = logging.getLogger("dlexp")
ON_NAN = ("stop", "skip")


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or inf; raised before backward, so no weight was touched."""


def check_on_nan(on_nan: str) -> str:
    """on_nan, once checked."""
    if on_nan not in ON_NAN:
        raise ValueError(f"on_nan must be stop or skip, got '{on_nan}'")
    return on_nan


def all_finite(module: pl.LightningModule, on_nan: str, terms: dict[str, torch.Tensor]) -> bool:
    """True when every loss term is finite; otherwise raise NonFiniteLoss (on_nan=stop) or warn (skip)."""
    bad = {name: value for name, value in terms.items() if not bool(torch.isfinite(value).all())}
    trainer = module._trainer
    finite = not bad
    if trainer is not None and trainer.world_size > 1:  # DDP: every rank skips or stops at the same batch
        finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
    if finite:
        return True
    what = ", ".join(f"{name} = {value.detach().float().mean().item()}" for name, value in bad.items())
    what = what or "on another DDP rank"
    message = f"non-finite loss at step {module.global_step} (epoch {module.current_epoch}): {what}"
    if on_nan == "stop":
        raise NonFiniteLoss(f"{message}; set on_nan=skip to skip such batches")
    log.warning("%s: batch skipped", message)
    return False
