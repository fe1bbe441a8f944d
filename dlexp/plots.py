"""Pictures dlexp writes: image grids as PNG files (atomically, returned as tensors for TensorBoard too), and
matplotlib for the plots of `dlexp compare` and `dlexp sample mode=codes`."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
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


def pyplot(purpose: str) -> Any:
    """matplotlib's pyplot on the Agg backend; matplotlib is an optional extra (dlexp[plot])."""
    try:
        import matplotlib  # optional: imported by the commands that draw
    except ImportError:
        raise ConfigError(f"{purpose} draws with matplotlib: pip install 'dlexp[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
