"""dlexp/callbacks/training.py: Freeze, EarlyStopping and GradientClipping in tiny CPU runs."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from conftest import FAKE_MLP, run, snapshot
from dlexp.callbacks.training import EarlyStopping, Freeze, GradientClipping

SMALL_CONVNET = ["dataset=fake", "model=convnet", "model.channels=[4,8]"]


def callback_of(trainer: pl.Trainer, kind: type) -> pl.Callback:
    return next(c for c in trainer.callbacks if isinstance(c, kind))


# ---------------------------------------------------------------- Freeze


class NormModes:
    """Records (epoch, module.training) every time `module` runs during a training step."""

    def __init__(self, trainer: pl.Trainer, module: nn.Module):
        self.seen: list[tuple[int, bool]] = []
        module.register_forward_pre_hook(self._hook)
        self.trainer = trainer

    def _hook(self, module, inputs):
        if self.trainer.training:
            self.seen.append((self.trainer.current_epoch, module.training))


def test_freeze_keeps_frozen_tensors_and_batch_norm_stats_fixed(make_cfg):
    """callbacks=freeze on layer1 of a convnet: layer1 (weights and BN stats) bit-identical, the rest trains."""
    state = {}

    def before(parts):
        state["init"] = snapshot(parts.task.net)
        state["modes"] = NormModes(parts.trainer, parts.task.net.features.layer1[1])

    parts = run(make_cfg, *SMALL_CONVNET, "callbacks=freeze", "callbacks.freeze.cache=false", "trainer.max_epochs=2", before_fit=before)
    freeze = callback_of(parts.trainer, Freeze)
    assert freeze.frozen_names == [f"net.features.layer1.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")]
    init, final = state["init"], snapshot(parts.task.net)
    layer1 = [k for k in init if k.startswith("features.layer1.")]
    assert "features.layer1.1.running_mean" in layer1 and "features.layer1.1.running_var" in layer1
    for k in layer1:
        assert torch.equal(final[k], init[k]), k
    for k in ("features.layer2.0.weight", "features.layer2.1.weight", "features.layer2.1.running_mean", "fc.weight"):
        assert not torch.equal(final[k], init[k]), k
    modes = state["modes"].seen
    assert len(modes) == 6 and not any(training for _, training in modes)  # 3 steps x 2 epochs, all in eval


def test_unfreeze_at_epoch_trains_frozen_layers_again(make_cfg):
    """unfreeze_at_epoch=1: layer1 is untouched through epoch 0 and has changed by the end of epoch 1."""
    after_epoch = []

    class Keep(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            after_epoch.append(snapshot(pl_module.net.layer1))

    state = {}
    run(make_cfg, "dataset=fake", "model=mlp", "model.hidden=[16,16]", "callbacks=freeze",
        "callbacks.freeze.unfreeze_at_epoch=1", "trainer.max_epochs=2", extra=(Keep(),),
        before_fit=lambda parts: state.update(init=snapshot(parts.task.net.layer1)))
    for k, v in state["init"].items():
        assert torch.equal(after_epoch[0][k], v), k
        assert not torch.equal(after_epoch[1][k], v), k


def test_unfrozen_batch_norm_trains_again(make_cfg):
    """After unfreeze_at_epoch=1 a formerly frozen BN layer runs in train mode and updates its running stats."""
    state = {}

    def before(parts):
        bn = parts.task.net.features.layer1[1]
        state.update(bn=bn, mean=bn.running_mean.clone(), modes=NormModes(parts.trainer, bn))

    run(make_cfg, *SMALL_CONVNET, "callbacks=freeze", "callbacks.freeze.unfreeze_at_epoch=1", "trainer.max_epochs=2",
        before_fit=before)
    modes = state["modes"].seen
    assert [t for e, t in modes if e == 0] == [False] * 3
    assert [t for e, t in modes if e == 1] == [True] * 3
    assert not torch.equal(state["bn"].running_mean, state["mean"])


def test_freeze_patterns_matching_nothing_raise(make_cfg):
    """A freeze pattern that names no parameter stops fit with a ValueError listing real names."""
    with pytest.raises(ValueError, match=r"match no parameter.*net\.layer1"):
        run(make_cfg, *FAKE_MLP, "callbacks=freeze", "callbacks.freeze.patterns=[encoder]")


# ---------------------------------------------------------------- EarlyStopping


@pytest.mark.parametrize("patience, stop_epoch", [(2, 3), (4, 5)])
@pytest.mark.parametrize("stall", ["lr0", "min_delta"])
def test_early_stopping_checks_every_n_epochs_and_stops(make_cfg, stall, patience, stop_epoch):
    """Checked every 2nd epoch with a metric that can't improve: the 1st check sets the best, patience/2 more stop."""
    if stall == "lr0":  # the weights never move, so val/loss repeats exactly
        how = ["optimizer.lr=0", "monitor=val/loss", "monitor_mode=min"]
    else:  # val/acc can never beat the best by 10
        how = ["monitor=val/acc", "monitor_mode=max", "callbacks.early_stopping.min_delta=10.0"]
    checks = []

    def spy(parts):
        es = callback_of(parts.trainer, EarlyStopping)
        original = es._run_early_stopping_check
        es._run_early_stopping_check = lambda trainer: (checks.append(trainer.current_epoch), original(trainer))

    parts = run(make_cfg, *FAKE_MLP, *how, "callbacks=early_stopping", f"callbacks.early_stopping.patience={patience}",
                "callbacks.early_stopping.check_every_n_epochs=2", "trainer.max_epochs=20", before_fit=spy)
    trainer = parts.trainer
    assert checks == list(range(1, stop_epoch + 1, 2))
    assert callback_of(trainer, EarlyStopping).stopped_epoch == stop_epoch
    assert trainer.current_epoch == stop_epoch + 1  # epochs 0..stop_epoch ran, far short of max_epochs=20
    assert trainer.should_stop


def test_early_stopping_refuses_zero_interval():
    """check_every_n_epochs must be at least 1."""
    with pytest.raises(ValueError, match="check_every_n_epochs"):
        EarlyStopping(monitor="val/loss", check_every_n_epochs=0)


# ---------------------------------------------------------------- GradientClipping


class GradProbe(pl.Callback):
    """Runs after the clipping callback: records the gradients the optimizer is about to use."""

    def __init__(self):
        self.norms, self.max_abs = [], []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        self.max_abs.append(max(float(g.abs().max()) for g in grads))


def test_grad_clip_by_norm_bounds_the_global_grad_norm(make_cfg):
    """algorithm=norm: every step's global gradient norm is <= threshold, and clipping was actually needed."""
    probe = GradProbe()
    parts = run(make_cfg, *FAKE_MLP, "callbacks=grad_clip", "callbacks.grad_clip.threshold=0.05",
                "trainer.max_epochs=2", extra=(probe,))
    assert len(probe.norms) == 6
    assert max(probe.norms) <= 0.05 + 1e-5
    assert float(parts.trainer.callback_metrics["train/grad_norm"]) > 0.05  # pre-clip norm, logged
    assert min(probe.norms) == pytest.approx(0.05, rel=1e-3)  # clipped to the threshold, not below


def test_grad_clip_by_value_bounds_every_element(make_cfg):
    """algorithm=value: every gradient element lies in [-t, t], and some sit at the bound."""
    probe = GradProbe()
    run(make_cfg, *FAKE_MLP, "callbacks=grad_clip", "callbacks.grad_clip.algorithm=value",
        "callbacks.grad_clip.threshold=0.001", "trainer.max_epochs=2", extra=(probe,))
    assert len(probe.max_abs) == 6
    assert max(probe.max_abs) <= 0.001 * (1 + 1e-6)  # float32(0.001) is a hair above the double
    assert min(probe.max_abs) == pytest.approx(0.001)


def test_grad_clip_rejects_bad_settings():
    """An unknown algorithm or a non-positive threshold is refused."""
    with pytest.raises(ValueError, match="norm' or 'value"):
        GradientClipping(algorithm="l1")
    with pytest.raises(ValueError, match="positive"):
        GradientClipping(threshold=0.0)
