"""Checkpoints that can be trusted: atomic writes, weights-only loading with one-line errors, RNG state.

Lightning writes a checkpoint in place, so a kill mid-write leaves a truncated file; here the bytes go
to a temp file in the same directory, are fsynced, then renamed over the old checkpoint.
"""
from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from dlexp.errors import ConfigError
from dlexp.io import atomic_write_bytes


class CheckpointError(ConfigError):
    """A checkpoint file that is missing, truncated, foreign or unsafe: one line naming the file."""


def load_checkpoint(path: str | Path, training: bool = True) -> dict[str, Any]:
    """torch.load(weights_only=True) of a Lightning/dlexp checkpoint (training=False: any state_dict file);
    any problem is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (an interrupted write?)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refuses anything but tensors and plain containers
        unsafe = re.search(r"GLOBAL ([\w.]+)", str(e))
        if unsafe:
            raise CheckpointError(f"{path}: refused: it would load {unsafe.group(1)}, not just tensors and plain "
                                  "data (nothing in it was run)") from None
        raise CheckpointError(f"{path}: refused: not a weights-only PyTorch checkpoint (foreign, truncated, or "
                              "holding code; nothing in it was run)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or foreign): {first}") from None
    if not isinstance(ckpt, dict) or (training and "state_dict" not in ckpt):
        raise CheckpointError(f"{path}: a PyTorch file, but not a training checkpoint (no state_dict)")
    return ckpt


class NonFiniteWeights(RuntimeError):
    """The weights to be saved hold NaN or inf: the previous checkpoint is kept."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with atomic, durable saves and safe, weights-only loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        bad = [k for k, v in checkpoint.get("state_dict", {}).items()
               if torch.is_floating_point(v) and not bool(torch.isfinite(v).all())]
        if bad:  # never replace a good checkpoint with non-finite weights
            raise NonFiniteWeights(f"weights became non-finite ({', '.join(bad[:3])}); {Path(path).name} not written")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(Path(path), buffer.getvalue())

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return load_checkpoint(path)
