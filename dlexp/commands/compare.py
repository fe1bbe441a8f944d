"""`dlexp compare SWEEP_DIR | RUN_DIR...`: the runs' table (best first) and one PNG of their curves and last samples."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dlexp.commands import options, usage
from dlexp.engine.rundir import TENSORBOARD, RunDir, is_run_dir, is_sweep_dir
from dlexp.errors import ConfigError
from dlexp.plots import pyplot
from dlexp.sweeps.summary import common_overrides, label, rank, read_run, to_markdown, write_summary

def parse(args: list[str]) -> tuple[list[Path], Any]:
    """The run and sweep directories to compare, and the checked options (conf/compare.yaml)."""
    positional, opts = options.parse("compare", args)
    if not positional:
        raise ConfigError(f"nothing to compare; {usage.COMPARE.splitlines()[0]}")
    for path in map(Path, positional):
        if not is_run_dir(path) and not is_sweep_dir(path):
            raise ConfigError(f"{path} is neither a dlexp run directory (config.yaml) nor a sweep directory (0/, 1/, ...)")
    return [Path(p) for p in positional], opts


def collect(paths: list[Path]) -> list[dict[str, Any]]:
    """Rows of every run; a sweep directory's summary files are refreshed on the way."""
    rows: list[dict[str, Any]] = []
    for path in paths:
        rows += [read_run(path)] if is_run_dir(path) else write_summary(path)
    return rank(rows)


def read_curve(run_dir: Path, metric: str) -> list[tuple[int, float]]:
    """(step, value) points of one scalar from the run's TensorBoard events, else its csv/metrics.csv."""
    tb = run_dir / TENSORBOARD
    if tb.is_dir():
        events = EventAccumulator(str(tb), size_guidance={"scalars": 0})
        events.Reload()
        if metric in events.Tags()["scalars"]:
            return [(e.step, e.value) for e in events.Scalars(metric)]
    table = run_dir / "csv" / "metrics.csv"
    if table.is_file():
        with table.open() as f:
            return [(int(r["step"]), float(r[metric])) for r in csv.DictReader(f) if r.get(metric)]
    return []


def last_samples(run_dir: Path) -> Path | None:
    """The newest sample grid of a generative run (a VAE's prior draws rather than its reconstructions)."""
    samples = RunDir(run_dir).samples
    grids = sorted(samples.glob("prior_epoch_*.png")) or sorted(samples.glob("epoch_*.png"))
    return grids[-1] if grids else None


def plot(rows: list[dict[str, Any]], metric: str | None, out: Path) -> list[str]:
    """Write the PNG: one line per run (labelled by its distinguishing overrides), then last sample grids."""
    plt = pyplot("dlexp compare")
    common = common_overrides(rows)
    runs = [(label(r, common), Path(r["run_dir"]), metric or r["monitor"] or "train/loss_epoch") for r in rows]
    curves = [(name, m, read_curve(d, m)) for name, d, m in runs]
    grids = [(name, last_samples(d)) for name, d, _ in runs]
    grids = [(name, g) for name, g in grids if g is not None]
    notes = [f"no '{m}' curve in {name}" for name, m, points in curves if not points]
    columns = max(len(grids), 1)
    fig = plt.figure(figsize=(max(8, 3 * columns), 5 + (3.2 if grids else 0)))
    grid_spec = fig.add_gridspec(2 if grids else 1, columns, height_ratios=[5, 3.2] if grids else [1])
    ax = fig.add_subplot(grid_spec[0, :])
    for name, m, points in curves:
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, label=name)
    names = sorted({m for _, m, _ in curves})
    ax.set(xlabel="training step", ylabel=", ".join(names), title=" ".join(common) or "runs")
    ax.grid(alpha=0.3)
    if any(points for _, _, points in curves):
        ax.legend(fontsize=8)
    for i, (name, path) in enumerate(grids):
        image_ax = fig.add_subplot(grid_spec[1, i])
        image_ax.imshow(plt.imread(path), cmap="gray")
        image_ax.set_title(name, fontsize=8)
        image_ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial.png")
    fig.savefig(partial, dpi=100)
    plt.close(fig)
    partial.replace(out)
    return notes


def main(args: list[str]) -> int:
    paths, opts = parse(args)
    rows = collect(paths)
    print(to_markdown(rows))
    single_sweep = len(paths) == 1 and not is_run_dir(paths[0])
    out = Path(opts.out or (paths[0] / "compare.png" if single_sweep else "compare.png"))
    for note in plot(rows, opts.metric, out):
        print(f"note: {note}")
    print(f"plot: {out}")
    return 0
