"""The benchmark scripts still run: each one's --quick mode, as a subprocess, prints its ratio lines and exits 0.

Targets are not asserted (timings on a shared CI machine are noise); what must hold is that the scripts
measure what they say: every ratio is a positive finite number, and the plain loops of overhead.py reach
exactly dlexp's results (same net, data, order, seed and steps), so the comparison is like for like.
"""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_quick(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), "--quick"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"{script} --quick failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def ratio_lines(stdout: str) -> dict[str, str]:
    """'ratio NAME: VALUE ...' lines as {NAME: rest}."""
    found = {}
    for line in stdout.splitlines():
        if line.startswith("ratio "):
            name, _, rest = line.removeprefix("ratio ").partition(": ")
            found[name] = rest
    return found


def assert_ratios(stdout: str, names: list[str]) -> None:
    lines = ratio_lines(stdout)
    assert set(names) <= set(lines), f"missing ratio lines {set(names) - set(lines)} in:\n{stdout}"
    for name in names:
        value = float(lines[name].split()[0])
        assert math.isfinite(value) and value > 0, f"ratio {name}: {lines[name]}"
        assert lines[name].split()[-1] in ("PASS", "FAIL") or "of target" in lines[name]


@pytest.mark.slow
def test_overhead_quick_prints_ratios_and_the_plain_loops_match_dlexp(tmp_path):
    result = run_quick("overhead.py", tmp_path)
    assert_ratios(result.stdout, ["convnet_fit", "wgan_gp_fit", "convnet_vs_lightning", "convnet_startup_extra_s"])
    agree = [line for line in result.stdout.splitlines() if line.startswith("results ")]
    assert len(agree) == 2 and all(line.endswith("agree") for line in agree), result.stdout


@pytest.mark.slow
def test_data_path_quick_prints_its_ratio(tmp_path):
    result = run_quick("data_path.py", tmp_path)
    assert_ratios(result.stdout, ["data_path"])
    assert "torchvision DataLoader" in result.stdout


@pytest.mark.slow
def test_startup_quick_prints_ratios_and_where_the_time_goes(tmp_path):
    result = run_quick("startup.py", tmp_path)
    assert_ratios(result.stdout, ["help", "list", "first_step (digits)"])
    phases = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in result.stdout.splitlines()
              if line.count("|") == 3 and not line.startswith("|-")}
    assert "python + import torch" in phases and "total: command -> first training step" in phases, result.stdout
    assert all(float(phases[k]) > 0 for k in ("python + import torch", "total: command -> first training step"))


@pytest.mark.slow
def test_memory_quick_prints_peak_rss(tmp_path):
    result = run_quick("memory.py", tmp_path)
    assert_ratios(result.stdout, ["memory"])
    peak = float(ratio_lines(result.stdout)["memory"].split("(")[1].split()[0])
    assert 50 < peak < 100_000  # MB: a real process, measured in the unit the table says


def table_column(stdout: str, column: str) -> dict[str, str]:
    """{first cell: cell of `column`} for the rows of the Markdown table a script printed."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in stdout.splitlines()
            if line.startswith("| ") and not line.startswith("|-")]
    index = rows[0].index(column)
    return {row[0]: row[index] for row in rows[1:]}


@pytest.mark.slow
def test_sequences_quick_prints_ratios_and_every_side_reaches_the_same_loss(tmp_path):
    result = run_quick("sequences.py", tmp_path)
    assert result.stdout.startswith("sequences:") and "CPU: " in result.stdout and "torch " in result.stdout
    assert_ratios(result.stdout, ["lstm_epoch"])
    for name in ("lstm_packed_vs_fixed", "char_lm"):  # reported without a target
        value = float(ratio_lines(result.stdout)[name].split()[0])
        assert math.isfinite(value) and value > 0, result.stdout
    losses = {side: float(v) for side, v in table_column(result.stdout, "train/loss").items()}
    assert set(losses) == {"lstm plain fixed", "lstm plain packed", "lstm dlexp", "char_lm plain", "char_lm dlexp"}
    # the same net, data, batch order, seed and steps: dlexp computes exactly what the plain loops compute
    assert losses["lstm dlexp"] == pytest.approx(losses["lstm plain fixed"], abs=1e-4)
    assert losses["char_lm dlexp"] == pytest.approx(losses["char_lm plain"], abs=1e-4)
    # packing skips the padding steps: the same work on the same data, not bit for bit the same function
    assert losses["lstm plain packed"] == pytest.approx(losses["lstm plain fixed"], rel=0.1)
    same = [line for line in result.stdout.splitlines() if line.startswith("same work")]
    assert len(same) == 1 and same[0].endswith("agree"), result.stdout


@pytest.mark.slow
def test_speedrun_quick_prints_its_ratio(tmp_path):
    result = run_quick("speedrun.py", tmp_path)
    assert_ratios(result.stdout, ["speedrun"])
    assert "plain epoch" in result.stdout and "fashion_speedrun" in result.stdout


@pytest.mark.slow
def test_sweeps_quick_prints_its_ratio_and_identical_per_job_results(tmp_path):
    result = run_quick("sweeps.py", tmp_path)
    assert result.stdout.startswith("sweeps:") and "CPU: " in result.stdout
    assert_ratios(result.stdout, ["sweep_parallel"])
    walls = {side: float(v) for side, v in table_column(result.stdout, "wall s").items()}
    assert set(walls) == {"one at a time", "parallel"} and all(v > 0 for v in walls.values())
    # the same jobs at the same thread count: the parallel sweep computes exactly what one at a time computes
    same = [line for line in result.stdout.splitlines() if line.startswith("per-job metrics: ")]
    assert len(same) == 1 and same[0].startswith("per-job metrics: identical (6 jobs"), result.stdout
