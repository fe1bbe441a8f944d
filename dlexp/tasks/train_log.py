"""A task's training-step values, handed to Lightning only when Lightning uses them (the engine loop's cost)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import pytorch_lightning as pl
import torch


class TrainLog:
    """What `self.log(name, value, on_step=True, on_epoch=True, sync_dist=True)` at every training step gives, at a
    fraction of its cost.

    Lightning's `log` costs about a millisecond of Python per call on a CPU (it walks the stored metric's state each
    time; cProfile of the notes' convnet: 2.5 ms of a 35 ms step for its two values). Here a step only adds each
    value, times its batch size, to a running sum of detached tensors (no host sync). Lightning gets the step values
    at the steps it writes to the loggers (every `trainer.log_every_n_steps`) and the epoch's means once, at the
    epoch's last batch, under the names `log` gives them: `<name>_step` and `<name>_epoch` for a value kept per step
    (`per_step`; names never added, such as a task's val/ metrics, are ignored), plus `<name>` for callbacks that
    monitor it; `<name>` for a value kept per epoch only. The means are weighted by batch size and, under DDP,
    synced across ranks, as Lightning's own.

    A task calls add() in training_step, end_batch() in on_train_batch_end and end_epoch() in on_train_epoch_end
    (an epoch cut short by max_steps or a stop never reaches its last batch).
    """

    def __init__(self, per_step: Iterable[str] = (), prog_bar: Iterable[str] = ()) -> None:
        self.per_step, self.prog_bar = frozenset(per_step), frozenset(prog_bar)
        self.sums: dict[str, tuple[torch.Tensor, int]] = {}
        self.latest: dict[str, torch.Tensor] = {}

    def add(self, values: Mapping[str, torch.Tensor], batch_size: int) -> None:
        """This step's values (tensors), each weighing batch_size in its epoch mean."""
        for name, value in values.items():
            value = value.detach().float()
            total, count = self.sums.get(name, (0.0, 0))
            self.sums[name] = (total + value * batch_size, count + batch_size)
            if name in self.per_step:
                self.latest[name] = value

    def end_batch(self, module: pl.LightningModule, batch_idx: int) -> None:
        """The step's values at a logging step; the epoch's means after its last batch."""
        trainer = module.trainer
        # Lightning's own test for "this step goes to the loggers" (its LearningRateMonitor asks it too)
        if self.latest and (trainer._logger_connector.should_update_logs or trainer.fast_dev_run):
            for name, value in self.latest.items():
                module.log(f"{name}_step", value, on_step=True, on_epoch=False, prog_bar=name in self.prog_bar,
                           sync_dist=True)
        self.latest = {}
        if batch_idx + 1 >= trainer.num_training_batches:
            self.end_epoch(module)

    def end_epoch(self, module: pl.LightningModule) -> None:
        """The epoch's means (nothing when end_batch logged them already)."""
        for name, (total, count) in self.sums.items():
            mean, once = total / count, {"on_step": False, "on_epoch": True, "batch_size": count, "sync_dist": True}
            if name in self.per_step:
                module.log(f"{name}_epoch", mean, prog_bar=name in self.prog_bar, **once)
                module.log(name, mean, logger=False, **once)
            else:
                module.log(name, mean, prog_bar=name in self.prog_bar, **once)
        self.sums = {}
