"""Training behaviour on tiny CPU runs: regularization, lr schedules, freeze / early stopping / clipping
callbacks, transfer learning, seeding and val/acc_best."""
from __future__ import annotations

import shutil

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from dlexp.callbacks.training import EarlyStopping, Freeze, GradientClipping
from dlexp.errors import ConfigError
from dlexp.losses.regularizers import Regularization, penalized
from dlexp.nets.classifiers import MLP
from dlexp.optim import CosineDecay, ExponentialDecay, Multiplier, StepDecay
from dlexp.engine.build import Run, build
from dlexp.engine.transfer import load_matching

# fake data (461 train / 51 val images of 1x28x28), 3 train and 2 val batches per epoch (trainer=debug)
FAKE_MLP = ["dataset=fake", "model=mlp", "model.hidden=[16]"]
SMALL_CONVNET = ["dataset=fake", "model=convnet", "model.channels=[4,8]"]


def run(make_cfg, *overrides: str, extra: tuple[pl.Callback, ...] = (), before_fit=None) -> Run:
    """build() a composed config, append `extra` callbacks after the configured ones, fit; returns build's parts."""
    parts = build(make_cfg(*overrides), model_name="test")
    parts.trainer.callbacks.extend(extra)
    if before_fit is not None:
        before_fit(parts)
    parts.trainer.fit(parts.task, datamodule=parts.datamodule)
    return parts


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def callback_of(trainer: pl.Trainer, kind: type) -> pl.Callback:
    return next(c for c in trainer.callbacks if isinstance(c, kind))


def row_norms(w: torch.Tensor) -> torch.Tensor:
    """L2 norm of each output unit's incoming weights (dim 0 of Linear and Conv weights)."""
    return w.detach().flatten(1).norm(dim=1)


# ---------------------------------------------------------------- regularization


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


# ---------------------------------------------------------------- schedules (dlexp/optim.py)


def lrs_over(multiplier: Multiplier, steps: int, lr: float = 0.1) -> list[float]:
    """The lr a real optimizer sees at steps 0..steps-1 under LambdaLR(multiplier)."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    sched = LambdaLR(opt, multiplier)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_exponential_decay_matches_the_notes_formula():
    """lr at step s is lr * decay_rate ** (s / decay_steps)."""
    lrs = lrs_over(ExponentialDecay(decay_rate=0.5, decay_steps=10), 101)
    for s in (0, 1, 5, 10, 25, 100):
        assert lrs[s] == pytest.approx(0.1 * 0.5 ** (s / 10), rel=1e-9)


def test_exponential_schedule_in_a_run(make_cfg):
    """scheduler=exponential steps every batch: after 6 steps lr = lr0 * rate ** (6 / decay_steps)."""
    parts = run(make_cfg, *FAKE_MLP, "scheduler=exponential", "scheduler.decay_rate=0.5", "scheduler.decay_steps=3",
                "trainer.max_epochs=2")
    assert parts.trainer.global_step == 6
    assert parts.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5 ** 2, rel=1e-9)


def test_warmup_ramps_linearly_then_hands_over_to_decay():
    """A 4-step warmup gives factors 1/4, 2/4, 3/4, 1, then the decay alone."""
    assert [Multiplier(warmup_steps=4)(s) for s in range(7)] == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1, 1])
    decay = ExponentialDecay(warmup_steps=4, decay_rate=0.5, decay_steps=10)
    for s in range(12):
        assert decay(s) == pytest.approx(min(1, (s + 1) / 4) * 0.5 ** (s / 10))
    ramp = lrs_over(Multiplier(warmup_steps=5), 5)
    steps = [b - a for a, b in zip(ramp, ramp[1:])]
    assert steps == pytest.approx([steps[0]] * 4) and ramp[-1] == pytest.approx(0.1)


def test_step_decay_drops_by_gamma_every_step_size_epochs():
    """With 3 batches an epoch and step_size=2 the factor halves every 6 steps."""
    decay = StepDecay(gamma=0.5, step_size=2, steps_per_epoch=3)
    assert [decay(s) for s in range(18)] == [1.0] * 6 + [0.5] * 6 + [0.25] * 6


class EpochLR(pl.Callback):
    def __init__(self):
        self.lrs = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_step_schedule_in_a_run_counts_epochs_from_batches(make_cfg):
    """scheduler=step with step_size=1 halves the lr at each epoch boundary of a real run."""
    probe = EpochLR()
    run(make_cfg, *FAKE_MLP, "scheduler=step", "scheduler.step_size=1", "scheduler.gamma=0.5",
        "trainer.max_epochs=3", extra=(probe,))
    assert probe.lrs == pytest.approx([1e-3, 5e-4, 2.5e-4], rel=1e-9)


def test_cosine_decay_goes_from_one_to_min_factor():
    """Cosine factor: 1 at step 0, the midpoint halfway, min_factor at and after total_steps, never rising."""
    decay = CosineDecay(total_steps=20, min_factor=0.1)
    factors = [decay(s) for s in range(31)]
    assert factors[0] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(0.55)
    assert factors[20] == pytest.approx(0.1) and factors[30] == pytest.approx(0.1)
    assert all(b <= a + 1e-12 for a, b in zip(factors, factors[1:]))


@pytest.mark.parametrize("multiplier, blank", [
    (ExponentialDecay(warmup_steps=3, decay_rate=0.3, decay_steps=7), ExponentialDecay()),
    (StepDecay(warmup_steps=2, gamma=0.2, step_size=3, steps_per_epoch=5), StepDecay()),
    (CosineDecay(warmup_steps=1, total_steps=40, min_factor=0.05), CosineDecay()),
])
def test_lambda_lr_state_round_trips_through_weights_only_load(tmp_path, multiplier, blank):
    """A LambdaLR over a schedule saves plain numbers: torch.load(weights_only=True) restores it exactly."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = LambdaLR(opt, multiplier)
    for _ in range(5):
        opt.step()
        sched.step()
    torch.save(sched.state_dict(), tmp_path / "sched.pt")
    state = torch.load(tmp_path / "sched.pt", weights_only=True)

    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    restored = LambdaLR(opt2, blank)
    restored.load_state_dict(state)
    assert blank == multiplier
    assert restored.last_epoch == 5
    assert restored.get_last_lr() == pytest.approx(sched.get_last_lr())
    for s in range(5, 30):
        assert blank(s) == multiplier(s)


def test_run_checkpoint_with_schedule_loads_weights_only(make_cfg, tmp_path):
    """A run's last.ckpt (with scheduler=cosine) loads with weights_only=True and holds the schedule's numbers."""
    run(make_cfg, *FAKE_MLP, "scheduler=cosine", "scheduler.min_factor=0.2", "callbacks=checkpoint",
        "trainer.max_epochs=2")
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    sched = ckpt["lr_schedulers"][0]
    assert sched["last_epoch"] == ckpt["global_step"] > 0
    assert sched["lr_lambdas"][0] == {"warmup_steps": 0, "total_steps": 6, "min_factor": 0.2}


def test_last_checkpoint_holds_the_final_epoch(make_cfg, tmp_path):
    """checkpoints/last.ckpt is the state after the final epoch, even when that epoch did not improve the monitor."""
    run(make_cfg, *FAKE_MLP, "optimizer.lr=0", "callbacks=checkpoint", "trainer.max_epochs=2")  # val/acc stays put
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (ckpt["epoch"], ckpt["global_step"]) == (1, 6)


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


# ---------------------------------------------------------------- transfer learning


@pytest.fixture
def source_run(make_cfg, tmp_path):
    """A trained MLP hidden [32] on fake data with checkpoints/best.ckpt and last.ckpt; returns (run_dir, net)."""
    parts = run(make_cfg, "dataset=fake", "model=mlp", "model.hidden=[32]", "callbacks=checkpoint")
    run_dir = tmp_path / "run"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    return run_dir, parts.task.net


def target_net(hidden: list[int]) -> MLP:
    torch.manual_seed(123)
    return MLP(1, 28, 10, hidden=hidden, activation="elu")


def test_load_matching_copies_included_layers_from_a_lightning_checkpoint(source_run):
    """include ['layer1\\.']: layer1 comes from the source checkpoint; the rest of the deeper net is untouched."""
    run_dir, source = source_run
    net = target_net([32, 16])
    before = snapshot(net)
    report = load_matching(net, run_dir / "checkpoints" / "last.ckpt", include=["layer1\\."])
    assert report.loaded == ["layer1.0.weight", "layer1.0.bias"]
    assert report.skipped == ["out.weight", "out.bias"]
    assert report.mismatched == []
    src = source.state_dict()
    for k in report.loaded:
        assert torch.equal(net.state_dict()[k], src[k]), k
    for k in ("layer2.0.weight", "layer2.0.bias", "out.weight", "out.bias"):
        assert torch.equal(net.state_dict()[k], before[k]), k


def test_load_matching_plain_state_dict_reports_shape_mismatch(source_run, tmp_path):
    """From a plain state_dict into hidden [64]: same-shape tensors load, the others are reported, not loaded."""
    _, source = source_run
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    net = target_net([64])
    before = snapshot(net)
    report = load_matching(net, tmp_path / "plain.pt")
    assert report.loaded == ["out.bias"]
    assert report.skipped == []
    assert report.mismatched == ["layer1.0.weight (32, 784)->(64, 784)", "layer1.0.bias (32,)->(64,)",
                                 "out.weight (10, 32)->(10, 64)"]
    assert torch.equal(net.out.bias, source.out.bias)
    for k in ("layer1.0.weight", "layer1.0.bias", "out.weight"):
        assert torch.equal(net.state_dict()[k], before[k]), k


def test_load_matching_exclude_and_absent_names_are_skipped(source_run):
    """exclude wins over include, and names the new net lacks are skipped."""
    run_dir, source = source_run
    net = target_net([32, 16])
    report = load_matching(net, run_dir / "checkpoints" / "last.ckpt", include=[".*"], exclude=["bias$"])
    assert report.loaded == ["layer1.0.weight"]
    assert report.skipped == ["layer1.0.bias", "out.bias"]
    assert report.mismatched == ["out.weight (10, 32)->(10, 16)"]
    assert torch.equal(net.layer1[0].weight, source.layer1[0].weight)


def test_run_directory_is_accepted_as_source(source_run, tmp_path, make_cfg):
    """A run directory holding only checkpoints/last.ckpt works as source, also through model.init_from."""
    run_dir, source = source_run
    other = tmp_path / "other_run"
    (other / "checkpoints").mkdir(parents=True)
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", other / "checkpoints" / "last.ckpt")
    net = target_net([32, 16])
    report = load_matching(net, other, include=["layer1\\."])
    assert report.loaded == ["layer1.0.weight", "layer1.0.bias"]
    assert torch.equal(net.layer1[0].weight, source.layer1[0].weight)

    parts = build(make_cfg("dataset=fake", "model=mlp", "model.hidden=[32,16]", f"model.init_from={other}",
                           "model.init_include=['^layer1\\.']"), model_name="mlp")
    built = parts.task.net
    assert torch.equal(built.layer1[0].weight, source.layer1[0].weight)
    assert torch.equal(built.layer1[0].bias, source.layer1[0].bias)
    assert not torch.equal(built.out.bias, source.out.bias)


def test_load_matching_with_nothing_matching_raises(source_run):
    """No tensor selected (or every selected one mismatched) is a ValueError, and the net is left as it was."""
    run_dir, _ = source_run
    net = target_net([32, 16])
    before = snapshot(net)
    with pytest.raises(ValueError, match="no tensor matched"):
        load_matching(net, run_dir, include=["encoder\\."])
    with pytest.raises(ValueError, match="no tensor matched"):
        load_matching(target_net([64]), run_dir, include=["layer1\\."])
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


# ---------------------------------------------------------------- seeding and the classification task


def test_same_seed_gives_identical_weights_and_another_seed_differs(make_cfg):
    """Two build()+fit runs with seed 7 end bit-identical on CPU; seed 8 ends elsewhere."""
    common = [*FAKE_MLP, "trainer.max_epochs=2"]
    a, b, c = (snapshot(run(make_cfg, *common, f"seed={s}").task.net) for s in (7, 7, 8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layer1.0.weight"], c["layer1.0.weight"])


def test_val_acc_best_is_the_running_max_of_val_acc(make_cfg):
    """val/acc_best after every epoch is the max of val/acc so far, also after val/acc drops."""
    seen = []

    class Record(pl.Callback):
        def on_validation_end(self, trainer, pl_module):
            m = trainer.callback_metrics
            seen.append((float(m["val/acc"]), float(m["val/acc_best"])))

    parts = run(make_cfg, "dataset=digits", "model=mlp", "model.hidden=[16]", "optimizer=sgd", "optimizer.lr=0.5",
                "trainer.max_epochs=6", extra=(Record(),))
    accs = [a for a, _ in seen]
    assert len(seen) == 6
    assert any(b < a for a, b in zip(accs, accs[1:])), "val/acc never dropped: the test would not tell max from last"
    for i, (_, best) in enumerate(seen):
        assert best == pytest.approx(max(accs[: i + 1]))
    assert float(parts.trainer.callback_metrics["val/acc_best"]) == pytest.approx(max(accs))
    assert parts.task.val_acc_best == pytest.approx(max(accs))
