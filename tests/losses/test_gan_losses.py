"""dlexp/losses/gan.py: the gan_loss formulas by hand and the gradient penalty."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dlexp.losses.gan import (GANLoss, Hinge, LeastSquares, Minimax, NonSaturating, Wasserstein, WassersteinGP,
                              gradient_penalty)


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
