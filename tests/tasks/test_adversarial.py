"""dlexp/tasks/adversarial.py in real training: n_critic, clipping, EMA, TTUR, smoothing, cGAN samples, refusals."""
from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from torch import nn

from dlexp.engine.build import Run, build
from dlexp.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec")


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def metric(trainer: pl.Trainer, key: str) -> float:
    assert key in trainer.callback_metrics, f"{key} not logged: {sorted(trainer.callback_metrics)}"
    value = float(trainer.callback_metrics[key])
    assert math.isfinite(value), f"{key} = {value}"
    return value


# small DCGAN nets on the digits (1x28x28), 16 a batch
SMALL_DCGAN = ["model.generator.width=8", "model.discriminator.width=8", "model.generator.latent_dim=16",
               "dataset.batch_size=16"]


def gan_fit(make_cfg, *overrides: str, model: str = "dcgan", extra: tuple[pl.Callback, ...] = (),
            before_fit=None) -> Run:
    cfg = make_cfg(f"model={model}", *(SMALL_DCGAN if model != "cgan" else ["dataset.batch_size=16"]), *overrides)
    parts = build(cfg, model)
    parts.cfg = cfg
    parts.trainer.callbacks.extend(extra)
    if before_fit is not None:
        before_fit(parts)
    parts.trainer.fit(parts.task, datamodule=parts.datamodule)
    return parts


class OptimizerSteps(pl.Callback):
    """(batch index, 'G' or 'D') for every optimizer step, in order (G's optimizer is the first)."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, str]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        g_params = {id(p) for p in pl_module.net.generator.parameters()}
        which = "G" if id(optimizer.param_groups[0]["params"][0]) in g_params else "D"
        assert (optimizer is trainer.optimizers[0]) == (which == "G")
        self.steps.append((trainer.fit_loop.epoch_loop.batch_idx, which))


@pytest.mark.parametrize("n_critic, batches", [(5, 12), (1, 4), (3, 3)])
def test_n_critic_steps_d_every_batch_and_g_every_nth(make_cfg, n_critic, batches):
    """With n_critic=k over N batches D's optimizer steps N times and G's floor(N/k) times, after D's step of
    every k-th batch."""
    steps = OptimizerSteps()
    gan_fit(make_cfg, f"task.n_critic={n_critic}", f"trainer.limit_train_batches={batches}", extra=(steps,))
    d_batches = [b for b, which in steps.steps if which == "D"]
    g_batches = [b for b, which in steps.steps if which == "G"]
    assert d_batches == list(range(batches))
    assert len(g_batches) == batches // n_critic
    assert g_batches == [b for b in range(batches) if (b + 1) % n_critic == 0]
    for b in g_batches:  # D first, then G, within a batch
        assert steps.steps.index((b, "D")) < steps.steps.index((b, "G"))


def test_wgan_clips_every_critic_weight(make_cfg):
    """model=wgan: after training every D parameter lies in [-0.01, 0.01] and clipping was active (N(0, 0.02)
    init and BN scales near 1 reach the bound); G is not clipped."""
    parts = gan_fit(make_cfg, "trainer.limit_train_batches=10", model="wgan")
    task = parts.task
    assert task.loss.clip_value == 0.01 and task.n_critic == 5
    d_max = max(float(p.abs().max()) for p in task.net.discriminator.parameters())
    assert d_max <= 0.01
    assert d_max == pytest.approx(0.01)
    assert max(float(p.abs().max()) for p in task.net.generator.parameters()) > 0.5
    metric(parts.trainer, "train/g_loss")
    assert metric(parts.trainer, "train/wasserstein") == pytest.approx(-metric(parts.trainer, "train/d_loss"))


def test_ema_generator_is_the_lerp_after_one_step(make_cfg):
    """task.ema_decay=0.9, one G step: EMA = 0.9 * G_before + 0.1 * G_after for every parameter, so it differs
    from G; its buffers (BN statistics) are G's; it trains through no optimizer; sample_images draws from it."""
    before = {}
    parts = gan_fit(make_cfg, "task.ema_decay=0.9", "trainer.limit_train_batches=1",
                    before_fit=lambda p: before.update(snapshot(p.task.net.generator)))
    task, trainer = parts.task, parts.trainer
    G, ema = task.net.generator, task.generator_ema
    after = snapshot(G)
    moved = 0
    for name, p in ema.named_parameters():
        torch.testing.assert_close(p.detach(), 0.9 * before[name] + 0.1 * after[name], rtol=1e-5, atol=1e-7)
        moved += not torch.equal(before[name], after[name])
        assert not p.requires_grad
    assert moved and any(not torch.equal(p, after[n]) for n, p in ema.named_parameters())
    for (name, b), (_, g) in zip(ema.named_buffers(), G.named_buffers()):
        assert torch.equal(b, g), name
    optimized = {id(p) for opt in trainer.optimizers for group in opt.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in ema.parameters()}
    task.eval()
    torch.testing.assert_close(task.sample_images()[""], ema.eval()(task.fixed_noise))
    assert not torch.allclose(task.sample_images()[""], G.eval()(task.fixed_noise))


def test_without_ema_samples_come_from_g(make_cfg):
    """No ema_decay: no EMA copy, and the sample grid is G's image of the fixed noise."""
    parts = gan_fit(make_cfg, "trainer.limit_train_batches=1")
    task = parts.task
    assert task.generator_ema is None
    task.eval()
    torch.testing.assert_close(task.sample_images()[""], task.net.generator(task.fixed_noise))


@pytest.mark.parametrize("lrs, expected", [(["task.g_lr=0.0001", "task.d_lr=0.0004"], (1e-4, 4e-4)), ([], None)],
                         ids=["ttur", "default"])
def test_ttur_learning_rates_reach_each_optimizer(make_cfg, lrs, expected):
    """task.g_lr / task.d_lr set the lr of G's and D's optimizers (null: optimizer.lr for both); each optimizer
    holds exactly its own net's parameters and keeps the optimizer file's other settings."""
    parts = gan_fit(make_cfg, *lrs, "trainer.limit_train_batches=1")
    cfg, task, trainer = parts.cfg, parts.task, parts.trainer
    expected = expected or (cfg.optimizer.lr, cfg.optimizer.lr)
    opt_g, opt_d = trainer.optimizers
    for opt, net, lr in ((opt_g, task.net.generator, expected[0]), (opt_d, task.net.discriminator, expected[1])):
        assert type(opt).__name__ == cfg.optimizer._target_.rsplit(".", 1)[1]
        (group,) = opt.param_groups
        assert group["lr"] == pytest.approx(lr)
        assert group["betas"] == tuple(cfg.optimizer.betas)
        assert [id(p) for p in group["params"]] == [id(p) for p in net.parameters()]


class LearningRates(pl.Callback):
    """The lr each network's optimizer uses at each of its steps."""

    def __init__(self) -> None:
        self.lrs: dict[str, list[float]] = {"G": [], "D": []}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.lrs["G" if optimizer is trainer.optimizers[0] else "D"].append(optimizer.param_groups[0]["lr"])


def test_each_networks_schedule_follows_its_own_steps(make_cfg):
    """scheduler=cosine with n_critic=2 over 8 batches: D's lr follows the cosine over its 8 steps, G's over its
    own 4 (G's schedule is not advanced on batches where G does not step)."""
    probe = LearningRates()
    parts = gan_fit(make_cfg, "scheduler=cosine", "task.n_critic=2", "trainer.limit_train_batches=8", extra=(probe,))
    lr = parts.cfg.optimizer.lr

    def cosine(step: int, total: int) -> float:
        return lr * 0.5 * (1 + math.cos(math.pi * step / total))

    assert probe.lrs["D"] == pytest.approx([cosine(s, 8) for s in range(8)], rel=1e-6)
    assert probe.lrs["G"] == pytest.approx([cosine(s, 4) for s in range(4)], rel=1e-6)


def test_plateau_schedule_is_refused_for_gans_before_training(make_cfg):
    """scheduler=plateau (an epoch schedule on a metric) cannot drive the per-batch GAN steps: build refuses it."""
    cfg = make_cfg("model=dcgan", "scheduler=plateau")
    with pytest.raises(ConfigError, match="plateau"):
        build(cfg, "dcgan")


class FirstScores(pl.Callback):
    """D's output on the real batch (its first call) of the last training batch."""

    def __init__(self) -> None:
        self.real: torch.Tensor | None = None
        self.hook = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        calls = []

        def record(module, args, output):
            if not calls:
                calls.append(output.detach().clone())
                self.real = calls[0]

        if self.hook is not None:
            self.hook.remove()
        self.hook = pl_module.net.discriminator.register_forward_hook(record)


REPORTS = {  # how train/d_real reports D's scores, as the task's docstring and the README say
    "minimax": "probability", "non_saturating": "probability",
    "least_squares": "score", "hinge": "score", "wasserstein": "score", "wasserstein_gp": "score",
}


@pytest.mark.parametrize("gan_loss", list(REPORTS))
def test_d_real_is_a_probability_for_bce_losses_and_the_mean_score_otherwise(make_cfg, gan_loss):
    """train/d_real is D's mean probability sigmoid(D(x)) for the BCE losses, the mean raw score otherwise
    (least squares regresses D(x) to 1, hinge and Wasserstein critics output scores)."""
    probe = FirstScores()
    parts = gan_fit(make_cfg, f"gan_loss={gan_loss}", "trainer.limit_train_batches=1", extra=(probe,))
    reported = metric(parts.trainer, "train/d_real_step")
    raw = probe.real
    expected = torch.sigmoid(raw).mean() if REPORTS[gan_loss] == "probability" else raw.mean()
    assert reported == pytest.approx(float(expected), rel=1e-5, abs=1e-7)


def test_label_smoothing_reaches_the_d_loss(make_cfg):
    """task.label_smoothing=0.1 with a BCE loss: every D step uses real label 0.9."""
    seen = []

    def spy(parts):
        d_loss = parts.task.loss.d_loss

        def recording(real, fake, real_label=1.0):
            seen.append(real_label)
            return d_loss(real, fake, real_label)

        parts.task.loss.d_loss = recording

    gan_fit(make_cfg, "task.label_smoothing=0.1", "trainer.limit_train_batches=2", before_fit=spy)
    assert seen == [pytest.approx(0.9)] * 2


class InputsToD(pl.Callback):
    """The transformed batch of every training step, and what D scored first in it (the real batch)."""

    def __init__(self) -> None:
        self.batches: list[torch.Tensor] = []
        self.first_scored: list[torch.Tensor] = []
        self.hook = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append(batch[0].clone())
        seen = []

        def record(module, args):
            if not seen:
                seen.append(args[0].detach().clone())

        if self.hook is not None:
            self.hook.remove()
        self.hook = pl_module.net.discriminator.register_forward_pre_hook(record)
        self.first_scored.append(seen)


def test_instance_noise_is_annealed_linearly_over_the_run(make_cfg):
    """task.instance_noise=0.5 over 4 batches of one epoch: D sees the real batch plus N(0, s^2) with s = 0.5,
    0.375, 0.25, 0.125 (linear decay from the start of the run)."""
    probe = InputsToD()
    gan_fit(make_cfg, "task.instance_noise=0.5", "trainer.limit_train_batches=4", extra=(probe,))
    assert len(probe.batches) == 4
    for i, (x, (scored,)) in enumerate(zip(probe.batches, probe.first_scored)):
        noise = scored - x
        assert float(noise.std()) == pytest.approx(0.5 * (1 - i / 4), rel=0.05), i
        assert abs(float(noise.mean())) < 0.05


@pytest.mark.parametrize("gan_loss", ["wasserstein", "wasserstein_gp", "hinge"])
def test_label_smoothing_needs_a_bce_or_least_squares_loss(make_cfg, gan_loss):
    """Smoothing a real label the loss does not have is refused when building."""
    cfg = make_cfg("model=dcgan", f"gan_loss={gan_loss}", "task.label_smoothing=0.1")
    with pytest.raises(ConfigError, match="label_smoothing needs a BCE or least-squares gan_loss"):
        build(cfg, "dcgan")


@pytest.mark.parametrize("override, match", [("task.ema_decay=1.0", "ema_decay"),
                                             ("task.label_smoothing=0.5", "label_smoothing"),
                                             ("regularizer=l2", "regularizer")])
def test_bad_adversarial_settings_are_refused(make_cfg, override, match):
    cfg = make_cfg("model=dcgan", override)
    with pytest.raises(ConfigError, match=match):
        build(cfg, "dcgan")


def test_cgan_samples_are_class_by_class(make_cfg):
    """model=cgan: the fixed labels cycle through the classes (100 samples, nrow 10: one class per column),
    the generator gets them for the grid, and they matter (other labels, other images)."""
    parts = gan_fit(make_cfg, "trainer.limit_train_batches=1", model="cgan")
    cfg, task = parts.cfg, parts.task
    assert task.net.num_classes == 10 and cfg.callbacks.samples.nrow == 10
    assert torch.equal(task.fixed_labels, torch.arange(100) % 10)
    calls = []
    hook = task.net.generator.register_forward_pre_hook(lambda m, args: calls.append(args))
    task.eval()
    images = task.sample_images()[""]
    hook.remove()
    (args,) = calls
    assert torch.equal(args[0], task.fixed_noise) and torch.equal(args[1], task.fixed_labels)
    G = task.net.generator
    torch.testing.assert_close(images, G(task.fixed_noise, task.fixed_labels))
    assert not torch.allclose(images, G(task.fixed_noise, (task.fixed_labels + 1) % 10))
    with Image.open(f"{cfg.run_dir}/samples/epoch_0001.png") as grid:  # 10 x 10 tiles of 28 px, padding 2
        assert grid.size == (10 * 30 + 2, 10 * 30 + 2)
