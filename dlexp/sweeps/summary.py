"""Sweep summaries: one row per run (overrides, status, monitored metric, test metrics, epochs, wall time), best first.

`SummaryCallback` is a Hydra callback (conf/hydra/default.yaml): after every job and at the end of a multirun it
writes summary.csv and summary.md into the sweep directory, reading each job's own files, so it works the same
whatever launcher ran the jobs (in this process, joblib workers, submitit/SLURM). Under hydra/launcher=parallel the
launcher writes it after each job instead of its workers: one writer, never a stale table.
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode

from dlexp.engine.ranks import launcher_rank
from dlexp.engine.rundir import RunDir, is_run_dir
from dlexp.io import atomic_write_text
from dlexp.sweeps.worker import WORKER_ENV

FIXED = ["job", "overrides", "status", "monitor", "best"]
TAIL = ["epochs", "wall_s"]


def read_run(run_dir: Path) -> dict[str, Any]:
    """One row of the table from a run directory's overrides.yaml, config.yaml and metrics.json."""
    run = RunDir(run_dir)
    config = run.config() if is_run_dir(run_dir) else {}
    metrics, overrides = run.metrics(), run.overrides()
    monitor = config.get("monitor")
    best = metrics.get(f"{monitor}_best", metrics.get(monitor)) if monitor else None
    row: dict[str, Any] = {
        "job": run_dir.name, "overrides": " ".join(overrides), "status": metrics.get("status", "unfinished"),
        "monitor": monitor or "", "best": best, "mode": config.get("monitor_mode", "max"),
    }
    row.update({k: v for k, v in metrics.items() if k.startswith("test/")})
    row.update(epochs=metrics.get("epochs"), wall_s=metrics.get("wall_s"), run_dir=str(run_dir))
    return row


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The numbered job directories of a sweep, in job order."""
    return sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def rank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best first by each run's monitored metric and mode; runs without a value (failed, unfinished) last."""
    def key(row: dict[str, Any]) -> tuple[int, float]:
        best = row["best"]
        if not isinstance(best, (int, float)) or not math.isfinite(best):
            return 1, 0.0
        return 0, -best if row["mode"] == "max" else best

    return sorted(rows, key=key)  # stable: ties and valueless rows keep job order


def columns(rows: list[dict[str, Any]]) -> list[str]:
    tests = sorted({k for row in rows for k in row if k.startswith("test/")})
    return FIXED + tests + TAIL


def _cell(value: Any, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.1f}" if column == "wall_s" else f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def common_overrides(rows: list[dict[str, Any]]) -> list[str]:
    """Overrides every run shares (the table shows only what differs)."""
    sets = [row["overrides"].split() for row in rows]
    return [o for o in sets[0] if all(o in s for s in sets[1:])] if len(sets) > 1 else []


def label(row: dict[str, Any], common: list[str]) -> str:
    """A run's overrides minus the shared ones: what distinguishes it in a table or a plot legend."""
    return " ".join(o for o in row["overrides"].split() if o not in common) or "(defaults)"


def to_markdown(rows: list[dict[str, Any]]) -> str:
    cols = columns(rows)
    common = common_overrides(rows)
    lines = [f"all runs: {' '.join(common)}", ""] if common else []
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = [label(row, common) if c == "overrides" else _cell(row.get(c), c) for c in cols]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    spread = spread_line(rows)
    return "\n".join(lines + ([f"", spread] if spread else [])) + "\n"


def spread_line(rows: list[dict[str, Any]]) -> str:
    """Mean and sample std of the monitored metric over the completed runs (K folds, seeds): '' for fewer than 2."""
    values = [row["best"] for row in rows if row["status"] == "completed" and isinstance(row["best"], (int, float))
              and math.isfinite(row["best"])]
    monitors = {row["monitor"] for row in rows if row["monitor"]}
    if len(values) < 2 or len(monitors) != 1:
        return ""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{monitors.pop()} (best of each run): mean {mean:.4f}, std {std:.4f} over {len(values)} completed runs"


def to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns(rows), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    """(Re)write summary.csv and summary.md of a sweep from its job directories; returns the ranked rows."""
    rows = rank([read_run(d) for d in job_dirs(sweep_dir)])
    atomic_write_text(sweep_dir / "summary.csv", to_csv(rows))
    atomic_write_text(sweep_dir / "summary.md", to_markdown(rows))
    return rows


class SummaryCallback(Callback):
    """Keeps summary.csv/.md of a sweep current after each job (in the job's process: a stopped sweep keeps its
    table); at the end of the sweep prints the table."""

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        if WORKER_ENV in os.environ:  # a worker of hydra/launcher=parallel: the launcher writes the table
            return
        hydra = HydraConfig.get()
        if hydra.mode == RunMode.MULTIRUN and launcher_rank() == 0:  # (torchrun/srun: rank 0 writes)
            sweep_dir = Path(hydra.sweep.dir)
            if sweep_dir.is_dir():
                write_summary(sweep_dir)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir() or launcher_rank() > 0:  # other ranks of torchrun/srun hold no run files
            return
        print(f"\nsweep summary ({sweep_dir / 'summary.md'}):\n{to_markdown(write_summary(sweep_dir))}", flush=True)
