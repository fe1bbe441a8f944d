"""Generators and discriminators (MLP as in the PyTorch notes, DCGAN-style convolutional) and their pair.

Generators map (B, latent_dim) noise (+ labels for a conditional GAN) to tanh images (B, C, H, W);
discriminators map images (+ labels) to raw scores (B,): logits for BCE losses, critic values for WGAN.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm


def dcgan_init(module: nn.Module) -> None:
    """DCGAN paper: conv/linear weights ~ N(0, 0.02); batch-norm scale ~ N(1, 0.02), shift 0 (1-D and 2-D)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _check(latent_dim: int, num_classes: int) -> None:
    if latent_dim < 1:
        raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0 (0: unconditional), got {num_classes}")


def _sn(layer: nn.Module, on: bool) -> nn.Module:
    return _spectral_norm(layer) if on else layer


def _with_labels(x: torch.Tensor, labels: torch.Tensor | None, embed: nn.Module | None) -> torch.Tensor:
    """Concatenate a label embedding to flat features (conditional GAN); unconditional nets pass x through."""
    if embed is None:
        return x
    if labels is None:
        raise ValueError("a conditional GAN needs labels")
    return torch.cat([x, embed(labels)], dim=1)


class MLPGenerator(nn.Module):
    """The notes' vanilla-GAN generator: latent -> 128 -> 256 -> 512 -> 1024 (BN, LeakyReLU 0.2) -> tanh image."""

    input_kinds = ("image",)  # the data kinds it takes (checked against dataset.kind before a run)

    def __init__(self, latent_dim: int, channels: int, image_size: int, hidden: list[int] = (128, 256, 512, 1024),
                 num_classes: int = 0) -> None:
        super().__init__()
        _check(latent_dim, num_classes)
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.shape = (channels, image_size, image_size)
        self.embed = nn.Embedding(num_classes, num_classes) if num_classes else None
        layers, width = [], latent_dim + num_classes
        for i, h in enumerate(hidden):
            layers += [nn.Linear(width, h)] + ([nn.BatchNorm1d(h)] if i > 0 else []) + [nn.LeakyReLU(0.2)]
            width = h
        self.body = nn.Sequential(*layers, nn.Linear(width, channels * image_size * image_size), nn.Tanh())

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.body(_with_labels(z, labels, self.embed)).view(-1, *self.shape)  # (B, C, H, W)


class MLPDiscriminator(nn.Module):
    """The notes' vanilla-GAN discriminator: image -> 512 -> 256 (LeakyReLU 0.2) -> one score."""

    input_kinds = ("image",)

    def __init__(self, channels: int, image_size: int, hidden: list[int] = (512, 256), num_classes: int = 0,
                 spectral_norm: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        _check(1, num_classes)
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, num_classes) if num_classes else None
        layers, width = [], channels * image_size * image_size + num_classes
        for h in hidden:
            layers += [_sn(nn.Linear(width, h), spectral_norm), nn.LeakyReLU(0.2)]
            layers += [nn.Dropout(dropout)] if dropout else []
            width = h
        self.body = nn.Sequential(*layers, _sn(nn.Linear(width, 1), spectral_norm))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.body(_with_labels(x.flatten(1), labels, self.embed)).squeeze(1)  # (B,)


def _stages(image_size: int) -> tuple[int, int]:
    """(base size, number of 2x stages): 28 -> (7, 2), 32 -> (4, 3), 64 -> (4, 4)."""
    size, n = image_size, 0
    while size % 2 == 0 and size > 7:
        size, n = size // 2, n + 1
    if n == 0:
        raise ValueError(f"DCGAN nets need an image_size divisible by 2 (e.g. 28, 32, 64), got {image_size}")
    return size, n


class DCGANGenerator(nn.Module):
    """DCGAN generator: project z to (width*2^(n-1), s, s), then n stride-2 transposed convs (BN, ReLU) to tanh."""

    input_kinds = ("image",)

    def __init__(self, latent_dim: int, channels: int, image_size: int, width: int = 64, num_classes: int = 0) -> None:
        super().__init__()
        _check(latent_dim, num_classes)
        self.latent_dim, self.num_classes = latent_dim, num_classes
        size, n = _stages(image_size)
        c = width * 2 ** (n - 1)
        self.embed = nn.Embedding(num_classes, num_classes) if num_classes else None
        self.project = nn.Sequential(
            nn.Linear(latent_dim + num_classes, c * size * size, bias=False), nn.Unflatten(1, (c, size, size)),
            nn.BatchNorm2d(c), nn.ReLU(),
        )
        ups: list[nn.Module] = []
        for i in range(n):
            last = i == n - 1
            out = channels if last else c // 2
            ups.append(nn.ConvTranspose2d(c, out, 4, 2, 1, bias=last))  # doubles H and W
            ups += [nn.Tanh()] if last else [nn.BatchNorm2d(out), nn.ReLU()]
            c = out
        self.ups = nn.Sequential(*ups)
        dcgan_init(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.ups(self.project(_with_labels(z, labels, self.embed)))  # (B, C, H, W)


class DCGANDiscriminator(nn.Module):
    """DCGAN discriminator: n stride-2 convs (LeakyReLU 0.2, BN after the first unless off) then a linear score.

    batch_norm=false gives the WGAN-GP critic (the penalty is per sample, BN would couple samples).
    A conditional D gets the label as an extra input channel (an embedding spread over the image).
    """

    input_kinds = ("image",)

    def __init__(self, channels: int, image_size: int, width: int = 64, batch_norm: bool = True,
                 spectral_norm: bool = False, dropout: float = 0.0, num_classes: int = 0) -> None:
        super().__init__()
        _check(1, num_classes)
        self.num_classes, self.image_size = num_classes, image_size
        size, n = _stages(image_size)
        self.embed = nn.Embedding(num_classes, image_size * image_size) if num_classes else None
        layers: list[nn.Module] = []
        c_in, c = channels + (1 if num_classes else 0), width
        for i in range(n):
            layers.append(_sn(nn.Conv2d(c_in, c, 4, 2, 1, bias=not (batch_norm and i > 0)), spectral_norm))
            layers += [nn.BatchNorm2d(c)] if batch_norm and i > 0 else []
            layers += [nn.LeakyReLU(0.2)] + ([nn.Dropout(dropout)] if dropout else [])
            c_in, c = c, c * 2
        self.features = nn.Sequential(*layers)
        self.score = _sn(nn.Linear(c_in * size * size, 1), spectral_norm)
        dcgan_init(self)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            if labels is None:
                raise ValueError("a conditional GAN needs labels")
            x = torch.cat([x, self.embed(labels).view(-1, 1, self.image_size, self.image_size)], dim=1)
        return self.score(self.features(x).flatten(1)).squeeze(1)  # (B,)


class GAN(nn.Module):
    """A generator and a discriminator (critic) trained against each other; sample() draws images from noise."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module) -> None:
        super().__init__()
        if getattr(generator, "num_classes", 0) != getattr(discriminator, "num_classes", 0):
            raise ValueError("generator and discriminator must agree on num_classes (conditional or not)")
        self.generator, self.discriminator = generator, discriminator

    @property
    def latent_dim(self) -> int:
        return self.generator.latent_dim

    @property
    def num_classes(self) -> int:
        return getattr(self.generator, "num_classes", 0)

    def sample(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.generator(z, labels)
