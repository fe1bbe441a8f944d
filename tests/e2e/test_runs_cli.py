"""`dlexp runs` through the installed `dlexp`, on real runs made once for the module: an interrupted one (Ctrl-C) and a
sweep with a failed and a completed job; damaged copies of the completed one; bad input; light imports."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import dlexp_bin

pytestmark = pytest.mark.slow  # the module's two commands take ~15 s together; each test then takes about a second

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "runs_listing.py"


def dlexp(work: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([dlexp_bin(), *args], cwd=work, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "DLEXP_DATA_DIR": str(work / "data")}, check=False)


def start(work: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([dlexp_bin(), *args], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "DLEXP_DATA_DIR": str(work / "data")})


def interrupt_after_first_epoch(work: Path, proc: subprocess.Popen, overrides: str) -> Path:
    """Ctrl-C the run whose overrides.yaml holds `overrides` once its log shows epoch 1; its run directory."""
    end = time.time() + 240
    while True:
        assert time.time() < end and proc.poll() is None, "the run to interrupt ended or never reached epoch 1"
        found = [p.parent for p in (work / "outputs" / "runs").glob("*/overrides.yaml") if overrides in p.read_text()]
        if found and "epoch 1:" in (found[0] / "train.log").read_text():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    return found[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Any]:
    """Two real commands at once in one folder: a sweep whose job 0 explodes (lr 1e30: failed) and whose job 1, a tiny
    digits run, completes; and a 1000-epoch run in runs/ stopped by Ctrl-C after its second epoch."""
    work = tmp_path_factory.mktemp("runs_cli")
    slow = start(work, "train", "trainer=debug", "trainer.max_epochs=1000", "logger=none")
    sweep = start(work, "train", "-m", "trainer=debug", "logger=none", "optimizer=sgd", "optimizer.lr=1e30,0.01")
    interrupted = interrupt_after_first_epoch(work, slow, "trainer.max_epochs=1000")
    out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 1, err[-2000:]
    sweep_dir = Path(out.strip().splitlines()[-1].removeprefix("multirun_dir: "))
    return {"dir": work, "interrupted": interrupted, "sweep": sweep_dir, "failed": sweep_dir / "0",
            "completed": sweep_dir / "1"}


def metrics(run_dir: Path | str) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def listed(work: Path, *args: str) -> list[dict[str, Any]]:
    result = dlexp(work, "runs", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_table_shows_every_run_its_status_and_how_to_resume(work):
    result = dlexp(work["dir"], "runs")
    assert result.returncode == 0 and not result.stderr, result.stderr
    lines = result.stdout.splitlines()
    row = {line.split()[0]: line.split() for line in lines[1:] if line and not line.startswith(" ")}
    sweep = work["sweep"].name
    assert row[work["interrupted"].name][4] == "interrupted"
    assert row[f"{sweep}/0"][4] == "failed" and row[f"{sweep}/1"][4] == "completed"
    assert f"  dlexp resume {work['interrupted']}" in lines
    assert "3 runs under outputs: " in result.stdout
    best, test = metrics(work["completed"])["val/acc_best"], metrics(work["completed"])["test/acc"]
    assert row[f"{sweep}/1"][5:9] == ["val/acc", f"{best:.4f}", "test/acc", f"{test:.4f}"]


def test_json_rows_say_what_each_runs_metrics_json_says(work):
    rows = {Path(r["path"]): r for r in listed(work["dir"])}
    assert set(rows) == {work["interrupted"], work["failed"], work["completed"]}
    for path, row in rows.items():
        written = metrics(path)
        assert row["status"] == written["status"]
        assert (row["model"], row["dataset"], row["experiment"]) == ("convnet", "digits", None)
        assert row["epochs"] == written.get("epochs") and row["wall_s"] == written["wall_s"]
        if written["status"] == "completed":
            assert (row["monitor"], row["best"]) == ("val/acc", written["val/acc_best"])
            assert (row["test_metric"], row["test"]) == ("test/acc", written["test/acc"])
    assert rows[work["interrupted"]]["resume"] == metrics(work["interrupted"])["resume"]
    assert rows[work["failed"]]["error"] == metrics(work["failed"])["error"]
    assert rows[work["completed"]]["overrides"] == ["trainer=debug", "logger=none", "optimizer=sgd",
                                                      "optimizer.lr=0.01"]
    newest_first = [r["age_s"] for r in listed(work["dir"])]
    assert newest_first == sorted(newest_first)


def test_filters_and_sort(work):
    [interrupted] = listed(work["dir"], "status=interrupted")
    assert Path(interrupted["path"]) == work["interrupted"]
    assert len(listed(work["dir"], "status=completed,failed")) == 2
    assert len(listed(work["dir"], "model=convnet", "dataset=digits")) == 3
    by_best = [r["name"] for r in listed(work["dir"], "sort=best")]
    assert by_best[0] == f"{work['sweep'].name}/1"  # the only run with a best value; the others after it
    none = dlexp(work["dir"], "runs", "model=mlp")
    assert none.returncode == 0 and "none of the 3 runs under outputs match" in none.stdout
    jobs = listed(work["dir"], str(work["sweep"]), "sort=name")
    assert [r["name"] for r in jobs] == [f"{work['sweep'].name}/0", f"{work['sweep'].name}/1"]


def test_damaged_run_directories_are_unreadable_rows(work, tmp_path):
    """Copies of the completed run with metrics.json cut mid-write, empty, binary; one with no files but its log."""
    runs = tmp_path / "outputs" / "runs"
    damage = {"cut": lambda f: f.write_text(f.read_text()[:40]), "empty": lambda f: f.write_text(""),
              "binary": lambda f: f.write_bytes(b"\x00\xff\xfe")}
    for name, hurt in damage.items():
        shutil.copytree(work["completed"], runs / name)
        hurt(runs / name / "metrics.json")
    shutil.copytree(work["completed"], runs / "intact")
    (runs / "log_only").mkdir()
    (runs / "log_only" / "train.log").write_text("[2026-01-01 00:00:00,000][dlexp][INFO] building\n")
    rows = {r["name"]: r for r in listed(tmp_path)}
    assert rows["intact"]["status"] == "completed"
    assert {name: rows[name]["status"] for name in (*damage, "log_only")} == dict.fromkeys((*damage, "log_only"),
                                                                                           "unreadable")
    assert rows["cut"]["reason"].startswith("metrics.json: not JSON")
    assert rows["empty"]["reason"] == "metrics.json: empty file"
    assert rows["log_only"]["reason"].startswith("no metrics.json or config.yaml")
    table = dlexp(tmp_path, "runs")
    assert table.returncode == 0 and "Traceback" not in table.stderr
    assert re.search(r"^cut .* unreadable", table.stdout, re.MULTILINE)
    assert "  empty: metrics.json: empty file" in table.stdout


@pytest.mark.parametrize("args, message", [
    (["nowhere"], "error: no directory: nowhere"),
    (["sort=bset"], "error: runs option sort: no column 'bset' (did you mean 'best'?)"),
    (["status=complete"], "error: runs option status: no status 'complete' (did you mean 'completed'?)"),
    (["colour=red"], "error: unknown runs option 'colour'"),
])
def test_bad_input_is_one_line_and_exit_2(work, args, message):
    result = dlexp(work["dir"], "runs", *args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr


def test_no_outputs_here_is_exit_2(tmp_path):
    result = dlexp(tmp_path, "runs")
    assert result.returncode == 2 and result.stderr.startswith("error: no directory: outputs here")


def test_help_and_imports(work):
    """`dlexp runs --help` and `dlexp --help` name it; a listing imports no torch, Lightning or Hydra."""
    assert "usage: dlexp runs [DIR]" in dlexp(work["dir"], "runs", "--help").stdout
    assert "runs [DIR] [--json]" in dlexp(work["dir"], "--help").stdout
    timed = subprocess.run([sys.executable, "-X", "importtime", "-m", "dlexp.cli", "runs"], cwd=work["dir"],
                           capture_output=True, text=True, check=True)
    imported = {line.split("|")[-1].strip() for line in timed.stderr.splitlines() if line.startswith("import time:")}
    assert "dlexp.engine.rundir" in imported  # (modules importlib.import_module loads, as cli.py does, go unlisted)
    assert not {m for m in imported if m.split(".")[0] in ("torch", "pytorch_lightning", "lightning", "hydra")}


def test_benchmark_quick(tmp_path):
    """benchmarks/runs_listing.py --quick still runs: synthetic runs in dlexp's format, listed and checked, timed."""
    result = subprocess.run([sys.executable, str(BENCHMARK), "--quick"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    line = r"^ratio runs: [\d.]+ of target \([\d.]+ s for 100 runs\) (PASS|FAIL)$"
    assert re.search(line, result.stdout, re.MULTILINE), result.stdout
