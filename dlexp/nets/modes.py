"""Running a net in eval mode for a moment (sample grids, FID, cached features) without losing its own modes."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Run `module` in eval mode, then give every submodule back its own mode (frozen batch norms stay in eval)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.train(training)
