"""A callback the benchmarks add to `dlexp train` runs: wall-clock stamps of the run's phases on stderr.

Added with `+callbacks.timing_probe={_target_:timing_probe.TimingProbe}` and benchmarks/ on PYTHONPATH;
a stamp is one line `bench_stamp <name> <unix time>` (the plain loops print the same lines), so a driver
can split a command's wall time into start-up, training and the rest. It does nothing per batch
but compare an int, so it costs nothing measurable.
"""
from __future__ import annotations

import pytorch_lightning as pl

from common import stamp


class TimingProbe(pl.Callback):
    """Stamps: built (callbacks instantiated: config, data and net are done), fit_start, first_step, epoch_end_N,
    fit_end."""

    def __init__(self) -> None:
        stamp("built")
        self.first = True

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stamp("fit_start")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if self.first:
            self.first = False
            stamp("first_step")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stamp(f"epoch_end_{trainer.current_epoch}")  # after validation and the epoch's checkpoints

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stamp("fit_end")  # after the last epoch's validation and checkpoints: the plain loops stamp the same point
