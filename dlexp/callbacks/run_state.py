"""What exact resumption and clean interruption need beyond Lightning: RNG states and signal handling."""
from __future__ import annotations

import logging
import signal
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

from dlexp.checkpoint import rng_state, set_rng_state

log = logging.getLogger(__name__)


class RNGState(pl.Callback):
    """Saves python/numpy/torch/CUDA RNG states in every checkpoint and restores them when training restarts.

    Restored at on_train_start, after everything that draws at start-up (model init) and before the
    first batch is augmented, so the resumed run draws exactly what the uninterrupted one drew.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint["rng_state"] = rng_state()

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self._pending = checkpoint.get("rng_state")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is not None:
            set_rng_state(self._pending)
            self._pending = None


class RunInterrupted(Exception):
    """Ctrl-C or SIGTERM: training stopped after a batch and a resumable checkpoint was written."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopOnSignal(pl.Callback):
    """Turns SIGINT/SIGTERM into: finish the current batch, write last.ckpt, raise RunInterrupted.

    A second Ctrl-C while stopping interrupts at once (KeyboardInterrupt).
    """

    def __init__(self, last_checkpoint: str) -> None:
        self.last_checkpoint = last_checkpoint
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Take over SIGINT and SIGTERM (again at train start: Lightning registers its own SIGTERM handler)."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous = signal.signal(signum, self._handle)
            self._previous.setdefault(signum, previous)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise RunInterrupted(signum)  # a second Ctrl-C: stop now (the last checkpoint stays the resume point)
        self.signum = signum
        log.info("received %s: stopping after this batch", signal.Signals(signum).name)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.install()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx):
        # on an epoch's last batch, let validation and the epoch's bookkeeping run first (on_train_epoch_end)
        if self.signum is not None and batch_idx + 1 < trainer.num_training_batches:
            self._stop(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.signum is not None:
            self._stop(trainer)

    def _stop(self, trainer: pl.Trainer) -> None:
        trainer.save_checkpoint(self.last_checkpoint)
        raise RunInterrupted(self.signum)

    def check(self) -> None:
        """Outside the training loop (start-up, validation, test): stop now if a signal came."""
        if self.signum is not None:
            raise RunInterrupted(self.signum)


class LastCheckpoint(ModelCheckpoint):
    """checkpoints/last.ckpt after every epoch and, with every_n_train_steps, every N training steps too.

    The state a resume continues from; N bounds what a kill can lose. (Lightning's save_last only
    writes when a monitored checkpoint is written, and its step and epoch triggers exclude each other.)
    """

    def __init__(self, dirpath: str, every_n_train_steps: int | None = None) -> None:
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be >= 1 or null, got {every_n_train_steps}")
        super().__init__(dirpath=dirpath, filename="last", monitor=None, save_top_k=1,
                         every_n_train_steps=every_n_train_steps, enable_version_counter=False)
        self._every_n_epochs = 1  # and after every epoch as well

    # the epoch-end save must happen even when the step trigger fired on the epoch's last batch: that save
    # came before validation, and resuming from it would lose the epoch's validation (best score, patience)
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_global_step_saved = -1
        super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_global_step_saved = -1
        super().on_validation_end(trainer, pl_module)
