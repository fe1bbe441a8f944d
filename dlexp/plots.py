"""Pictures dlexp writes: image grids as PNG files (atomically, returned as tensors for TensorBoard too), line
plots of 1-D signals as panels of such grids, and matplotlib for `dlexp compare` and `dlexp sample mode=codes`."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid, save_image

from dlexp.errors import ConfigError
from dlexp.io import atomic_write_bytes


def save_grid(images: torch.Tensor, path: Path, nrow: int) -> torch.Tensor:
    """Write [0, 1] images (B, C, H, W) as one PNG grid, atomically; returns the grid (C, H', W')."""
    grid = make_grid(images, nrow=nrow, padding=2, pad_value=1.0)
    buffer = io.BytesIO()
    save_image(grid, buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return grid


def signal_panels(signals: torch.Tensor, height: int = 64, width: int = 192) -> torch.Tensor:
    """Line plots of signals (B, C, L) with values in [-1, 1], one panel per signal and one colour per channel,
    as [0, 1] images (B, 3, height, width) for save_grid and TensorBoard (no matplotlib needed)."""
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]
    panels = []
    for signal in signals.detach().float().cpu().clamp(-1, 1):
        image = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(image)
        draw.line([(0, height // 2), (width, height // 2)], fill=(220, 220, 220))  # the zero line
        draw.rectangle([0, 0, width - 1, height - 1], outline=(160, 160, 160))
        xs = np.linspace(0, width - 1, signal.shape[-1])
        for c, channel in enumerate(signal):
            ys = (1 - channel.numpy()) * (height - 1) / 2  # +1 at the top, -1 at the bottom
            draw.line(list(zip(xs.tolist(), ys.tolist())), fill=colours[c % len(colours)], width=1)
        panels.append(torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255)
    return torch.stack(panels)


def pyplot(purpose: str) -> Any:
    """matplotlib's pyplot on the Agg backend; matplotlib is an optional extra (dlexp[plot])."""
    try:
        import matplotlib  # optional: imported by the commands that draw
    except ImportError:
        raise ConfigError(f"{purpose} draws with matplotlib: pip install 'dlexp[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
