"""The shared loop of tasks that fit (x, y) batches with one loss and track the best value of a validation metric to
minimise (regression: val/mae, language models: val/loss): one step for train, val and test."""
from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from torch import nn

from dlexp.losses.regularizers import Regularization
from dlexp.tasks.classification import OptimizerFactory, SchedulerFactory, configure
from dlexp.tasks.guard import all_finite, check_on_nan
from dlexp.tasks.train_log import TrainLog


class SupervisedTask(pl.LightningModule):
    """Subclasses give step_metrics(batch) -> ({"loss": ..., other metrics}, batch size) and `best_metric`.

    Logs stage/<name> for each metric (train: per step and per epoch; val and test: per epoch), train/reg_loss
    with an l1/l2 penalty, and val/<best_metric>_best, the lowest val/<best_metric> of the run so far.
    """

    best_metric = "loss"  # val/<best_metric>_best follows its minimum
    logged_metrics: tuple[str, ...] = ("train/loss", "train/reg_loss")  # subclasses name theirs (config checks)

    def __init__(self, net: nn.Module, optimizer: OptimizerFactory, scheduler: SchedulerFactory | None = None,
                 regularization: Regularization | None = None, on_nan: str = "stop") -> None:
        super().__init__()
        self.on_nan, self.net = check_on_nan(on_nan), net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.reg = regularization or Regularization()
        if self.reg.label_smoothing:
            raise ValueError(f"regularizer.label_smoothing applies to classifiers, not to {type(self).__name__}")
        self.val_best = math.inf
        self.train_log = TrainLog(per_step=self.logged_metrics, prog_bar=("train/loss",))  # train/: step and epoch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def step_metrics(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
        raise NotImplementedError

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        metrics, n = self.step_metrics(batch)
        terms = {"train/loss": metrics["loss"]}
        if self.reg.has_penalty:
            terms["train/reg_loss"] = self.reg.penalty(self.net)
        if not all_finite(self, self.on_nan, terms):
            return None  # Lightning skips backward and the optimizer step
        self.train_log.add({**{f"train/{k}": v for k, v in metrics.items()}, **terms}, n)
        return sum(terms.values())

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.reg.apply_max_norm(self.net)
        self.train_log.end_batch(self, batch_idx)

    def on_train_epoch_end(self) -> None:
        self.train_log.end_epoch(self)

    def _log_stage(self, stage: str, batch) -> None:
        metrics, n = self.step_metrics(batch)
        for name, value in metrics.items():
            self.log(f"{stage}/{name}", value, on_epoch=True, prog_bar=stage == "val", batch_size=n, sync_dist=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._log_stage("val", batch)

    def test_step(self, batch, batch_idx: int) -> None:
        self._log_stage("test", batch)

    def on_validation_epoch_end(self) -> None:
        value = self.trainer.callback_metrics.get(f"val/{self.best_metric}")
        best = self.val_best if value is None else min(self.val_best, float(value))
        if not self.trainer.sanity_checking:  # the sanity check's batches are not an epoch's result
            self.val_best = best
        if math.isfinite(best):
            self.log(f"val/{self.best_metric}_best", best, sync_dist=True)

    def configure_optimizers(self):
        return configure(self, self.optimizer_factory(params=self.parameters()), self.scheduler_factory)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[f"val_{self.best_metric}_best"] = self.val_best

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.val_best = checkpoint.get(f"val_{self.best_metric}_best", math.inf)
