"""What exact resumption and clean interruption need beyond Lightning: RNG states, signal handling, DDP checks."""
from __future__ import annotations

import hashlib
import logging
import random
import signal
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from dlexp.errors import RunInterrupted

log = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    """Every RNG a run draws from (python, numpy, torch, CUDA), as plain containers and tensors."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back what rng_state() took."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def tensor_sha256(tensor: Any) -> str:
    """sha256 of a tensor's bytes (any dtype, any device)."""

    return hashlib.sha256(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes()).hexdigest()


def weights_digest(state_dict: dict[str, Any]) -> str:
    """16 hex digits of sha256 over a state_dict's names and tensor digests: equal digests, bitwise equal weights.

    Values are tensors or their tensor_sha256 already."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        value = state_dict[name]
        digest.update(name.encode())
        digest.update((value if isinstance(value, str) else tensor_sha256(value)).encode())
    return digest.hexdigest()[:16]


class RNGState(pl.Callback):
    """Saves python/numpy/torch/CUDA RNG states in every checkpoint and restores them when training restarts.

    Restored at on_train_start, after everything that draws at start-up (model init) and before the
    first batch is augmented, so the resumed run draws exactly what the uninterrupted one drew.
    Under DDP each rank draws from its own seed (seed + rank: its own noise, dropout and augmentation)
    and the checkpoint holds every rank's states (rank_rng_states), each restored on its rank.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint["rng_state"] = rng_state()
        if trainer.world_size > 1:  # every rank runs this hook; rank 0 writes the file
            states: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(states, checkpoint["rng_state"])
            checkpoint["rank_rng_states"] = states

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        ranks = checkpoint.get("rank_rng_states") or []
        same_ranks = len(ranks) == trainer.world_size
        self._pending = ranks[trainer.global_rank] if same_ranks else checkpoint.get("rng_state")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is not None:
            set_rng_state(self._pending)
            self._pending = None
        elif trainer.world_size > 1:
            seed = torch.initial_seed() + trainer.global_rank  # initial_seed: the run's seed, on every rank
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)


class WeightsAgreement(pl.Callback):
    """At the end of fit under DDP: every rank's weights digest, gathered and compared (`metrics` for metrics.json).

    Buffers first become rank 0's, as DDP makes them before every forward (broadcast_buffers): BatchNorm
    statistics of a GAN, which has no validation forward after its last training step, would otherwise keep
    each rank's last update. Parameters are compared as trained: ranks that disagree are a synchronisation bug.
    """

    def __init__(self) -> None:
        self.metrics: dict[str, Any] = {}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size < 2:
            return
        for buffer in pl_module.buffers():
            torch.distributed.broadcast(buffer, src=0)
        state = pl_module.state_dict()
        digests: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(digests, {k: tensor_sha256(v) for k, v in state.items()})
        log.info("weights sha256 by rank: %s", " ".join(weights_digest(d) for d in digests))
        differ = [k for k in state if len({d[k] for d in digests}) > 1]
        if differ:
            log.warning("DDP ranks ended with different weights: %s", ", ".join(differ))
        self.metrics = {"ddp/weights_sha256": weights_digest(digests[trainer.global_rank]),
                        "ddp/weights_identical": not differ}


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
        if batch_idx + 1 < trainer.num_training_batches and self._stopping(trainer):
            self._stop(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._stopping(trainer):
            self._stop(trainer)

    def _stopping(self, trainer: pl.Trainer) -> bool:
        """A signal came here or, under DDP, to any rank: then every rank stops after this same batch."""
        stop = trainer.strategy.reduce_boolean_decision(self.signum is not None, all=False)
        if stop and self.signum is None:
            self.signum = signal.SIGTERM  # another rank's signal (rank 0 reports the one it received)
        return stop

    def _stop(self, trainer: pl.Trainer) -> None:
        trainer.save_checkpoint(self.last_checkpoint, weights_only=False)
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
        # save_on_train_epoch_end: every epoch even when validation runs only every N epochs (Lightning would
        # then save only after validation)
        super().__init__(dirpath=dirpath, filename="last", monitor=None, save_top_k=1,
                         every_n_train_steps=every_n_train_steps, enable_version_counter=False,
                         save_on_train_epoch_end=True)
        self._every_n_epochs = 1  # and after every epoch as well

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # no step save on an epoch's last batch: the epoch-end save follows at once, and a checkpoint taken between
        # the two (batch processed, not completed) resumes past the epoch's end hooks and the next epoch's start
        # (found by killing runs mid-write: tests/e2e/test_kill_resume.py)
        if batch_idx + 1 < trainer.num_training_batches:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    # the epoch-end save must happen even when the step trigger fired just before: that save came before
    # validation, and resuming from it would lose the epoch's validation (best score, patience)
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_global_step_saved = -1
        super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_global_step_saved = -1
        super().on_validation_end(trainer, pl_module)
