"""Transfer learning: load the matching weights of an earlier run into a new (possibly deeper) net."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dlexp.engine.checkpoint import load_checkpoint
from dlexp.engine.rundir import checkpoint_file
from dlexp.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class TransferReport:
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)      # excluded by the patterns or absent from the new net
    mismatched: list[str] = field(default_factory=list)   # same name, different shape


def net_state(source: str | Path) -> dict[str, torch.Tensor]:
    """The net's tensors from a dlexp checkpoint (keys 'net.*') or a plain state_dict file."""
    try:
        ckpt = load_checkpoint(checkpoint_file(source), training=False)
    except ConfigError as e:
        raise ConfigError(f"model.init_from: {e}") from None
    state = ckpt.get("state_dict", ckpt)
    if any(k.startswith("net.") for k in state):
        state = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
    return state


def load_matching(net: nn.Module, source: str | Path, include: list[str] = (".*",),
                  exclude: list[str] = ()) -> TransferReport:
    """Copy tensors whose names match include (and no exclude) and whose shapes agree into `net`."""
    report, own = TransferReport(), net.state_dict()
    for name, tensor in net_state(source).items():
        wanted = any(re.search(p, name) for p in include) and not any(re.search(p, name) for p in exclude)
        if not wanted or name not in own:
            report.skipped.append(name)
        elif own[name].shape != tensor.shape:
            report.mismatched.append(f"{name} {tuple(tensor.shape)}->{tuple(own[name].shape)}")
        else:
            own[name] = tensor
            report.loaded.append(name)
    if not report.loaded:
        raise ValueError(f"model.init_from={source}: no tensor matched; skipped {report.skipped[:5]}, "
                         f"mismatched {report.mismatched[:5]}")
    net.load_state_dict(own)
    log.info("init_from %s: loaded %d tensors (%s)", source, len(report.loaded), ", ".join(report.loaded))
    if report.skipped:
        log.info("  skipped %d: %s", len(report.skipped), ", ".join(report.skipped))
    if report.mismatched:
        log.warning("  shape mismatch, not loaded: %s", ", ".join(report.mismatched))
    return report
