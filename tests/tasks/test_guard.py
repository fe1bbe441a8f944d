"""Non-finite losses in-process: on_nan=stop raises before any update, on_nan=skip skips the batch."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from dlexp.tasks.guard import NonFiniteLoss
from dlexp.engine.build import build


def poison(net: torch.nn.Module, calls: set[int]) -> list[int]:
    """Make the net's output NaN on the given (0-based) training forward calls; returns the call counter."""
    counter = [0]
    forward = net.forward

    def patched(x, *args):
        out = forward(x, *args)
        if net.training:
            if counter[0] in calls:
                out = out * float("nan")
            counter[0] += 1
        return out

    net.forward = patched
    return counter


def test_on_nan_stop_raises_before_the_update(make_cfg):
    """The first NaN loss raises NonFiniteLoss naming the step and term; the weights are those after step 1."""
    parts = build(make_cfg("model=mlp", "trainer.limit_train_batches=3"), "mlp")
    task, trainer = parts.task, parts.trainer
    poison(task.net, {1})
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at step 1 .*train/loss = nan"):
        trainer.fit(task, datamodule=parts.datamodule)
    assert trainer.global_step == 1
    assert all(torch.isfinite(p).all() for p in task.net.parameters())


class Changes(pl.Callback):
    """Whether each training batch changed the weights."""

    def __init__(self) -> None:
        self.changed: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before = [p.detach().clone() for p in pl_module.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.changed.append(any(not torch.equal(a, p) for a, p in zip(self.before, pl_module.parameters())))


def test_on_nan_skip_skips_only_that_batch(make_cfg):
    """on_nan=skip: the poisoned batch changes no weight, the others do, weights stay finite."""
    changes = Changes()
    parts = build(make_cfg("model=mlp", "trainer.limit_train_batches=3", "on_nan=skip"), "mlp",
                  extra_callbacks=[changes])
    task, trainer = parts.task, parts.trainer
    poison(task.net, {1})
    trainer.fit(task, datamodule=parts.datamodule)
    assert changes.changed == [True, False, True]
    assert all(torch.isfinite(p).all() for p in task.net.parameters())


def test_gan_nan_skips_the_poisoned_network_step(make_cfg):
    """A GAN with on_nan=skip: a NaN discriminator loss skips that D step only."""
    parts = build(make_cfg("model=dcgan", "trainer.limit_train_batches=3", "on_nan=skip",
                           "dataset.batch_size=16"), "dcgan")
    task, trainer = parts.task, parts.trainer
    poison(task.net.discriminator, {0, 1})  # both D calls of the first D step: real and fake scores
    trainer.fit(task, datamodule=parts.datamodule)
    assert trainer.global_step == 3 * 2 - 1  # 3 G steps + 2 of 3 D steps
    assert all(torch.isfinite(p).all() for p in task.net.parameters())


def test_bad_on_nan_value_is_refused(make_cfg):
    from dlexp.errors import ConfigError

    with pytest.raises(ConfigError, match="on_nan must be stop or skip"):
        build(make_cfg("on_nan=ignore"), "convnet")
