"""Image classification as a LightningModule: one shared step for train, val and test."""
from __future__ import annotations

from typing import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from dlexp.losses.regularizers import Regularization
from dlexp.nets.prefix import CachedPrefix
from dlexp.tasks.guard import all_finite, check_on_nan
from dlexp.tasks.train_log import TrainLog

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., dict]


def training_batches(trainer: pl.Trainer) -> tuple[int, int]:
    """(batches per epoch, batches in the whole run) from the datamodule and the trainer's limits.

    Not trainer.estimated_stepping_batches: that iterates the train loader before a checkpoint's loader
    state is restored, so a resumed run would start its epoch from the wrong batch.
    """
    per_epoch = len(trainer.datamodule.train_dataloader())
    limit = trainer.limit_train_batches
    per_epoch = min(per_epoch, int(limit)) if isinstance(limit, int) else max(1, int(per_epoch * limit))
    total = per_epoch * max(1, trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1)
    if trainer.max_steps and trainer.max_steps > 0:
        total = min(total, trainer.max_steps)
    return per_epoch, total


def configure(module: pl.LightningModule, optimizer: torch.optim.Optimizer, scheduler: SchedulerFactory | None):
    """Lightning's optimizer config: the optimizer, with its schedule built for this run's length if any."""
    if scheduler is None:
        return optimizer
    per_epoch, total = training_batches(module.trainer)
    return {"optimizer": optimizer, "lr_scheduler": scheduler(optimizer, total, per_epoch)}


class ClassificationTask(pl.LightningModule):
    """Trains `net` with cross-entropy (+ regularization); logs stage/loss, stage/acc and val/acc_best.

    A net with one output (B, 1) is a binary classifier of labels 0/1: BCE with logits, predicted 1 when logit > 0.
    """

    predicts_classes = True  # a feature extractor for FID can be made of it (dlexp/engine/extractors.py)
    eval_report = "classification"  # dlexp eval: a test report with a confusion matrix (dlexp/engine/evaluation.py)
    # what `monitor` may name (checked before a run or a search starts: dlexp/config/checks.py)
    logged_metrics = ("train/loss", "train/acc", "train/reg_loss", "val/loss", "val/acc", "val/acc_best",
                      "test/loss", "test/acc")

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        regularization: Regularization | None = None,
        on_nan: str = "stop",
    ) -> None:
        super().__init__()
        self.on_nan = check_on_nan(on_nan)
        self.net = net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.reg = regularization or Regularization()
        self.val_acc_best = 0.0
        self.train_log = TrainLog(per_step=("train/loss", "train/reg_loss"), prog_bar=("train/loss",))
        # set by the Freeze callback when a frozen prefix's outputs are cached: steps run only the rest
        self.cached_prefix: CachedPrefix | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def model_step(self, batch: tuple[torch.Tensor, torch.Tensor], smoothing: float = 0.0):
        """Loss, number correct and batch size for one batch."""
        x, y = batch
        logits = (self.cached_prefix.suffix if self.cached_prefix else self.net)(x)  # (B, classes) or (B, 1)
        if logits.shape[1] == 1:  # one logit: binary, BCE with logits; smoothed targets y(1 - s) + s/2
            target = y.to(logits.dtype) * (1 - smoothing) + 0.5 * smoothing
            loss = F.binary_cross_entropy_with_logits(logits.squeeze(1), target)
            correct = ((logits.squeeze(1) > 0).long() == y).sum()
            return loss, correct, y.numel()
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        correct = (logits.argmax(dim=1) == y).sum()
        return loss, correct, y.numel()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, correct, n = self.model_step(batch, self.reg.label_smoothing)
        terms = {"train/loss": loss}
        if self.reg.has_penalty:
            terms["train/reg_loss"] = self.reg.penalty(self.net)
        if not all_finite(self, self.on_nan, terms):
            return None  # Lightning skips backward and the optimizer step
        self.train_log.add({**terms, "train/acc": correct / n}, n)
        return sum(terms.values())

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.reg.apply_max_norm(self.net)
        self.train_log.end_batch(self, batch_idx)

    def on_train_epoch_end(self) -> None:
        self.train_log.end_epoch(self)

    def validation_step(self, batch, batch_idx: int) -> None:
        loss, correct, n = self.model_step(batch)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        self.log("val/acc", correct / n, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        acc = self.trainer.callback_metrics.get("val/acc")
        if acc is not None and not self.trainer.sanity_checking:
            self.val_acc_best = max(self.val_acc_best, float(acc))
        self.log("val/acc_best", self.val_acc_best, sync_dist=True)

    def test_step(self, batch, batch_idx: int) -> None:
        loss, correct, n = self.model_step(batch)
        self.log("test/loss", loss, on_epoch=True, batch_size=n, sync_dist=True)
        self.log("test/acc", correct / n, on_epoch=True, batch_size=n, sync_dist=True)

    def configure_optimizers(self):
        # every parameter goes to the optimizer; frozen ones (requires_grad False) get no grad and no update
        return configure(self, self.optimizer_factory(params=self.parameters()), self.scheduler_factory)

    def check_batch(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Fail before training when the net's output does not fit the data."""
        logits = self.net(x)
        binary = logits.ndim == 2 and logits.shape[1] == 1 and 0 <= int(y.min()) and int(y.max()) <= 1
        if logits.ndim != 2 or logits.shape[0] != x.shape[0] or (logits.shape[1] <= int(y.max()) and not binary):
            raise ValueError(f"the model outputs {tuple(logits.shape)} for a batch of {x.shape[0]} with labels "
                             f"up to {int(y.max())}")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["val_acc_best"] = self.val_acc_best

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.val_acc_best = checkpoint.get("val_acc_best", 0.0)
