"""Callbacks that shape training: early stopping every N epochs, gradient clipping, layer freezing, run info."""
from __future__ import annotations

import logging
import math
import re
import sys

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping as LightningEarlyStopping, TQDMProgressBar
from torch import nn

from dlexp.callbacks.frozen_cache import cache_frozen_prefix

log = logging.getLogger(__name__)


class EarlyStopping(LightningEarlyStopping):
    """Lightning's early stopping, checked every `check_every_n_epochs` epochs with patience in epochs.

    The notes evaluate every 5 epochs and give up after 50 epochs without progress: that is
    check_every_n_epochs=5, patience=50 (10 checks).
    """

    def __init__(self, monitor: str, mode: str = "min", patience: int = 10, min_delta: float = 0.0,
                 check_every_n_epochs: int = 1) -> None:
        if check_every_n_epochs < 1:
            raise ValueError(f"check_every_n_epochs must be >= 1, got {check_every_n_epochs}")
        checks = max(1, math.ceil(patience / check_every_n_epochs))
        super().__init__(monitor=monitor, mode=mode, patience=checks, min_delta=min_delta,
                         check_on_train_epoch_end=False)
        self.check_every_n_epochs = check_every_n_epochs

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.check_every_n_epochs == 0:
            super().on_validation_end(trainer, pl_module)


class GradientClipping(pl.Callback):
    """Clip gradients before each optimizer step, by global L2 norm or by value; logs train/grad_norm.

    A callback rather than Trainer(gradient_clip_val=...) so that it also works for tasks that
    step their optimizers by hand (GANs), where Lightning's own clipping is not allowed.
    """

    def __init__(self, algorithm: str = "norm", threshold: float = 1.0) -> None:
        if algorithm not in ("norm", "value"):
            raise ValueError(f"grad_clip.algorithm must be 'norm' or 'value', got '{algorithm}'")
        if threshold <= 0:
            raise ValueError(f"grad_clip.threshold must be positive, got {threshold}")
        self.algorithm, self.threshold = algorithm, threshold

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        if self.algorithm == "norm":
            norm = torch.nn.utils.clip_grad_norm_(params, self.threshold)
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
            torch.nn.utils.clip_grad_value_(params, self.threshold)
        pl_module.log("train/grad_norm", norm, on_step=True, on_epoch=False)


class Freeze(pl.Callback):
    """Freeze parameters whose names match any regex; batch norm of frozen layers stays in eval mode.

    With unfreeze_at_epoch=N the parameters train again from epoch N (0-based). All parameters are in
    the optimizer from the start; frozen ones simply get no gradient. cache="auto" computes the outputs
    of a frozen leading prefix once per sample and trains the rest on them when that gives the same
    results (dlexp/callbacks/frozen_cache.py; it logs why not otherwise); cache=False always runs the whole net.
    """

    freezes_parameters = True  # a backward pass reaches only part of the net (DDP must look for unused parameters)

    def __init__(self, patterns: list[str], unfreeze_at_epoch: int | None = None, cache: str | bool = "auto",
                 cache_max_mb: float = 2048) -> None:
        if cache not in ("auto", False):
            raise ValueError(f"callbacks.freeze.cache must be auto or false, got {cache!r}")
        self.patterns = [re.compile(p) for p in patterns]
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.cache, self.cache_max_mb = cache, cache_max_mb
        self.frozen_names: list[str] = []
        self._frozen_norms: list[nn.Module] = []

    def matches(self, name: str) -> bool:
        return any(p.search(name) for p in self.patterns)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.unfreeze_at_epoch is not None and trainer.current_epoch >= self.unfreeze_at_epoch:
            return  # resumed after the unfreeze point
        self.frozen_names = [n for n, p in pl_module.named_parameters() if self.matches(n)]
        if not self.frozen_names:
            raise ValueError(
                f"freeze patterns {[p.pattern for p in self.patterns]} match no parameter; names look like "
                + ", ".join(n for n, _ in list(pl_module.named_parameters())[:4])
            )
        self._set(pl_module, frozen=True)
        log.info("froze %d parameter tensors: %s", len(self.frozen_names), ", ".join(self.frozen_names))
        if self.cache == "auto" and self.unfreeze_at_epoch is None:
            frozen = [p for n, p in pl_module.named_parameters() if n in self.frozen_names]
            cache_frozen_prefix(trainer, pl_module, frozen, self.cache_max_mb)
        else:
            log.info("frozen-prefix cache: off (%s)", "callbacks.freeze.cache=false" if self.cache is False else
                     f"unfreeze_at_epoch={self.unfreeze_at_epoch}: the frozen layers train again later")

    def _set(self, pl_module: pl.LightningModule, frozen: bool) -> None:
        for m in self._frozen_norms:  # unfreezing: these batch norms train (and update their statistics) again
            m.train(pl_module.training)
        for name, p in pl_module.named_parameters():
            if name in self.frozen_names:
                p.requires_grad_(not frozen)
        self._frozen_norms = [
            m for m in pl_module.modules()
            if frozen and isinstance(m, nn.modules.batchnorm._BatchNorm)
            and any(p.requires_grad is False for p in m.parameters(recurse=False))
        ]

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        for m in self._frozen_norms:  # keep them in eval mode whatever mode changes happened around validation
            m.eval()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.unfreeze_at_epoch is not None and trainer.current_epoch == self.unfreeze_at_epoch and self.frozen_names:
            self._set(pl_module, frozen=False)
            log.info("epoch %d: unfroze %d parameter tensors", trainer.current_epoch, len(self.frozen_names))
            self.frozen_names = []


class RunInfo(pl.Callback):
    """Stores the run's resolved config (plain containers) in every checkpoint, so a .ckpt is self-describing."""

    def __init__(self, config: dict) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint["dlexp_config"] = self.config


class ProgressBar(TQDMProgressBar):
    """tqdm bars on a terminal; elsewhere (CI, files, pipes) one log line per epoch instead of bar redraws."""

    def __init__(self, refresh_rate: int = 20) -> None:
        super().__init__(refresh_rate=refresh_rate)
        if not sys.stderr.isatty():
            self.disable()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # read on every rank: under DDP this computes (syncs) the epoch means, which a read on rank 0 alone
        # would do out of step with the other ranks' collectives
        metrics = trainer.callback_metrics
        super().on_train_epoch_end(trainer, pl_module)
        if not self.is_enabled and trainer.is_global_zero:
            shown = {k.removesuffix("_epoch"): float(v) for k, v in metrics.items()
                     if not k.endswith("_step") and k != "train/loss"}
            log.info("epoch %d: %s", trainer.current_epoch,
                     "  ".join(f"{k} {v:.4f}" for k, v in sorted(shown.items())))
