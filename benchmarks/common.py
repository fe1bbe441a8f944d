"""Shared by the benchmark drivers: run a command and time it, interleave two sides, medians, the results table.

Standard library only, so a driver's own start-up stays out of what it measures.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent


def fashion_available() -> bool:
    """Whether `dlexp train dataset=fashion_mnist`, run in an empty folder, finds the files without downloading."""
    from dlexp.data.sources import SYSTEM_DIRS, IdxDataset

    data_dir = os.environ.get("DLEXP_DATA_DIR")
    folders = IdxDataset("fashion_mnist", data_dir).candidates() if data_dir else [d / "fashion-mnist"
                                                                                   for d in SYSTEM_DIRS]
    return any((f / f"train-images-idx3-ubyte{gz}").is_file() for f in folders for gz in ("", ".gz"))


def dlexp_command() -> list[str]:
    """The installed console script next to this interpreter: what a user's `dlexp` runs."""
    script = Path(sys.executable).parent / "dlexp"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "dlexp"]


def child_env(**extra: str) -> dict[str, str]:
    """The environment of every measured command: ours, with benchmarks/ importable (timing_probe)."""
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def stamp(name: str) -> None:
    """One `bench_stamp NAME TIME` line on stderr (time.time(): comparable across processes)."""
    sys.stderr.write(f"bench_stamp {name} {time.time():.6f}\n")
    sys.stderr.flush()


PROBE = "+callbacks.timing_probe={_target_:timing_probe.TimingProbe}"  # a dlexp override adding the probe


@dataclass
class Result:
    """One finished command: wall and CPU time, exit code, output, peak RSS of that process."""

    start: float  # time.time() just before the process was started
    wall_s: float
    cpu_s: float  # user + system time of the process and its threads: less sensitive to other load than wall time
    returncode: int
    stdout: str
    stderr: str
    max_rss_mb: float

    def stamps(self) -> dict[str, float]:
        """`bench_stamp NAME TIME` lines (stamp()) as seconds since the command started."""
        found = {}
        for line in self.stderr.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "bench_stamp":
                found[parts[1]] = float(parts[2]) - self.start
        return found

    def check(self, what: str) -> "Result":
        if self.returncode != 0:
            raise SystemExit(f"{what} failed with exit code {self.returncode}:\n{self.stderr[-3000:]}")
        return self


def run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 600) -> Result:
    """Run cmd to completion; its peak RSS comes from wait4 on that very process (not all children so far)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen so it does not wait again
        out.seek(0)
        err.seek(0)
        return Result(start, wall, usage.ru_utime + usage.ru_stime, proc.returncode, out.read(), err.read(),
                      usage.ru_maxrss * 1024 / 1e6)  # KiB -> MB


def interleave(sides: dict[str, Callable[[], Result]], repeats: int) -> dict[str, list[Result]]:
    """Run the sides alternately (A B A B ...): load from other processes on the machine hits both alike."""
    results: dict[str, list[Result]] = {name: [] for name in sides}
    for i in range(repeats):
        for name, side in sides.items():
            results[name].append(side())
            print(f"  {name} #{i + 1}: {results[name][-1].wall_s:.2f} s", file=sys.stderr, flush=True)
    return results


def median(values: list[float]) -> float:
    return statistics.median(values)


def verdict(value: float, target: float, at_most: bool = True) -> str:
    ok = value <= target if at_most else value >= target
    return "PASS" if ok else "FAIL"


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A Markdown table with aligned columns (readable in a terminal, pasteable into README.md)."""
    cells = [[str(c) for c in headers]] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"

    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells[1:])])


def parser(description: str, repeats: int) -> argparse.ArgumentParser:
    """--quick (seconds, digits, tiny: what tests/test_benchmarks.py runs) and --repeats for every driver."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="seconds on digits: checks the script works, not the targets")
    p.add_argument("--repeats", type=int, default=None, help=f"runs per side, interleaved (default {repeats}; quick 1)")
    return p


def machine() -> str:
    """One line naming what the numbers were measured on."""
    import platform

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} CPUs, load average {load:.2f}, Python {platform.python_version()}"


def cpu_model() -> str:
    """The CPU's "model name" (dlexp's own helper: standard library only, so the driver stays light)."""
    from dlexp.engine.machine import cpu_model as model

    return model()
