"""TrainLog gives the loggers, the progress bar and the callbacks what self.log(on_step=True, on_epoch=True) at every
training step gives: the same names at the same steps with the same values, epoch means weighted by batch size."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers.logger import Logger

from dlexp.tasks.train_log import TrainLog

SIZES = [4, 4, 4, 4, 4, 3, 5]  # uneven batches: the epoch means are weighted by batch size


class Recorder(Logger):
    """Every (step, name, value) Lightning hands to a logger."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, str, float]] = []

    name, version = "recorder", 0

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.rows += [(step, k, float(v)) for k, v in metrics.items() if k != "epoch"]

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


class Steps(pl.LightningModule):
    """Fake losses from a seeded generator, logged by Lightning's self.log (reference) or by TrainLog."""

    def __init__(self, use_train_log: bool) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.use_train_log, self.values = use_train_log, torch.Generator().manual_seed(0)
        self.train_log = TrainLog(per_step=("train/loss",), prog_bar=("train/loss",))

    def train_dataloader(self):
        return torch.utils.data.DataLoader([torch.zeros(n, 1) for n in SIZES], batch_size=None)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def training_step(self, batch, batch_idx: int):
        loss, acc = torch.rand(2, generator=self.values)
        if self.use_train_log:
            self.train_log.add({"train/loss": loss, "train/acc": acc}, len(batch))
        else:
            self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch))
            self.log("train/acc", acc, on_step=False, on_epoch=True, batch_size=len(batch))
        return (self.w * batch).sum()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.use_train_log:
            self.train_log.end_batch(self, batch_idx)

    def on_train_epoch_end(self) -> None:
        if self.use_train_log:
            self.train_log.end_epoch(self)


class SeenAtEpochEnd(pl.Callback):
    """What a callback (the progress line, a checkpoint) reads at each epoch's end."""

    def __init__(self) -> None:
        self.seen: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seen.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def fit(use_train_log: bool, **trainer_kwargs) -> tuple[Recorder, SeenAtEpochEnd, pl.Trainer]:
    recorder, seen = Recorder(), SeenAtEpochEnd()
    trainer = pl.Trainer(max_epochs=2, logger=recorder, callbacks=[seen], log_every_n_steps=3,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         **trainer_kwargs)
    trainer.fit(Steps(use_train_log))
    return recorder, seen, trainer


def test_loggers_get_the_same_names_steps_and_values_as_from_self_log():
    reference, reference_seen, _ = fit(use_train_log=False)
    logged, seen, _ = fit(use_train_log=True)
    assert [(step, name) for step, name, _ in logged.rows] == [(step, name) for step, name, _ in reference.rows]
    assert [value for *_, value in logged.rows] == pytest.approx([value for *_, value in reference.rows])
    names = {name for _, name, _ in logged.rows}
    assert names == {"train/loss_step", "train/loss_epoch", "train/acc"}
    for mine, theirs in zip(seen.seen, reference_seen.seen):  # a callback at epoch end sees the epoch's means
        assert mine.keys() >= {"train/loss", "train/loss_epoch", "train/acc"}
        assert mine["train/loss_epoch"] == pytest.approx(theirs["train/loss_epoch"])
        assert mine["train/loss"] == pytest.approx(theirs["train/loss_epoch"])
        assert mine["train/acc"] == pytest.approx(theirs["train/acc"])


def test_the_epoch_mean_is_weighted_by_batch_size():
    logged, _, _ = fit(use_train_log=True)
    values = torch.Generator().manual_seed(0)
    draws = [torch.rand(2, generator=values) for _ in SIZES]
    weighted = sum(float(d[1]) * n for d, n in zip(draws, SIZES)) / sum(SIZES)
    first_acc = next(value for _, name, value in logged.rows if name == "train/acc")
    assert first_acc == pytest.approx(weighted)


def test_an_epoch_cut_short_still_logs_its_means():
    """max_steps ends the run mid-epoch: the means come from on_train_epoch_end instead of the last batch."""
    logged, _, trainer = fit(use_train_log=True, max_steps=4)
    assert trainer.global_step == 4
    epoch_rows = [(step, name) for step, name, _ in logged.rows if name in ("train/acc", "train/loss_epoch")]
    assert sorted(epoch_rows) == [(3, "train/acc"), (3, "train/loss_epoch")]
