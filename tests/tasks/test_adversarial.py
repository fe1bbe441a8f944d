"""GANs, autoencoders and VAEs: the gan_loss formulas by hand, the gradient penalty, the adversarial task's
training schedule (n_critic, clipping, EMA, TTUR, smoothing, conditional samples), config errors through the
CLI, the sample-image callback and the autoencoding task (denoising, KL, deterministic eval, PCA)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from torch import nn
from torchvision.utils import make_grid

from dlexp.data.datamodule import denormalize
from dlexp.errors import ConfigError
from dlexp.losses.gan import (GANLoss, Hinge, LeastSquares, Minimax, NonSaturating, Wasserstein, WassersteinGP,
                              gradient_penalty)
from dlexp.nets.autoencoders import MLPAutoEncoder, MLPVAE
from dlexp.tasks.autoencoding import AutoencodingTask
from dlexp.engine.build import Run, build

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec")


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def metric(trainer: pl.Trainer, key: str) -> float:
    assert key in trainer.callback_metrics, f"{key} not logged: {sorted(trainer.callback_metrics)}"
    value = float(trainer.callback_metrics[key])
    assert math.isfinite(value), f"{key} = {value}"
    return value


# ---------------------------------------------------------------- gan_loss formulas, by hand

REAL = [0.5, -1.0, 2.0]   # D's logits / critic values on a real batch
FAKE = [0.2, -0.3, -2.5]  # ... and on a generated one


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def bce(logit: float, target: float) -> float:
    return -(target * math.log(sigmoid(logit)) + (1 - target) * math.log(1 - sigmoid(logit)))


def scores(values: list[float], shape: str) -> torch.Tensor:
    t = torch.tensor(values)
    return t if shape == "(B,)" else t.unsqueeze(1)


@pytest.mark.parametrize("shape", ["(B,)", "(B,1)"])
@pytest.mark.parametrize("real_label", [1.0, 0.9])
def test_bce_losses_by_hand(shape, real_label):
    """Minimax and NonSaturating D loss: BCE of real logits against real_label (0.9: one-sided smoothing, fakes
    stay 0) plus BCE of fake logits against 0; G: E[log(1 - D(G(z)))] for minimax, -E[log D(G(z))] otherwise."""
    real, fake = scores(REAL, shape), scores(FAKE, shape)
    d_expected = mean(bce(r, real_label) for r in REAL) + mean(-math.log(1 - sigmoid(f)) for f in FAKE)
    for loss in (Minimax(), NonSaturating()):
        assert loss.uses_real_label and not loss.wasserstein and loss.clip_value is None and loss.gp_weight == 0
        assert float(loss.d_loss(real, fake, real_label)) == pytest.approx(d_expected, rel=1e-6)
    assert float(Minimax().g_loss(fake)) == pytest.approx(mean(math.log(1 - sigmoid(f)) for f in FAKE), rel=1e-6)
    assert float(NonSaturating().g_loss(fake)) == pytest.approx(mean(-math.log(sigmoid(f)) for f in FAKE), rel=1e-6)


def test_real_label_defaults_to_one():
    """Without smoothing the real label is 1 for every loss that takes one."""
    real, fake = torch.tensor(REAL), torch.tensor(FAKE)
    for loss in (Minimax(), NonSaturating(), LeastSquares()):
        assert float(loss.d_loss(real, fake)) == pytest.approx(float(loss.d_loss(real, fake, 1.0)))
        assert float(loss.d_loss(real, fake)) != pytest.approx(float(loss.d_loss(real, fake, 0.9)))


def test_minimax_saturates_and_non_saturating_does_not():
    """When D confidently rejects a fake (logit -8), the minimax G gradient is sigmoid(-8) ~ 3e-4 while the
    non-saturating one is 1 - sigmoid(-8) ~ 1 (in magnitude): the reason for the -log D trick."""
    grads = {}
    for loss in (Minimax(), NonSaturating()):
        logit = torch.tensor([-8.0], requires_grad=True)
        loss.g_loss(logit).backward()
        grads[type(loss).__name__] = float(logit.grad)
    assert grads["Minimax"] == pytest.approx(-sigmoid(-8.0), rel=1e-5)
    assert grads["NonSaturating"] == pytest.approx(-(1 - sigmoid(-8.0)), rel=1e-5)


@pytest.mark.parametrize("shape", ["(B,)", "(B,1)"])
def test_wasserstein_losses_by_hand(shape):
    """WGAN critic loss E[D(G(z))] - E[D(x)], G loss -E[D(G(z))]; clipping 0.01 by default and no penalty;
    WGAN-GP: the same losses, no clipping, gp_weight 10."""
    real, fake = scores(REAL, shape), scores(FAKE, shape)
    wgan, gp = Wasserstein(), WassersteinGP()
    for loss in (wgan, gp):
        assert loss.wasserstein and not loss.uses_real_label
        assert float(loss.d_loss(real, fake)) == pytest.approx(mean(FAKE) - mean(REAL), rel=1e-6)
        assert float(loss.g_loss(fake)) == pytest.approx(-mean(FAKE), rel=1e-6)
    assert wgan.clip_value == 0.01 and wgan.gp_weight == 0
    assert gp.clip_value is None and gp.gp_weight == 10.0
    assert Wasserstein(clip_value=0.05).clip_value == 0.05 and Wasserstein(clip_value=None).clip_value is None
    assert WassersteinGP(gp_weight=5.0).gp_weight == 5.0


@pytest.mark.parametrize("shape", ["(B,)", "(B,1)"])
@pytest.mark.parametrize("real_label", [1.0, 0.9])
def test_least_squares_loss_by_hand(shape, real_label):
    """LSGAN: D 0.5 * (E[(D(x) - real_label)^2] + E[D(G(z))^2]); G 0.5 * E[(D(G(z)) - 1)^2]."""
    real, fake = scores(REAL, shape), scores(FAKE, shape)
    loss = LeastSquares()
    assert loss.uses_real_label and not loss.wasserstein
    expected = 0.5 * (mean((r - real_label) ** 2 for r in REAL) + mean(f ** 2 for f in FAKE))
    assert float(loss.d_loss(real, fake, real_label)) == pytest.approx(expected, rel=1e-6)
    assert float(loss.g_loss(fake)) == pytest.approx(0.5 * mean((f - 1) ** 2 for f in FAKE), rel=1e-6)


@pytest.mark.parametrize("shape", ["(B,)", "(B,1)"])
def test_hinge_loss_by_hand(shape):
    """Hinge: D E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))] (a real at 2 and a fake at -2.5 cost nothing);
    G -E[D(G(z))]; no real label to smooth."""
    real, fake = scores(REAL, shape), scores(FAKE, shape)
    loss = Hinge()
    expected = mean(max(0.0, 1 - r) for r in REAL) + mean(max(0.0, 1 + f) for f in FAKE)
    assert expected == pytest.approx((0.5 + 2.0 + 0.0) / 3 + (1.2 + 0.7 + 0.0) / 3)
    assert float(loss.d_loss(real, fake)) == pytest.approx(expected, rel=1e-6)
    assert float(loss.g_loss(fake)) == pytest.approx(-mean(FAKE), rel=1e-6)
    assert not loss.uses_real_label and not loss.wasserstein and loss.clip_value is None


@pytest.mark.parametrize("make", [lambda: Wasserstein(clip_value=0), lambda: Wasserstein(clip_value=-0.01),
                                  lambda: WassersteinGP(gp_weight=0), lambda: WassersteinGP(gp_weight=-10)],
                         ids=["clip0", "clip-neg", "gp0", "gp-neg"])
def test_invalid_loss_parameters_raise(make):
    """A non-positive clip value or penalty weight is refused with a ValueError naming the key."""
    with pytest.raises(ValueError, match=r"gan_loss\.(clip_value|gp_weight) must be positive"):
        make()


def test_base_loss_is_abstract():
    with pytest.raises(NotImplementedError):
        GANLoss().d_loss(torch.zeros(2), torch.zeros(2))
    with pytest.raises(NotImplementedError):
        GANLoss().g_loss(torch.zeros(2))


# ---------------------------------------------------------------- gradient penalty

class LinearCritic(nn.Module):
    """D(x) = w . flatten(x) + b, whose gradient wrt x is w everywhere; records every input it scores."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.lin = nn.Linear(w.numel(), 1)
        with torch.no_grad():
            self.lin.weight.copy_(w.view(1, -1))
        self.seen: list[tuple[torch.Tensor, tuple]] = []

    def forward(self, x: torch.Tensor, *args) -> torch.Tensor:
        self.seen.append((x.detach().clone(), args))
        return self.lin(x.flatten(1)).squeeze(1)  # (B,)


def direction(n: int, norm: float) -> torch.Tensor:
    w = torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return (w / w.norm() * norm).float()


def real_fake(b: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randn(b, 2, 3, 3, generator=g), torch.randn(b, 2, 3, 3, generator=g)


@pytest.mark.parametrize("norm", [1.0, 2.0, 3.0, 0.5])
def test_gradient_penalty_of_a_linear_critic(norm):
    """A linear critic's input gradient is w at every x_hat, so the penalty is (||w|| - 1)^2: ~0 for a
    1-Lipschitz critic of unit norm, 1 for norm 2; the penalty trains the critic (its weight gets
    2(||w|| - 1) w / ||w||) and never the real or generated batch."""
    real, fake = real_fake()
    real.requires_grad_(True)
    fake.requires_grad_(True)
    w = direction(real[0].numel(), norm)
    critic = LinearCritic(w)
    gp = gradient_penalty(critic, real, fake)
    if norm == 1.0:
        assert float(gp) < 1e-6
    else:
        assert float(gp) == pytest.approx((norm - 1) ** 2, rel=1e-5)
    gp.backward()
    torch.testing.assert_close(critic.lin.weight.grad.view(-1), 2 * (norm - 1) * w / norm, atol=1e-5, rtol=1e-4)
    assert real.grad is None and fake.grad is None


def test_gradient_penalty_draws_one_alpha_per_sample(monkeypatch):
    """x_hat = a * real + (1 - a) * fake with a of shape (B, 1, 1, 1): given the alphas, every sample's x_hat is
    exactly its own interpolate; extra critic arguments (labels) are passed through."""
    real, fake = real_fake()
    alphas = torch.linspace(0.1, 0.9, 8).view(8, 1, 1, 1)
    asked = []

    def fixed_rand(*size, **kwargs):
        asked.append(tuple(size))
        return alphas.to(kwargs.get("dtype", torch.float32))

    monkeypatch.setattr(torch, "rand", fixed_rand)
    critic = LinearCritic(direction(real[0].numel(), 1.0))
    labels = torch.arange(8)
    gradient_penalty(critic, real, fake, labels)
    assert asked == [(8, 1, 1, 1)]
    (x_hat, args), = critic.seen
    torch.testing.assert_close(x_hat, alphas * real + (1 - alphas) * fake)
    assert len(args) == 1 and torch.equal(args[0], labels)


def test_gradient_penalty_interpolates_lie_on_each_samples_segment():
    """With the real torch.rand: each x_hat lies on the segment from its own fake to its own real (one a in
    [0, 1] per sample, the same for all its pixels), and the samples get different a's."""
    torch.manual_seed(3)
    real, fake = real_fake()
    critic = LinearCritic(direction(real[0].numel(), 1.0))
    gradient_penalty(critic, real, fake)
    x_hat = critic.seen[0][0]
    ratio = ((x_hat - fake) / (real - fake)).flatten(1)  # a, elementwise
    per_sample = ratio.mean(dim=1)
    torch.testing.assert_close(ratio, per_sample[:, None].expand_as(ratio), atol=1e-4, rtol=1e-4)
    assert bool(((per_sample >= 0) & (per_sample <= 1)).all())
    assert len(set(np.round(per_sample.numpy(), 4))) == 8


# ---------------------------------------------------------------- the adversarial task in real training

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


# ---------------------------------------------------------------- config errors through the CLI

@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["model=convnet", "gan_loss=hinge"], ["GAN model", "discriminator", "convnet"]),
        (["model=dcgan", "task.n_critic=0"], ["n_critic"]),
        (["model=dcgan", "model.generator.latent_dim=0"], ["latent_dim"]),
        (["model=dcgan", "dataset=fake", "dataset.image_size=27"], ["image_size", "27"]),
        (["model=vae", "task.recon_loss=bce", "model.output=linear"], ["recon_loss=bce", "sigmoid"]),
    ],
    ids=["gan_loss-on-classifier", "n_critic-0", "latent_dim-0", "odd-image-size", "bce-linear-output"],
)
def test_generative_config_errors_exit_2_before_training(run_dlexp, tmp_path, overrides, expected):
    """A generative config mistake: exit 2, one plain line naming it, no traceback, no run directory."""
    result = run_dlexp("train", "trainer=debug", *overrides)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    err = result.stderr.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert "Traceback" not in result.stderr + result.stdout
    for words in expected:
        assert words in err, err
    assert not list((tmp_path / "outputs").glob("*/*")), "a run directory was left behind"


# ---------------------------------------------------------------- the sample-image callback

GRID = ["task.n_samples=16", "callbacks.samples.every_n_epochs=1", "callbacks.samples.n=16",
        "callbacks.samples.nrow=4", "trainer.limit_train_batches=2"]


def png(path) -> np.ndarray:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def expected_grid(images: torch.Tensor, dm) -> np.ndarray:
    grid = make_grid(denormalize(images, dm.mean, dm.std), nrow=4, padding=2, pad_value=1.0)
    return grid.mul(255).add(0.5).clamp(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()


@pytest.mark.parametrize("model", ["dcgan", "vae"])
def test_sample_grids_are_written_and_the_noise_is_checkpointed(make_cfg, tmp_path, model):
    """every_n_epochs=1, n=16, nrow=4: samples/epoch_0001.png is a 4x4 grid of 28 px tiles with padding 2
    (4 * 30 + 2 px a side) showing the task's grid (the fixed-noise samples; for the VAE inputs and their
    reconstructions, first tile the first validation image) and for the VAE prior_epoch_0001.png too; the
    fixed noise is in the checkpoint's state_dict (loadable with weights_only=True)."""
    overrides = [*GRID, *(SMALL_DCGAN if model == "dcgan" else ["dataset.batch_size=16"])]
    cfg = make_cfg(f"model={model}", *overrides)
    parts = build(cfg, model)
    task, trainer, dm = parts.task, parts.trainer, parts.datamodule
    trainer.fit(task, datamodule=dm)
    samples = tmp_path / "run" / "samples"
    side = 4 * (28 + 2) + 2
    grid = png(samples / "epoch_0001.png")
    assert grid.shape == (side, side, 3)
    assert (grid[:2] == 255).all() and (grid[:, :2] == 255).all()  # white padding
    task.eval()
    reference = dm.transform(dm.splits["val"][0][:16], training=False)
    grids = task.sample_images(reference, nrow=4)
    assert np.abs(grid.astype(int) - expected_grid(grids[""], dm)).max() <= 1
    expected_files = {"epoch_0001.png"}
    if model == "vae":
        expected_files.add("prior_epoch_0001.png")
        prior = png(samples / "prior_epoch_0001.png")
        assert prior.shape == (side, side, 3)
        assert np.abs(prior.astype(int) - expected_grid(task.net.sample(task.fixed_noise), dm)).max() <= 1
        first_input = dm.splits["val"][0][0, 0].numpy().astype(int)  # mean 0, std 1: the stored uint8 pixels
        assert np.abs(grid[2:30, 2:30, 0].astype(int) - first_input).max() <= 1
    assert {p.name for p in samples.iterdir()} == expected_files

    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert torch.equal(state["fixed_noise"], task.fixed_noise)
    assert task.fixed_noise.shape == (16, task.net.latent_dim)


def test_reconstruction_grid_puts_inputs_above_their_reconstructions(make_cfg, tmp_path):
    """Documented layout (AutoencodingTask.sample_images, SampleImages): inputs above their reconstructions, i.e.
    with nrow=4 the first grid row holds the first 4 validation inputs and the second row their reconstructions."""
    cfg = make_cfg("model=vae", *GRID, "dataset.batch_size=16")
    parts = build(cfg, "vae")
    dm = parts.datamodule
    parts.trainer.fit(parts.task, datamodule=dm)
    grid = png(tmp_path / "run" / "samples" / "epoch_0001.png")[..., 0].astype(int)
    inputs = dm.splits["val"][0][:4, 0].numpy().astype(int)

    def tile(row: int, col: int) -> np.ndarray:
        return grid[2 + 30 * row: 30 + 30 * row, 2 + 30 * col: 30 + 30 * col]

    for col in range(4):
        assert np.abs(tile(0, col) - inputs[col]).max() <= 1, f"first row, column {col} is not input {col}"


@pytest.mark.parametrize("model", ["dcgan", "vae"])
def test_fixed_noise_follows_the_seed(make_cfg, model):
    """Two builds with the same seed draw the same fixed noise (whatever ran between); another seed differs."""
    first = build(make_cfg(f"model={model}"), model).task.fixed_noise
    torch.randn(100)  # global RNG use between builds must not matter
    again = build(make_cfg(f"model={model}"), model).task.fixed_noise
    other = build(make_cfg(f"model={model}", "seed=7"), model).task.fixed_noise
    assert torch.equal(first, again)
    assert first.shape == other.shape and not torch.equal(first, other)


# ---------------------------------------------------------------- the autoencoding task

def adam(params) -> torch.optim.Optimizer:
    """An optimizer factory as the task gets it from Hydra (called with params=...)."""
    return torch.optim.Adam(params, lr=1e-3)


def ae_task(noise: str = "none", noise_level: float = 0.3, **kwargs) -> AutoencodingTask:
    torch.manual_seed(0)
    return AutoencodingTask(MLPAutoEncoder(1, 28, hidden=[32, 8]), adam, recon_loss="mse", noise=noise,
                            noise_level=noise_level, **kwargs)


@pytest.mark.parametrize("level", [0.1, 0.3, 0.7])
def test_masking_noise_zeroes_that_fraction_of_pixels(level):
    """noise=masking zeroes about noise_level of the pixels and leaves the others exactly as they were."""
    task = ae_task("masking", level)
    torch.manual_seed(1)
    x = torch.rand(64, 1, 28, 28) + 0.5  # no pixel is zero to start with
    noisy = task.corrupt(x)
    zeroed = noisy == 0
    assert float(zeroed.float().mean()) == pytest.approx(level, abs=0.01)
    assert torch.equal(noisy[~zeroed], x[~zeroed])


@pytest.mark.parametrize("level", [0.1, 0.5])
def test_gaussian_noise_has_the_level_as_std(level):
    """noise=gaussian adds zero-mean noise of std noise_level; noise=none leaves x alone."""
    task = ae_task("gaussian", level)
    torch.manual_seed(1)
    x = torch.rand(64, 1, 28, 28)
    delta = task.corrupt(x) - x
    assert float(delta.std()) == pytest.approx(level, rel=0.03)
    assert abs(float(delta.mean())) < 5 * level / math.sqrt(delta.numel())
    assert ae_task("none").corrupt(x) is x


@pytest.mark.parametrize("noise, level, expected", [("masking", 0.3, 0.3 * 784), ("gaussian", 0.5, 0.25 * 784)])
def test_denoising_corrupts_the_input_and_keeps_the_clean_target(monkeypatch, noise, level, expected):
    """With a perfect identity 'autoencoder' the training loss is the distance from the corrupted input to the
    clean x (about noise_level * 784 masked pixels of 1, or 784 * level^2), not 0: the target stays clean.
    Validation sees clean inputs, so its loss is 0."""
    task = ae_task(noise, level)
    seen = []

    def identity(source):
        seen.append(source)
        return source, source.new_zeros(source.shape[0])

    monkeypatch.setattr(task, "reconstruct", identity)
    x = torch.ones(32, 1, 28, 28)
    torch.manual_seed(2)
    train_loss = float(task.model_step(x, "train")["train/loss"])
    assert train_loss == pytest.approx(expected, rel=0.05)
    assert not torch.equal(seen[0], x)
    assert float(task.model_step(x, "val")["val/loss"]) == 0.0 and seen[1] is x


def test_invalid_autoencoding_settings_raise():
    """Bad recon_loss / noise / noise_level values, and BCE on a linear decoder, are refused."""
    with pytest.raises(ValueError, match="recon_loss"):
        AutoencodingTask(MLPAutoEncoder(1, 28), adam, recon_loss="l1")
    with pytest.raises(ValueError, match="needs a decoder with output=sigmoid"):
        AutoencodingTask(MLPAutoEncoder(1, 28, output="linear"), adam, recon_loss="bce")
    with pytest.raises(ValueError, match="task.noise must be one of"):
        ae_task("salt")
    with pytest.raises(ValueError, match="noise_level"):
        ae_task("masking", 1.0)
    with pytest.raises(ValueError, match="noise_level"):
        ae_task("gaussian", -0.1)


def vae_task(beta: float = 1.0) -> AutoencodingTask:
    torch.manual_seed(0)
    return AutoencodingTask(MLPVAE(1, 4, hidden=[8], latent_dim=2), adam, recon_loss="bce", beta=beta)


MU = torch.tensor([[1.0, 0.0], [0.5, -2.0]])
LOGVAR = torch.tensor([[0.0, math.log(2.0)], [-1.0, 0.5]])


def test_kl_term_is_the_closed_form(monkeypatch):
    """KL(N(mu, sigma^2) || N(0, I)) = 0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2) per sample (hand-computed
    for the first sample), and the loss adds beta * its batch mean to the summed reconstruction."""
    task = vae_task(beta=0.5).eval()
    monkeypatch.setattr(task.net, "encode", lambda x: (MU, LOGVAR))
    x = torch.rand(2, 1, 4, 4)
    out, kl = task.reconstruct(x)
    assert float(kl[0]) == pytest.approx(0.5 + 0.5 * (1 - math.log(2.0)), rel=1e-6)
    closed = [0.5 * sum(m ** 2 + math.exp(lv) - 1 - lv for m, lv in zip(mu, lv_row))
              for mu, lv_row in zip(MU.tolist(), LOGVAR.tolist())]
    torch.testing.assert_close(kl, torch.tensor(closed))
    reference = torch.distributions.kl_divergence(torch.distributions.Normal(MU, (0.5 * LOGVAR).exp()),
                                                  torch.distributions.Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(kl, reference)
    torch.testing.assert_close(out, task.net.decode(MU))  # eval: z = mu
    recon = torch.nn.functional.binary_cross_entropy(out.clamp(1e-6, 1 - 1e-6), x, reduction="none").flatten(1).sum(1)
    torch.testing.assert_close(task.model_step(x, "val")["val/loss"], recon.mean() + 0.5 * kl.mean())


def test_vae_is_deterministic_in_eval_and_samples_in_training():
    """eval: the reconstruction decodes mu, the same every call; training: z = mu + sigma * eps differs."""
    task = vae_task()
    x = torch.rand(8, 1, 4, 4)
    task.eval()
    first, again = task(x), task(x)
    assert torch.equal(first, again)
    mu, _ = task.net.encode(x)
    torch.testing.assert_close(first, task.net.decode(mu))
    task.train()
    a, b = task(x), task(x)
    assert not torch.allclose(a, b) and not torch.allclose(a, first)


def test_linear_autoencoder_on_points3d_learns_the_pca_plane(make_cfg):
    """model=linear_ae on dataset=points3d (the notes' PCA example): the 2-d code's decoder spans the top-2
    principal plane of the training points and the reconstruction error approaches PCA's (the smallest
    eigenvalue of the covariance)."""
    cfg = make_cfg("model=linear_ae", "dataset=points3d", "trainer.max_epochs=30", "trainer.limit_train_batches=1.0",
                   "trainer.limit_val_batches=1")
    parts = build(cfg, "linear_ae")
    task, dm = parts.task, parts.datamodule
    parts.trainer.fit(task, datamodule=dm)
    x = dm.splits["train"][0].flatten(1).double()
    centred = x - x.mean(0)
    eigenvalues, eigenvectors = torch.linalg.eigh(centred.T @ centred / len(x))
    task.eval()
    with torch.no_grad():
        out = task(dm.splits["train"][0]).flatten(1).double()
    error = float(((out - x) ** 2).sum(1).mean())
    assert eigenvalues[0] <= error * (1 + 1e-6) <= eigenvalues[0] * 1.05 and error < 0.1 * float(eigenvalues.sum())
    basis, _ = torch.linalg.qr(task.net.decoder[0].weight.detach().double())  # (3, 2) column space
    cosines = torch.linalg.svdvals(basis.T @ eigenvectors[:, 1:])  # principal angles to the top-2 plane
    assert float(cosines.min()) > 0.99


def test_autoencoder_trains_under_bf16_autocast(make_cfg):
    """trainer.precision=bf16-mixed (the gpu trainer's setting): the reconstruction loss is computed in float32
    outside autocast (CUDA refuses binary_cross_entropy under autocast) and stays finite."""
    parts = build(make_cfg("model=vae", "trainer.precision=bf16-mixed"), "vae")
    parts.trainer.fit(parts.task, datamodule=parts.datamodule)
    loss = parts.trainer.callback_metrics["train/loss_epoch"]
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
