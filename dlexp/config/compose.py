"""Finding and composing configs (conf/ inside the installed package), before anything heavy is imported."""
from __future__ import annotations

import difflib
import functools
import importlib.util
import secrets
import time
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from dlexp.errors import ConfigError


def conf_dir() -> Path:
    """The config tree: the installed dlexp.conf package, else the source checkout's conf/."""
    spec = importlib.util.find_spec("dlexp.conf")
    if spec and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            if (Path(location) / "train.yaml").is_file():
                return Path(location)
    return Path(__file__).resolve().parents[2] / "conf"


def groups() -> dict[str, list[str]]:
    """Every config group (folder of conf/) and its choices, e.g. {'model': ['convnet', ...]}."""
    root = conf_dir()
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(("_", "."))
    }


@functools.lru_cache(maxsize=None)
def run_id() -> str:
    """<YYYY-MM-DD_HH-MM-SS>_<6 hex>: one per process, so a run directory is never shared by two runs."""
    return f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{secrets.token_hex(3)}"


def scaled(cpu: Any, full: Any, *, _root_: DictConfig) -> Any:
    """`${scaled:CPU,FULL}` in an experiment preset: its CPU-friendly value, or the notes' full budget under
    +scale=full (conf/scale/full.yaml)."""
    return full if _root_.get("scale") == "full" else cpu


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("scaled"):
        OmegaConf.register_new_resolver("scaled", scaled)
    if not OmegaConf.has_resolver("dlexp_run_id"):
        # cached in the config: launchers that run jobs in other processes (joblib, submitit) resolve the sweep
        # directory there from a copy of the launching config, and must find the same id
        OmegaConf.register_new_resolver("dlexp_run_id", run_id, use_cache=True)


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def compose(overrides: list[str], config_name: str = "train", return_hydra_config: bool = False) -> DictConfig:
    """Compose the config as `dlexp train` would, with Hydra's compose API."""
    # deferred: `dlexp list` and `--help` read conf/ without importing Hydra
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.errors import HydraException

    register_resolvers()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=return_hydra_config)
    except HydraException as e:
        raise ConfigError(first_line(str(e))) from None


def first_line(message: str) -> str:
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return "; ".join(lines[:2]) if lines else message


def default_choices() -> dict[str, str | None]:
    """Each group's default choice, as conf/train.yaml's defaults list names it (None: no default)."""
    choices = {}
    for entry in yaml.safe_load((conf_dir() / "train.yaml").read_text())["defaults"]:
        if isinstance(entry, dict):
            choices.update(entry)
    return choices
