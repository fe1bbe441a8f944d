"""Autoencoders and VAEs: encode() images (B, C, H, W) to codes, decode() codes back to images.

VAEs (variational = True) encode to (mu, logvar) and sample() decodes draws from the N(0, I) prior.
`output` is the decoder's last activation: sigmoid for data in [0, 1] (BCE), linear for anything else.
"""
from __future__ import annotations

import torch
from torch import nn

from dlexp.nets.classifiers import make_activation

OUTPUTS = ("sigmoid", "linear")


def _output(name: str) -> nn.Module:
    if name not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got '{name}'")
    return nn.Sigmoid() if name == "sigmoid" else nn.Identity()


def _dense(sizes: list[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), make_activation(activation)]
    return nn.Sequential(*layers)


class MLPAutoEncoder(nn.Module):
    """The notes' stacked autoencoder: 784 -> 300 -> 200 -> 100 (code) -> 200 -> 300 -> 784, ELU."""

    input_kinds = ("image",)  # the data kinds it takes (checked against dataset.kind before a run)

    variational = False

    def __init__(self, in_channels: int, image_size: int, hidden: list[int] = (300, 200, 100), activation: str = "elu",
                 output: str = "linear") -> None:
        super().__init__()
        self.output = output
        self.shape, n_in = (in_channels, image_size, image_size), in_channels * image_size * image_size
        self.latent_dim = hidden[-1]
        self.encoder = _dense([n_in, *hidden], activation)
        back = list(reversed(hidden))
        self.decoder = nn.Sequential(_dense(back, activation), nn.Linear(back[-1], n_in), _output(output))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.flatten(1))  # (B, code)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self.decoder(code).view(-1, *self.shape)


class LinearAutoEncoder(nn.Module):
    """Linear encoder and decoder with MSE: it learns the PCA subspace (the notes' 3-D points -> 2-D code)."""

    input_kinds = ("image",)

    variational = False

    def __init__(self, in_channels: int, image_size: int, code_dim: int = 2, output: str = "linear") -> None:
        super().__init__()
        self.output, self.latent_dim = output, code_dim
        self.shape, n_in = (in_channels, image_size, image_size), in_channels * image_size * image_size
        self.encoder = nn.Linear(n_in, code_dim)
        self.decoder = nn.Sequential(nn.Linear(code_dim, n_in), _output(output))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.flatten(1))

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self.decoder(code).view(-1, *self.shape)


class ConvAutoEncoder(nn.Module):
    """Stride-2 conv encoder to a dense code, transposed-conv decoder back to the image."""

    input_kinds = ("image",)

    variational = False

    def __init__(self, in_channels: int, image_size: int, channels: list[int] = (32, 64), code_dim: int = 32,
                 output: str = "sigmoid") -> None:
        super().__init__()
        if image_size % 2 ** len(channels):
            raise ValueError(f"image_size {image_size} must be divisible by 2^{len(channels)} for {len(channels)} conv stages")
        self.output, self.latent_dim = output, code_dim
        size = image_size // 2 ** len(channels)
        enc: list[nn.Module] = []
        c_in = in_channels
        for c in channels:
            enc += [nn.Conv2d(c_in, c, 3, 2, 1), nn.ReLU()]
            c_in = c
        self.encoder = nn.Sequential(*enc, nn.Flatten(), nn.Linear(c_in * size * size, code_dim))
        dec: list[nn.Module] = [nn.Linear(code_dim, c_in * size * size), nn.ReLU(), nn.Unflatten(1, (c_in, size, size))]
        outs = list(reversed(channels))[1:] + [in_channels]
        for i, c in enumerate(outs):
            dec += [nn.ConvTranspose2d(c_in, c, 4, 2, 1)] + ([nn.ReLU()] if i < len(outs) - 1 else [])  # 2x up
            c_in = c
        self.decoder = nn.Sequential(*dec, _output(output))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self.decoder(code)


class MLPVAE(nn.Module):
    """The notes' VAE: 784 -> 300 -> 100 -> (mu, logvar) of a 20-d latent -> 100 -> 300 -> 784, ELU, He init."""

    input_kinds = ("image",)

    variational = True

    def __init__(self, in_channels: int, image_size: int, hidden: list[int] = (300, 100), latent_dim: int = 20,
                 activation: str = "elu", output: str = "sigmoid") -> None:
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        self.output, self.latent_dim = output, latent_dim
        self.shape, n_in = (in_channels, image_size, image_size), in_channels * image_size * image_size
        self.encoder = _dense([n_in, *hidden], activation)
        self.mu, self.logvar = nn.Linear(hidden[-1], latent_dim), nn.Linear(hidden[-1], latent_dim)
        back = list(reversed(hidden))
        self.decoder = nn.Sequential(_dense([latent_dim, *back], activation), nn.Linear(back[-1], n_in), _output(output))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)  # the notes' variance_scaling_initializer
                nn.init.zeros_(m.bias)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x.flatten(1))
        return self.mu(h), self.logvar(h)  # (B, latent) each

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).view(-1, *self.shape)

    def sample(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(z)


class ConvVAE(nn.Module):
    """The Keras-book conv VAE: conv32, conv64/2, conv64, conv64 -> dense 32 -> 2-d latent; mirrored decoder."""

    input_kinds = ("image",)

    variational = True

    def __init__(self, in_channels: int, image_size: int, latent_dim: int = 2, output: str = "sigmoid") -> None:
        super().__init__()
        if image_size % 2:
            raise ValueError(f"conv_vae needs an even image_size, got {image_size}")
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        self.output, self.latent_dim = output, latent_dim
        half = image_size // 2
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, 1, 1), nn.ReLU(), nn.Conv2d(64, 64, 3, 1, 1), nn.ReLU(),
            nn.Flatten(), nn.Linear(64 * half * half, 32), nn.ReLU(),
        )
        self.mu, self.logvar = nn.Linear(32, latent_dim), nn.Linear(32, latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 64 * half * half), nn.ReLU(), nn.Unflatten(1, (64, half, half)),
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(), nn.Conv2d(32, in_channels, 3, 1, 1), _output(output),
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.mu(h), self.logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def sample(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(z)
