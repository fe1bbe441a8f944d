"""The notes' 1-D GAN for ECG beats (after the P-GAN authors' code): a generator of transposed 1-D convolutions and
a strided 1-D conv critic. Wrap them in dlexp.nets.gans.GAN, as the image GANs.

Generator: z (B, latent_dim) (+ labels) -> Dense -> (16w, L / 2^n) -> n transposed convs (kernel 5, stride 2,
BN + LeakyReLU, widths 8w, 4w, 2w, ...) -> tanh signals (B, channels, length), cropped to `length`.
Critic: (B, channels, length) -> n strided convs (kernel 5, stride 2, widths w, 2w, 4w, 8w, LeakyReLU 0.2)
-> a linear score (B,), the shape the image discriminators give (dlexp.tasks.adversarial checks it).
"""
from __future__ import annotations

import torch
from torch import nn

from dlexp.nets.gans import _check, _sn, _with_labels, dcgan_init


def _halved(length: int, stages: int) -> int:
    """Length after `stages` stride-2 convs with 'same' padding (ceil(L / 2) each)."""
    for _ in range(stages):
        length = (length - 1) // 2 + 1
    return length


def _check_shape(channels: int, length: int, width: int, stages: int) -> None:
    if channels < 1 or length < 2 or width < 1 or stages < 1:
        raise ValueError(f"signal GAN nets need channels >= 1, length >= 2, width >= 1 and stages >= 1, got "
                         f"channels={channels}, length={length}, width={width}, stages={stages}")


class SignalGenerator(nn.Module):
    """1-D transposed-conv generator: z (B, latent_dim) -> (B, channels, length) in [-1, 1] (tanh)."""

    input_kinds = ("signal",)  # the data kinds it takes (checked against dataset.kind before a run)

    def __init__(self, latent_dim: int, channels: int, length: int, width: int = 64, stages: int = 4,
                 num_classes: int = 0) -> None:
        super().__init__()
        _check(latent_dim, num_classes)
        _check_shape(channels, length, width, stages)
        self.latent_dim, self.num_classes, self.length = latent_dim, num_classes, length
        base, c = _halved(length, stages), width * 2**stages  # the notes: 15*4 steps of 1024 channels for 960
        self.embed = nn.Embedding(num_classes, num_classes) if num_classes else None
        self.project = nn.Sequential(nn.Linear(latent_dim + num_classes, c * base), nn.Unflatten(1, (c, base)))
        ups: list[nn.Module] = []
        for i in range(stages):
            last = i == stages - 1
            out = channels if last else c // 2
            ups.append(nn.ConvTranspose1d(c, out, 5, stride=2, padding=2, output_padding=1))  # doubles L
            ups += [nn.Tanh()] if last else [nn.BatchNorm1d(out), nn.LeakyReLU(0.3)]  # Keras' LeakyReLU() slope
            c = out
        self.ups = nn.Sequential(*ups)
        dcgan_init(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.ups(self.project(_with_labels(z, labels, self.embed)))  # (B, C, base * 2^stages)
        return x[:, :, : self.length]  # (B, C, L)


class SignalCritic(nn.Module):
    """1-D strided-conv critic / discriminator: (B, channels, length) -> raw scores (B,).

    No batch norm by default: the WGAN-GP penalty is per sample and BN couples samples (the notes' WGAN-GP critic
    drops it; their WGAN critic has it after the first conv: batch_norm=true). A conditional critic gets the label
    as an extra input channel (an embedding spread over the length).
    """

    input_kinds = ("signal",)

    def __init__(self, channels: int, length: int, width: int = 64, stages: int = 4, batch_norm: bool = False,
                 spectral_norm: bool = False, dropout: float = 0.0, num_classes: int = 0) -> None:
        super().__init__()
        _check(1, num_classes)
        _check_shape(channels, length, width, stages)
        self.num_classes, self.length = num_classes, length
        self.embed = nn.Embedding(num_classes, length) if num_classes else None
        layers: list[nn.Module] = []
        c_in, c = channels + (1 if num_classes else 0), width
        for i in range(stages):
            bn = batch_norm and i > 0
            layers.append(_sn(nn.Conv1d(c_in, c, 5, stride=2, padding=2, bias=not bn), spectral_norm))
            layers += [nn.BatchNorm1d(c)] if bn else []
            layers += [nn.LeakyReLU(0.2)] + ([nn.Dropout(dropout)] if dropout else [])
            c_in, c = c, c * 2
        self.features = nn.Sequential(*layers)
        self.score = _sn(nn.Linear(c_in * _halved(length, stages), 1), spectral_norm)
        dcgan_init(self)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            if labels is None:
                raise ValueError("a conditional GAN needs labels")
            x = torch.cat([x, self.embed(labels).view(-1, 1, self.length)], dim=1)
        return self.score(self.features(x).flatten(1)).squeeze(1)  # (B, C, L) -> (B,)
