"""A finished (or running) run brought back from its directory: its net with the best weights, its data."""
from __future__ import annotations

from typing import Any

import torch

from dlexp.engine.checkpoint import load_checkpoint
from dlexp.engine.instantiate import make, net_from_config
from dlexp.engine.rundir import RunDir


def state_dict(run: RunDir) -> dict[str, torch.Tensor]:
    """The task's tensors of the best checkpoint (else last): keys net.*, generator_ema.*, ..."""
    return load_checkpoint(run.best_checkpoint())["state_dict"]


def restore_net(run: RunDir, ema: bool = False) -> torch.nn.Module:
    """The run's net with its best (else last) weights, in eval mode; ema=True: a GAN's generator from its EMA
    copy when the run kept one."""
    net = net_from_config(run.config()["model"])
    state = state_dict(run)
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    averaged = {k.removeprefix("generator_ema."): v for k, v in state.items() if k.startswith("generator_ema.")}
    if ema and averaged:
        net.generator.load_state_dict(averaged)
    return net.eval()


def load_datamodule(run: RunDir) -> Any:
    """The run's datamodule with its data loaded (same split seed, same normalisation)."""
    config = run.config()
    datamodule = make("dataset", config["dataset"], seed=config["seed"])
    datamodule.load()
    return datamodule
