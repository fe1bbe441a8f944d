"""The run directory (docs/contracts.md, C2): the one place that knows its file names and reads and writes them.
Light (no torch, no Hydra): sweep summaries, `dlexp train`'s checks and `dlexp runs` read run directories before
torch loads, or without it; restoring a run's net and data is dlexp/engine/restore.py."""
from __future__ import annotations

import itertools
import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from dlexp.errors import ConfigError
from dlexp.io import atomic_write_json, atomic_write_text

CONFIG, OVERRIDES, METRICS, LOG = "config.yaml", "overrides.yaml", "metrics.json", "train.log"
CHECKPOINTS, TENSORBOARD, SAMPLES, EVAL = "checkpoints", "tb", "samples", "eval"
# the ids of a run in outside trackers (MLflow, W&B), so `dlexp resume` continues the same tracked run
TRACKERS = "trackers.json"
# any of these marks a run directory, an unfinished (no metrics.json yet) or damaged one included
RUN_FILES = (CONFIG, METRICS, OVERRIDES, LOG)
FAST_YAML = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's safe loader where PyYAML has it: ~3x faster
# an unindented `key:` line of a block-style YAML mapping
TOP_LEVEL_KEY = re.compile(r"^([^\s#-][^:\n]*):", re.MULTILINE)


def is_run_dir(path: Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def is_sweep_dir(path: Path) -> bool:
    """A sweep's directory: Hydra's multirun.yaml, or numbered job directories that are run directories."""
    path = Path(path)
    return (path / "multirun.yaml").is_file() or path.is_dir() and any(
        p.name.isdigit() and is_run_dir(p) for p in path.iterdir())


def looks_like_run_dir(path: Path) -> bool:
    """Any file a run writes is there: a run directory, perhaps unfinished or damaged (is_run_dir wants config.yaml)."""
    return any((Path(path) / name).is_file() for name in RUN_FILES)


def find_run_dirs(root: Path, depth: int = 4) -> list[Path]:
    """Run directories at or under root, in name order, never looked inside: an outputs/ folder gives runs/<id>/ and
    multirun/<id>/<job>/ (a sweep directory's own files mark no run). Hidden and unlistable folders are skipped."""
    root = Path(root)
    if looks_like_run_dir(root):
        return [root]
    if depth == 0:
        return []
    try:
        with os.scandir(root) as entries:
            children = sorted(Path(e.path) for e in entries if not e.name.startswith(".") and e.is_dir())
    except OSError:
        return []
    return [run for child in children for run in find_run_dirs(child, depth - 1)]


def top_level_entries(text: str, keys: Iterable[str]) -> dict[str, Any]:
    """The entries of a block-style YAML mapping (OmegaConf.to_yaml's) under the given top-level keys, parsed alone.

    An entry runs from its key's unindented line to the next one (indented lines, `- ` items and comments belong to
    it). A whole config.yaml takes ~1.5 ms to parse, a listing of a thousand runs needs three of its keys. Text that
    does not split cleanly is parsed whole; a yaml.YAMLError says it is not YAML at all.
    """
    wanted = set(keys)
    starts = [(m.start(), m.group(1).strip("'\"")) for m in TOP_LEVEL_KEY.finditer(text)] + [(len(text), "")]
    kept = "".join(text[start:end] for (start, key), (end, _) in itertools.pairwise(starts) if key in wanted)
    try:
        entries = yaml.load(kept, Loader=FAST_YAML)
    except yaml.YAMLError:
        entries = yaml.load(text, Loader=FAST_YAML)
    return {k: v for k, v in entries.items() if k in wanted} if isinstance(entries, dict) else {}


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

    def config_entries(self, *keys: str) -> dict[str, Any]:
        """Some top-level entries of config.yaml (`monitor`, `choices`), {} before the run wrote one."""
        path = self.path / CONFIG
        return top_level_entries(path.read_text(), keys) if path.is_file() else {}

    def started(self) -> float:
        """When the run began (a time.time()): config.yaml is written once, at its start (else the first file there)."""
        for name in (CONFIG, LOG, OVERRIDES, METRICS):
            try:
                return (self.path / name).stat().st_mtime
            except OSError:
                continue
        return self.path.stat().st_mtime

    def overrides(self) -> list[str]:
        path = self.path / OVERRIDES
        return (yaml.load(path.read_text(), Loader=FAST_YAML) or []) if path.is_file() else []

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

    def tracking_name(self) -> tuple[str, str | None]:
        """(run name, sweep name) for experiment trackers: the directory's name, `<sweep>/<job>` for a sweep's job."""
        parent = self.path.parent
        if self.path.name.isdigit() and is_sweep_dir(parent):
            return f"{parent.name}/{self.path.name}", parent.name
        return self.path.name, None

    def tracker_ids(self, tracker: str) -> dict[str, Any]:
        """What trackers.json keeps for one tracker (its run id, where it lives), {} for a run it never saw."""
        path = self.path / TRACKERS
        return dict(json.loads(path.read_text()).get(tracker, {})) if path.is_file() else {}

    def write_tracker_ids(self, tracker: str, ids: dict[str, Any]) -> None:
        path = self.path / TRACKERS
        known = json.loads(path.read_text()) if path.is_file() else {}
        atomic_write_json(path, {**known, tracker: ids})

    def tracked_files(self) -> list[Path]:
        """The files a tracker keeps as artifacts: config.yaml, metrics.json, the sample grids and eval PNGs."""
        files = [self.path / name for name in (CONFIG, METRICS)]
        pngs = [p for folder in (self.samples, self.eval) for p in sorted(folder.rglob("*.png"))]
        return [p for p in files if p.is_file()] + pngs

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
        # deferred: Hydra is heavy, and listing runs (dlexp runs) never needs it
        from hydra._internal.utils import _locate

        try:
            return _locate(str(self.config().get(section, {}).get("_target_", "")))
        except Exception:
            return None
