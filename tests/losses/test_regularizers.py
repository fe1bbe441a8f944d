"""dlexp/losses/regularizers.py: L1/L2 penalties, max-norm, dropout and label smoothing, alone and in tiny CPU runs."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from conftest import FAKE_MLP, run, snapshot
from dlexp.engine.build import build
from dlexp.errors import ConfigError
from dlexp.losses.regularizers import Regularization, penalized
from dlexp.nets.classifiers import MLP


def row_norms(w: torch.Tensor) -> torch.Tensor:
    """L2 norm of each output unit's incoming weights (dim 0 of Linear and Conv weights)."""
    return w.detach().flatten(1).norm(dim=1)


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    with torch.no_grad():  # make the tensors a penalty must skip large, so including them would show
        net[1].weight.fill_(3.0)
        net[1].bias.fill_(-2.0)
        net[0].bias.fill_(5.0)
        net[4].bias.fill_(-7.0)
    return net


@pytest.mark.parametrize("l1, l2", [(0.01, 0.0), (0.0, 0.02), (0.003, 0.05)])
def test_penalty_is_l1_abs_plus_l2_squares_over_weight_matrices_only(l1, l2):
    """penalty() = l1*sum|w| + l2*sum w^2 over conv kernels and linear matrices, not biases or BN scales."""
    net = small_net()
    conv_w, lin_w = net[0].weight, net[4].weight
    expected = l1 * (conv_w.abs().sum() + lin_w.abs().sum()) + l2 * (conv_w.pow(2).sum() + lin_w.pow(2).sum())
    got = Regularization(l1=l1, l2=l2).penalty(net)
    assert torch.allclose(got, expected, rtol=1e-6)
    assert [id(p) for p in penalized(net)] == [id(conv_w), id(lin_w)]
    got.backward()
    assert net[0].bias.grad is None and net[1].weight.grad is None and net[4].bias.grad is None
    assert torch.allclose(lin_w.grad, l1 * lin_w.sign() + 2 * l2 * lin_w.detach())


def test_l2_run_with_every_weight_frozen_trains_biases_only(make_cfg):
    """Bias-only fine-tuning (all weight matrices frozen) with regularizer=l2 trains, with a zero penalty."""
    parts = run(make_cfg, *FAKE_MLP, "regularizer=l2", "callbacks=freeze", "callbacks.freeze.patterns=[weight$]")
    assert float(parts.trainer.callback_metrics["train/reg_loss"]) == 0.0


def test_apply_max_norm_caps_every_units_incoming_weight_norm():
    """apply_max_norm rescales rows above max_norm down to it and leaves smaller rows alone."""
    net = small_net()
    with torch.no_grad():
        net[0].weight.mul_(10.0)
        net[4].weight.mul_(10.0)
        net[4].weight[2].mul_(1e-4)  # one unit already well inside the ball
    small_row = net[4].weight[2].clone()
    bn_scale = net[1].weight.clone()
    assert row_norms(net[4].weight).max() > 1.0 and row_norms(net[0].weight).max() > 1.0
    Regularization(max_norm=1.0).apply_max_norm(net)
    for w in (net[0].weight, net[4].weight):
        assert (row_norms(w) <= 1.0 + 1e-6).all()
        assert (row_norms(w) > 0.99).sum() >= w.shape[0] - 1  # clipped rows sit at the bound
    assert torch.equal(net[4].weight[2], small_row)
    assert torch.equal(net[1].weight, bn_scale)


def test_max_norm_run_keeps_trained_weights_within_bound(make_cfg):
    """A run with regularizer=max_norm ends with every unit's incoming weight norm <= max_norm."""
    parts = run(make_cfg, *FAKE_MLP, "regularizer=max_norm", "regularizer.max_norm=0.5", "trainer.max_epochs=2")
    net = parts.task.net
    assert row_norms(net.layer1[0].weight).max() <= 0.5 + 1e-5  # He init gives ~1.4 per row here
    assert row_norms(net.out.weight).max() <= 0.5 + 1e-5
    assert row_norms(net.layer1[0].weight).min() > 0.45  # the constraint was active, not trivially met


@pytest.mark.parametrize("kwargs", [{"l2": -1e-4}, {"l1": -0.1}, {"dropout": 1.0}, {"dropout": 1.5},
                                    {"dropout": -0.1}, {"label_smoothing": 1.0}, {"max_norm": 0.0}])
def test_invalid_regularization_raises(kwargs):
    """Negative penalties, dropout or smoothing >= 1 and a non-positive max_norm are refused."""
    with pytest.raises(ValueError):
        Regularization(**kwargs)


def test_invalid_regularizer_override_fails_build(make_cfg):
    """regularizer.l2=-1 stops build() with a one-line error naming the regularizer."""
    with pytest.raises(ConfigError, match=r"regularizer.*l2 must be >= 0"):
        build(make_cfg(*FAKE_MLP, "regularizer.l2=-1"), model_name="mlp")


def test_l2_run_logs_reg_loss_and_shrinks_weights(make_cfg):
    """regularizer=l2 logs train/reg_loss and ends with smaller weights than the same seed without it."""
    common = [*FAKE_MLP, "optimizer=sgd", "optimizer.lr=0.1", "trainer.max_epochs=2", "seed=3"]
    plain = run(make_cfg, *common)
    reg = run(make_cfg, *common, "regularizer=l2", "regularizer.l2=0.05")
    metrics = reg.trainer.callback_metrics
    assert "train/reg_loss" in metrics and "train/reg_loss" not in plain.trainer.callback_metrics
    squares = sum(w.detach().pow(2).sum() for w in penalized(reg.task.net))
    # the last step's penalty was taken just before the last update: close to the final weights' penalty
    assert float(metrics["train/reg_loss_step"]) == pytest.approx(0.05 * float(squares), rel=0.05)
    for name in ("layer1.0.weight", "out.weight"):
        reg_norm = reg.task.net.get_parameter(name).norm()
        plain_norm = plain.task.net.get_parameter(name).norm()
        assert reg_norm < 0.98 * plain_norm, name


class FirstBatch(pl.Callback):
    """Keeps the first training batch (after the datamodule's transform) and the net's weights before step 0."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0 and trainer.current_epoch == 0:
            self.batch = batch
            self.weights = snapshot(pl_module.net)


def test_label_smoothing_changes_the_training_loss(make_cfg):
    """With label_smoothing the step-0 loss is cross-entropy against smoothed targets, not the plain one."""
    common = [*FAKE_MLP, "trainer.limit_train_batches=1"]
    losses = {}
    for smoothing in (0.0, 0.2):
        probe = FirstBatch()
        parts = run(make_cfg, *common, f"regularizer.label_smoothing={smoothing}", extra=(probe,))
        x, y = probe.batch
        net = MLP(1, 28, 10, hidden=[16], activation="elu")  # conf/model/mlp.yaml
        net.load_state_dict(probe.weights)
        expected = F.cross_entropy(net(x), y, label_smoothing=smoothing)
        losses[smoothing] = float(parts.trainer.callback_metrics["train/loss_step"])
        assert losses[smoothing] == pytest.approx(float(expected), rel=1e-5)
    assert abs(losses[0.2] - losses[0.0]) > 1e-3
