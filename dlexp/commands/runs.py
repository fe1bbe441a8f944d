"""`dlexp runs [DIR] [key=value ...] [--json]`: every run and sweep job under outputs/ (or DIR), newest first: what it
ran, how it ended, its best and test values. A damaged run directory is a row marked `unreadable`, never a crash.

Fast and light: it reads each run's metrics.json, overrides.yaml and three top-level entries of config.yaml (monitor,
monitor_mode, choices: the files name neither the monitor nor a preset's model elsewhere), through
dlexp/engine/rundir.py, and imports no torch, Lightning or Hydra (benchmarks/runs_listing.py: 1000 runs).
"""
from __future__ import annotations

import json
import os
import shlex
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from dlexp.commands import options, usage
from dlexp.config.compose import conf_dir, did_you_mean, groups
from dlexp.engine.rundir import (
    CONFIG,
    METRICS,
    OVERRIDES,
    RunDir,
    find_run_dirs,
    is_run_dir,
)
from dlexp.errors import ConfigError

# completed | interrupted | failed: as metrics.json says (docs/contracts.md, C3); unfinished: no metrics.json yet (the
# run is going on, or was killed before it could write one); unreadable: a file there cannot be read
STATUSES = ("completed", "interrupted", "failed", "unfinished", "unreadable")
COLUMNS = ("name", "experiment", "model", "dataset", "status", "best", "test", "epochs", "wall", "age")
FILTERS = {"status": "statuses", "model": "models", "dataset": "datasets", "experiment": "experiments"}
LOWER_IS_BETTER = ("loss", "mae", "mse", "bpc", "fid", "kid", "error")  # in a metric's name: smaller values first
FLAGS = ("--json",)


def parse(args: list[str]) -> tuple[Path, DictConfig, bool]:
    """(the folder to list, the checked options, --json)."""
    flags = [a for a in args if a.startswith("-")]
    unknown = [f for f in flags if f not in FLAGS]
    if unknown:
        raise ConfigError(f"unknown flag '{unknown[0]}'{did_you_mean(unknown[0], list(FLAGS))}; "
                          f"{usage.RUNS.splitlines()[0]}")
    positional, opts = options.parse("runs", [a for a in args if a not in flags])
    if len(positional) > 1:
        raise ConfigError(f"one DIR at most, got {len(positional)}; {usage.RUNS.splitlines()[0]}")
    root = Path(positional[0]) if positional else default_root()
    if not root.is_dir():
        where = "" if positional else " here (`dlexp train` writes its runs there: paths.output_dir); give DIR"
        raise ConfigError(f"{'not a directory' if root.exists() else 'no directory'}: {root}{where}")
    if opts.sort not in COLUMNS:
        raise ConfigError(f"runs option sort: no column '{opts.sort}'{did_you_mean(str(opts.sort), list(COLUMNS))}; "
                          f"columns: {', '.join(COLUMNS)}")
    return root, opts, "--json" in flags


def default_root() -> Path:
    """paths.output_dir of conf/paths/default.yaml (outputs/): where `dlexp train` writes runs unless told otherwise."""
    return Path(str(OmegaConf.load(conf_dir() / "paths" / "default.yaml").output_dir))


def _read(read: Callable[[], Any], name: str, kind: type, problems: list[str]) -> Any:
    """What read() returns, else an empty `kind` with the reason added to problems."""
    try:
        value = read()
    except json.JSONDecodeError as e:
        problems.append(f"{name}: " + ("empty file" if not e.doc.strip() else f"not JSON ({e.msg}, line {e.lineno})"))
    except UnicodeDecodeError:
        problems.append(f"{name}: not text (binary data)")
    except yaml.YAMLError as e:
        problems.append(f"{name}: not YAML ({str(e).splitlines()[0]})")
    except OSError as e:
        problems.append(f"{name}: {e.strerror or e}")
    else:
        if isinstance(value, kind):
            return value
        problems.append(f"{name}: not a {'JSON object' if kind is dict else 'YAML list'}")
    return kind()


def read_row(path: Path, now: float) -> dict[str, Any]:
    """One run's row from its files; a file that cannot be read makes it `unreadable` with the reason."""
    run, problems = RunDir(path), []
    metrics = _read(run.metrics, METRICS, dict, problems)
    config = _read(lambda: run.config_entries("monitor", "monitor_mode", "choices"), CONFIG, dict, problems)
    overrides = _read(run.overrides, OVERRIDES, list, problems)
    choices = config["choices"] if isinstance(config.get("choices"), dict) else choices_from(overrides)
    if problems:
        status = "unreadable"
    elif metrics:
        status = str(metrics.get("status") or "unfinished")
    elif is_run_dir(path):
        status = "unfinished"
    else:
        status, problems = "unreadable", [f"no {METRICS} or {CONFIG} (killed, or still starting, before it wrote them)"]
    monitor, test_metric = config.get("monitor"), main_test_metric(metrics, config.get("monitor"))
    try:
        started: float | None = run.started()
    except OSError:
        started = None
    absolute = os.path.abspath(path)
    return {
        "name": f"{path.parent.name}/{path.name}" if path.name.isdigit() else path.name,  # a sweep's job: sweep/job
        "path": absolute, "experiment": choices.get("experiment"), "model": choices.get("model"),
        "dataset": choices.get("dataset"), "status": status, "monitor": monitor,
        "monitor_mode": config.get("monitor_mode"), "best": metrics.get(f"{monitor}_best", metrics.get(monitor)) if
        monitor else None, "test_metric": test_metric, "test": metrics.get(test_metric) if test_metric else None,
        "epochs": metrics.get("epochs"), "wall_s": metrics.get("wall_s"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)) if started else None,
        "age_s": round(now - started, 1) if started else None,
        "resume": f"dlexp resume {shlex.quote(absolute)}" if status == "interrupted" else None,
        "error": metrics.get("error") if status == "failed" else None,
        "reason": "; ".join(problems) or None, "overrides": overrides,
    }


def choices_from(overrides: list[Any]) -> dict[str, str]:
    """experiment/model/dataset as the command line chose them: a run with no config.yaml (a sweep job that failed
    before it was built) has only overrides.yaml."""
    found = {}
    for override in map(str, overrides):
        key, sep, value = override.lstrip("+").partition("=")
        if sep and key in ("experiment", "model", "dataset"):
            found[key] = value
    return found


def main_test_metric(metrics: dict[str, Any], monitor: str | None) -> str | None:
    """test/ of the monitored metric (val/acc -> test/acc), else test/acc, test/mae, test/bpc, another test/ key,
    else eval/fid (a GAN has no test metric of its own, `dlexp eval` adds one)."""
    tests = sorted(k for k in metrics if k.startswith("test/"))
    preferred = [f"test/{monitor.partition('/')[2]}"] if monitor else []
    for key in [*preferred, "test/acc", "test/mae", "test/bpc", *[k for k in tests if "loss" not in k], *tests,
                "eval/fid"]:
        if _number(metrics.get(key)) is not None:
            return key
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def selection(opts: DictConfig) -> dict[str, set[str]]:
    """The filters given (status=, model=, ...), each a set of the values it lets through (a,b: either)."""
    chosen = {}
    for key in FILTERS:
        value = opts[key]
        if value is not None:
            values = value if isinstance(value, (list, tuple)) or OmegaConf.is_list(value) else str(value).split(",")
            chosen[key] = {str(v).strip() for v in values if str(v).strip()}
    return chosen


def check_selection(chosen: dict[str, set[str]], rows: list[dict[str, Any]]) -> None:
    """A value no run has and no config names is a typo: refused with a "did you mean" and the valid ones."""
    known = {"status": set(STATUSES)}
    if set(chosen) - {"status"}:
        known.update({key: set(choices) for key, choices in groups().items() if key in FILTERS})
    for key, values in chosen.items():
        valid = sorted(known.get(key, set()) | {str(row[key]) for row in rows if row[key] is not None})
        for value in sorted(values - set(valid)):
            raise ConfigError(f"runs option {key}: no {key} '{value}'{did_you_mean(value, valid)}; "
                              f"{FILTERS[key]}: {', '.join(valid)}")


def sort_rows(rows: list[dict[str, Any]], column: str, reverse: bool) -> list[dict[str, Any]]:
    """Newest first, then by `column` in its natural order (best first, most first); runs without a value last."""
    rows = sorted(rows, key=lambda r: (r["age_s"] is None, r["age_s"] or 0.0))
    value = sort_value(column)
    present = sorted((r for r in rows if value(r) is not None), key=value, reverse=reverse)
    return present + [r for r in rows if value(r) is None]


def sort_value(column: str) -> Callable[[dict[str, Any]], Any]:
    """row -> what `column` sorts by, ascending being its natural order; None for a run without a value."""
    if column == "age":
        return lambda r: r["age_s"]
    if column == "best":
        return lambda r: None if _number(r["best"]) is None else (
            -_number(r["best"]) if r["monitor_mode"] != "min" else _number(r["best"]))
    if column == "test":
        return lambda r: None if _number(r["test"]) is None else (
            _number(r["test"]) if any(w in r["test_metric"] for w in LOWER_IS_BETTER) else -_number(r["test"]))
    if column in ("epochs", "wall"):
        key = "wall_s" if column == "wall" else "epochs"
        return lambda r: None if _number(r[key]) is None else -_number(r[key])
    return lambda r: None if r[column] is None else str(r[column])


def main(args: list[str]) -> int:
    root, opts, as_json = parse(args)
    now = time.time()
    rows = [read_row(path, now) for path in find_run_dirs(root)]
    chosen = selection(opts)
    check_selection(chosen, rows)
    shown = sort_rows([r for r in rows if all(str(r[k]) in v for k, v in chosen.items())], opts.sort,
                      bool(opts.reverse))
    print(json.dumps(shown, indent=2) if as_json else render(shown, len(rows), root))
    return 0


def render(rows: list[dict[str, Any]], total: int, root: Path) -> str:
    """The table, a count by status, the resume command of each interrupted run and why each unreadable one is."""
    if not rows:
        return f"no runs under {root}" if not total else f"none of the {total} runs under {root} match"
    cells = [list(COLUMNS)] + [row_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]
    counts = Counter(r["status"] for r in rows)
    shown = f"{len(rows)} of {total} runs" if len(rows) < total else f"{total} run{'s' if total > 1 else ''}"
    lines += ["", f"{shown} under {root}: " + ", ".join(f"{n} {s}" for s, n in counts.items())]
    interrupted = [r for r in rows if r["resume"]]
    if interrupted:
        lines += ["interrupted, continue with:"] + [f"  {r['resume']}" for r in interrupted]
    unreadable = [r for r in rows if r["status"] == "unreadable"]
    if unreadable:
        lines += ["unreadable:"] + [f"  {r['name']}: {r['reason']}" for r in unreadable]
    return "\n".join(lines)


def row_cells(row: dict[str, Any]) -> list[str]:
    def metric(name: str | None, value: Any) -> str:
        return "" if value is None else f"{name} {_format(value)}"

    return [row["name"], str(row["experiment"] or "-"), str(row["model"] or "-"), str(row["dataset"] or "-"),
            row["status"], metric(row["monitor"], row["best"]), metric(row["test_metric"], row["test"]),
            "" if row["epochs"] is None else str(row["epochs"]), duration(row["wall_s"]), age(row["age_s"])]


def _format(value: Any) -> str:
    number = _number(value)
    return str(value) if number is None else f"{number:.4f}" if abs(number) < 1e4 else f"{number:.4g}"


def duration(seconds: Any) -> str:
    """Wall time: 1.2s, 45s, 3m05s, 2h03m."""
    s = _number(seconds)
    if s is None:
        return ""
    if s < 60:
        return f"{s:.1f}s" if s < 10 else f"{s:.0f}s"
    minutes, s = divmod(int(s), 60)
    return f"{minutes}m{s:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def age(seconds: float | None) -> str:
    """Since the run started, coarse: 40s, 5m, 3h, 2d."""
    if seconds is None:
        return ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= (2 * size if unit == "d" else size):
            return f"{int(seconds // size)}{unit}"
    return f"{max(0, int(seconds))}s"
