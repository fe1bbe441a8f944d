"""Parallel sweeps (`hydra/launcher=parallel`) through the installed `dlexp`: jobs side by side with the cores split
among them and the results of one job at a time, the sweep summary, failed jobs, Ctrl-C and `dlexp resume`."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import dlexp_bin
from test_sweeps import summary_rows, sweep_dir_of

from dlexp.sweeps.parallel import cores

pytestmark = pytest.mark.slow

PARALLEL = ["hydra/launcher=parallel", "hydra.launcher.n_jobs=2"]
TINY = ["trainer.max_epochs=1", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2", "logger=none"]
THREADS = max(1, cores() // 2)  # what n_jobs=2 with threads=auto gives each job


def job_log(job: Path, pattern: str) -> str:
    """What `pattern`'s group 1 matches in the job's train.log (the launcher's line about the job)."""
    found = re.search(pattern, (job / "train.log").read_text())
    assert found, f"no {pattern!r} in {job / 'train.log'}"
    return found.group(1)


def without_wall(job: Path) -> dict:
    return {k: v for k, v in json.loads((job / "metrics.json").read_text()).items() if k != "wall_s"}


def gone(pid: str) -> bool:
    return not Path(f"/proc/{pid}").exists()


def test_jobs_share_the_cores_and_give_the_results_of_one_at_a_time(run_dlexp, tmp_path):
    sweep_args = ["train", "-m", "optimizer=sgd,adam,momentum", *TINY]
    parallel = run_dlexp(*sweep_args, *PARALLEL)
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    sweep = sweep_dir_of(parallel, tmp_path)
    jobs = [sweep / str(num) for num in range(3)]
    assert "Launching 3 jobs, 2 at a time" in parallel.stdout
    assert {job_log(j, r"threads: (\d+) \(torch\.get_num_threads") for j in jobs} == {str(THREADS)}
    pids = [job_log(j, r"\(pid (\d+)\)") for j in jobs]
    assert len(set(pids)) == 3 and all(gone(pid) for pid in pids)  # a process per job, none left
    assert {job_log(j, r"in slot (\d+)") for j in jobs} == {"0", "1"}

    rows = summary_rows(sweep)  # written by the launcher after each job
    assert sorted(r["job"] for r in rows) == ["0", "1", "2"] and {r["status"] for r in rows} == {"completed"}
    for row in rows:
        assert float(row["test/acc"]) == pytest.approx(without_wall(sweep / row["job"])["test/acc"])
    assert "sweep summary" in parallel.stdout

    # the same sweep one job at a time, every job at the thread count a parallel job had: the same numbers
    one_at_a_time = run_dlexp(*sweep_args, env={"OMP_NUM_THREADS": str(THREADS)})
    assert one_at_a_time.returncode == 0, one_at_a_time.stderr[-3000:]
    reference = sweep_dir_of(one_at_a_time, tmp_path)
    for job in jobs:
        assert without_wall(job) == without_wall(reference / job.name), job.name


def test_a_failed_job_is_a_failed_row_and_the_others_run(run_dlexp, tmp_path):
    """dataset=mnist is absent here: that job fails when it builds, the digits job completes, the sweep exits 1."""
    result = run_dlexp("train", "-m", "dataset=mnist,digits", *TINY, *PARALLEL)
    assert result.returncode == 1, result.stderr[-3000:]
    rows = {r["job"]: r for r in summary_rows(sweep_dir_of(result, tmp_path))}
    assert rows["0"]["status"] == "failed" and rows["1"]["status"] == "completed"
    assert "1 of 2 jobs did not complete" in result.stderr


def test_an_optuna_search_runs_its_trials_side_by_side(run_dlexp, tmp_path):
    result = run_dlexp("train", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
                       *TINY, *PARALLEL)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = sweep_dir_of(result, tmp_path)
    assert {r["status"] for r in summary_rows(sweep)} == {"completed"} and len(summary_rows(sweep)) == 2
    assert len({job_log(sweep / job, r"\(pid (\d+)\)") for job in ("0", "1")}) == 2
    assert (sweep / "optimization_results.yaml").is_file() and "best val/acc" in result.stdout


def test_bad_launcher_settings_are_refused_in_one_line(run_dlexp, tmp_path):
    result = run_dlexp("train", "-m", "optimizer=sgd,adam", "hydra/launcher=parallel", "hydra.launcher.n_jobs=0")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: hydra.launcher.n_jobs must be auto or a whole number >= 1, got '0'"
    assert not (tmp_path / "outputs" / "multirun").exists()


def start_sweep(tmp_path: Path, *args: str) -> subprocess.Popen:
    """A 3-job parallel sweep in tmp_path, in a session of its own (its process group: what a terminal signals)."""
    return subprocess.Popen([dlexp_bin(), "train", "-m", "optimizer=sgd,adam,momentum", "logger=none", *PARALLEL,
                             *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "DLEXP_DATA_DIR": str(tmp_path / "data")})


def test_ctrl_c_as_the_jobs_start_stops_them_all(tmp_path):
    """A Ctrl-C while the jobs start (before their runs handle signals, or while the launcher composes the next
    job's config) stops every job: none goes on to train its 30 epochs."""
    proc = start_sweep(tmp_path, "trainer.max_epochs=30")
    end = time.time() + 240
    while not list((tmp_path / "outputs" / "multirun").glob("*/0")):
        assert time.time() < end and proc.poll() is None, "the first job never started"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-3000:]
    statuses = [json.loads(m.read_text())["status"] for m in tmp_path.glob("outputs/multirun/*/*/metrics.json")]
    assert "completed" not in statuses and "Traceback" not in err


@pytest.mark.parametrize("ctrl_c_to", ["terminal", "launcher"])
def test_ctrl_c_stops_the_running_jobs_resumably_and_leaves_no_process(tmp_path, ctrl_c_to):
    """Ctrl-C in a terminal signals the whole process group; `kill -INT` only the launcher: either way both running
    jobs save a checkpoint and say interrupted, the job not started stays so, the command exits 130 once every job
    process has exited, and `dlexp resume SWEEP_DIR` finishes the sweep."""
    proc = start_sweep(tmp_path, "trainer.max_epochs=5")
    root = tmp_path / "outputs" / "multirun"

    def both_training() -> bool:
        logs = [job / "train.log" for job in root.glob("*/[01]")]
        return len(logs) == 2 and all(log.exists() and "epoch 0:" in log.read_text() for log in logs)

    end = time.time() + 240
    while not both_training():
        assert time.time() < end and proc.poll() is None, "the jobs never started training"
        time.sleep(0.05)
    if ctrl_c_to == "terminal":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-3000:]
    sweep = next(root.iterdir())
    assert f"dlexp resume {sweep}" in err
    for job in (sweep / "0", sweep / "1"):
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["status"] == "interrupted" and metrics["resume"] == f"dlexp resume {job}"
        assert (job / "checkpoints" / "last.ckpt").is_file()
    assert not (sweep / "2").exists()
    assert sorted((r["job"], r["status"]) for r in summary_rows(sweep)) == [("0", "interrupted"), ("1", "interrupted")]
    pids = [job_log(sweep / job, r"\(pid (\d+)\)") for job in ("0", "1")]
    assert all(gone(pid) for pid in pids), "a job process outlived the command"
    if ctrl_c_to == "launcher":
        return
    resumed = subprocess.run([dlexp_bin(), "resume", str(sweep)], cwd=tmp_path, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.strip().splitlines()[-1] == f"multirun_dir: {sweep}"
    assert sorted((r["job"], r["status"]) for r in summary_rows(sweep)) == [(j, "completed") for j in "012"]
