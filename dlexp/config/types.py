"""Value types of config keys and command options, checked without Hydra (light: every command may import it)."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig

from dlexp.errors import ConfigError

TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", list: "a list", dict: "a mapping"}


def check_type(key: str, default: Any, value: Any) -> None:
    """The new value must fit the type of the default (ints pass for floats; null passes for anything)."""
    if default is None or value is None or isinstance(default, str):
        return
    if isinstance(default, (ListConfig, list)):
        expected = list
    elif isinstance(default, (DictConfig, dict)):
        expected = dict
    else:
        expected = type(default)
    ok = (
        isinstance(value, bool) if expected is bool
        else isinstance(value, int) and not isinstance(value, bool) if expected is int
        else isinstance(value, (int, float)) and not isinstance(value, bool) if expected is float
        else isinstance(value, expected)
    )
    if not ok:
        raise ConfigError(f"{key} expects {TYPE_NAMES.get(expected, expected.__name__)}, got {value!r}")
