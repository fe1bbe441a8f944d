"""The run directory (docs/contracts.md, C2): the one place that knows its file names and reads and writes them.
Light (no torch): sweep summaries and `dlexp train`'s checks read run directories before torch loads; restoring a
run's net and data is dlexp/engine/restore.py."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra._internal.utils import _locate
from omegaconf import OmegaConf

from dlexp.errors import ConfigError
from dlexp.io import atomic_write_json, atomic_write_text

CONFIG, OVERRIDES, METRICS, LOG = "config.yaml", "overrides.yaml", "metrics.json", "train.log"
CHECKPOINTS, TENSORBOARD, SAMPLES, EVAL = "checkpoints", "tb", "samples", "eval"


def is_run_dir(path: Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def is_sweep_dir(path: Path) -> bool:
    """A sweep's directory: Hydra's multirun.yaml, or numbered job directories that are run directories."""
    path = Path(path)
    return (path / "multirun.yaml").is_file() or path.is_dir() and any(
        p.name.isdigit() and is_run_dir(p) for p in path.iterdir())


def checkpoint_file(source: str | Path) -> Path:
    """A checkpoint file, or a run directory's checkpoints/best.ckpt (else last.ckpt)."""
    path = Path(source).expanduser()
    if path.is_dir():
        for name in ("best.ckpt", "last.ckpt"):
            if (path / CHECKPOINTS / name).is_file():
                return path / CHECKPOINTS / name
        raise ConfigError(f"no {CHECKPOINTS}/best.ckpt or {CHECKPOINTS}/last.ckpt in run directory {path}")
    if not path.is_file():
        raise ConfigError(f"no checkpoint file or run directory at {path}")
    return path


@dataclass(frozen=True)
class RunDir:
    """One run directory: its files by name, read and written (atomically) only here."""

    path: Path

    @classmethod
    def existing(cls, path: str | Path) -> RunDir:
        """A run directory that must exist (a ConfigError naming it otherwise)."""
        if not is_run_dir(Path(path)):
            raise ConfigError(f"{path} is not a dlexp run directory (no {CONFIG})")
        return cls(Path(path).resolve())

    @property
    def last_checkpoint(self) -> Path:
        return self.path / CHECKPOINTS / "last.ckpt"

    @property
    def best_ckpt(self) -> Path:
        return self.path / CHECKPOINTS / "best.ckpt"

    @property
    def samples(self) -> Path:
        return self.path / SAMPLES

    @property
    def eval(self) -> Path:
        return self.path / EVAL

    def best_checkpoint(self) -> Path:
        return checkpoint_file(self.path)

    def config(self) -> dict[str, Any]:
        return yaml.safe_load((self.path / CONFIG).read_text())

    def config_text(self) -> str:
        return (self.path / CONFIG).read_text()

    def overrides(self) -> list[str]:
        path = self.path / OVERRIDES
        return (yaml.safe_load(path.read_text()) or []) if path.is_file() else []

    def metrics(self) -> dict[str, Any]:
        """metrics.json, or {} before the run wrote one (a half-written file cannot exist: writes are atomic)."""
        path = self.path / METRICS
        return json.loads(path.read_text()) if path.is_file() else {}

    def status(self) -> str | None:
        return self.metrics().get("status")

    def write_config(self, config: dict[str, Any], choices: dict[str, Any]) -> None:
        atomic_write_text(self.path / CONFIG, OmegaConf.to_yaml({**config, "choices": choices}))

    def write_overrides(self, overrides: list[str]) -> None:
        atomic_write_text(self.path / OVERRIDES, OmegaConf.to_yaml(list(overrides)))

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        """Strict JSON, keys sorted: a non-finite value (a skipped NaN batch's epoch mean) is written as null."""
        clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in metrics.items()}
        atomic_write_json(self.path / METRICS, dict(sorted(clean.items())))

    def update_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Merge keys into metrics.json (dlexp eval's eval/...); returns the merged dict."""
        merged = {**self.metrics(), **metrics}
        self.write_metrics(merged)
        return merged

    def remove_orphans(self) -> None:
        """Temp files a kill left mid-write: their targets still hold the previous, complete file."""
        for orphan in [*self.path.glob(".*.tmp"), *(self.path / CHECKPOINTS).glob(".*.tmp")]:
            orphan.unlink()

    def task_class(self) -> type | None:
        """The class of the run's task (what it declares it can do: eval, sampling), None if it cannot be found."""
        return self._class("task")

    def net_class(self) -> type | None:
        """The class of the run's net (a GAN or VAE has sample()), None if it cannot be found."""
        return self._class("model")

    def _class(self, section: str) -> type | None:
        try:
            return _locate(str(self.config().get(section, {}).get("_target_", "")))
        except Exception:
            return None
