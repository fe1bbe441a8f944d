"""The option grammar every subcommand shares: paths, then `key=value` options (also `COMMAND.key=value`) checked
against the command's defaults in conf/<command>.yaml: unknown keys get a "did you mean", values their type."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from dlexp.config.compose import conf_dir, did_you_mean, register_resolvers
from dlexp.config.types import check_type
from dlexp.errors import ConfigError


def defaults(command: str) -> DictConfig:
    """conf/<command>.yaml: the command's options and their defaults."""
    register_resolvers()
    return OmegaConf.load(conf_dir() / f"{command}.yaml")


def parse(command: str, args: list[str]) -> tuple[list[str], DictConfig]:
    """(positional arguments, options); a ConfigError names an unknown key or a value of the wrong type."""
    positional, opts = [], defaults(command)
    for arg in args:
        key, sep, text = arg.partition("=")
        if not sep:
            positional.append(arg)
            continue
        key = key.removeprefix(f"{command}.")
        if key not in opts:
            raise ConfigError(f"unknown {command} option '{key}'{did_you_mean(key, list(opts))}; options: "
                              f"{', '.join(f'{k}=' for k in opts)}")
        value = _value(text)
        check_type(f"{command} option {key}", OmegaConf.select(opts, key, throw_on_resolution_failure=False), value)
        opts[key] = value
    return positional, opts


def one_run_dir(command: str, positional: list[str], usage: str) -> Path:
    """The single RUN_DIR a command takes."""
    if len(positional) != 1:
        raise ConfigError(f"{'missing RUN_DIR' if not positional else 'one RUN_DIR only'}; {usage.splitlines()[0]}")
    return Path(positional[0])


def _value(text: str) -> Any:
    """A value as YAML reads it (64 -> int, true -> bool, null -> None), else the text itself."""
    try:
        return yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return text
