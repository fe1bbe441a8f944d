"""Config nodes -> objects with Hydra's `_target_`; a failure is one line naming the config key."""
from __future__ import annotations

from typing import Any

from hydra.utils import instantiate

from dlexp.errors import ConfigError

INIT_KEYS = ("init_from", "init_include", "init_exclude")  # model keys read by the engine (transfer), not the net


def make(key: str, node: Any, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, with a failure reported as one line naming the config key."""
    try:
        return instantiate(node, **kwargs)
    except Exception as e:
        cause = e.__cause__ or e
        lines = str(cause).strip().splitlines()
        raise ConfigError(f"{key}: {type(cause).__name__}: {lines[0] if lines else ''}") from None


def net_from_config(model: dict[str, Any]) -> Any:
    """The net of a resolved model config (the transfer-learning keys are not the net's)."""
    return make("model", {k: v for k, v in model.items() if k not in INIT_KEYS})
