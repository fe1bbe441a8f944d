"""GAN losses as (D loss, G loss) pairs on raw discriminator outputs (logits or critic scores).

`real` and `fake` are D's outputs on a real and a generated batch, shape (B,) or (B, 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GANLoss:
    """Base: subclasses give d_loss and g_loss. clip_value / gp_weight say what keeps a critic Lipschitz."""

    clip_value: float | None = None  # WGAN: clamp critic weights to [-c, c] after every critic step
    gp_weight: float = 0.0           # WGAN-GP: weight of the gradient penalty on interpolates
    uses_real_label: bool = False    # BCE and least-squares losses take a smoothed real label
    logits: bool = False             # D's outputs are logits of a probability (BCE losses)
    wasserstein: bool = False        # D is a critic: report E[D(real)] - E[D(fake)] as the distance estimate

    def d_loss(self, real: torch.Tensor, fake: torch.Tensor, real_label: float = 1.0) -> torch.Tensor:
        raise NotImplementedError

    def g_loss(self, fake: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _bce_d_loss(real: torch.Tensor, fake: torch.Tensor, real_label: float) -> torch.Tensor:
    # -[log D(x)] - [log(1 - D(G(z)))], with D = sigmoid(logit); real_label < 1 is one-sided smoothing
    return (F.binary_cross_entropy_with_logits(real, torch.full_like(real, real_label))
            + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))


class Minimax(GANLoss):
    """Goodfellow et al. 2014 as written: G minimises log(1 - D(G(z))), which saturates early in training."""

    uses_real_label = logits = True

    def d_loss(self, real, fake, real_label=1.0):
        return _bce_d_loss(real, fake, real_label)

    def g_loss(self, fake):
        return -F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))  # = E[log(1 - D(G(z)))]


class NonSaturating(GANLoss):
    """The -log D trick: G maximises log D(G(z)); same fixed point, strong gradients when D wins."""

    uses_real_label = logits = True

    def d_loss(self, real, fake, real_label=1.0):
        return _bce_d_loss(real, fake, real_label)

    def g_loss(self, fake):
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))  # = -E[log D(G(z))]


class Wasserstein(GANLoss):
    """WGAN (Arjovsky et al. 2017): critic maximises E[D(x)] - E[D(G(z))], kept Lipschitz by weight clipping."""

    wasserstein = True

    def __init__(self, clip_value: float | None = 0.01) -> None:
        if clip_value is not None and clip_value <= 0:
            raise ValueError(f"gan_loss.clip_value must be positive, got {clip_value}")
        self.clip_value = clip_value

    def d_loss(self, real, fake, real_label=1.0):
        return fake.mean() - real.mean()

    def g_loss(self, fake):
        return -fake.mean()


class WassersteinGP(Wasserstein):
    """WGAN-GP (Gulrajani et al. 2017): Wasserstein loss plus gp_weight * (||grad D(x_hat)|| - 1)^2."""

    def __init__(self, gp_weight: float = 10.0) -> None:  # WGAN-GP paper: lambda = 10
        if gp_weight <= 0:
            raise ValueError(f"gan_loss.gp_weight must be positive, got {gp_weight}")
        self.clip_value, self.gp_weight = None, gp_weight


class LeastSquares(GANLoss):
    """LSGAN (Mao et al. 2017): D regresses real to 1 and fake to 0; G pushes D(G(z)) to 1."""

    uses_real_label = True

    def d_loss(self, real, fake, real_label=1.0):
        return 0.5 * ((real - real_label).pow(2).mean() + fake.pow(2).mean())

    def g_loss(self, fake):
        return 0.5 * (fake - 1).pow(2).mean()


class Hinge(GANLoss):
    """Hinge loss (Lim & Ye 2017; SAGAN, BigGAN): D: relu(1 - D(x)) + relu(1 + D(G(z))); G: -D(G(z))."""

    def d_loss(self, real, fake, real_label=1.0):
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()

    def g_loss(self, fake):
        return -fake.mean()


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, *critic_args) -> torch.Tensor:
    """E[(||grad_x D(x_hat)||_2 - 1)^2] on x_hat = a*real + (1-a)*fake, one a ~ U[0,1] per sample."""
    alpha = torch.rand(real.shape[0], *([1] * (real.ndim - 1)), device=real.device, dtype=real.dtype)
    x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    scores = critic(x_hat, *critic_args)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)  # (B, C, H, W)
    return (grad.flatten(1).norm(2, dim=1) - 1).pow(2).mean()
