"""Runs you can trust, through the installed `dlexp`: exact resume after SIGKILL, Ctrl-C/SIGTERM, atomic
checkpoints, non-finite losses, safe checkpoint loading, sweeps that stop and continue."""
from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import dlexp_bin, run_dir_of

pytestmark = pytest.mark.slow


def start(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """Start `dlexp` in tmp_path without waiting for it."""
    return subprocess.Popen([dlexp_bin(), *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "DLEXP_DATA_DIR": str(tmp_path / "data"), **(env or {})})


def wait_for(predicate, timeout: float = 120.0) -> None:
    end = time.time() + timeout
    while not predicate():
        assert time.time() < end, "timed out waiting"
        time.sleep(0.02)


def new_run_dir(tmp_path: Path, known: set[str]) -> Path | None:
    runs = [p for p in (tmp_path / "outputs" / "runs").glob("*") if p.name not in known]
    return runs[0] if runs else None


def log_has(run_dir: Path | None, text: str) -> bool:
    return run_dir is not None and (run_dir / "train.log").exists() and text in (run_dir / "train.log").read_text()


def flat(obj) -> list[torch.Tensor]:
    """Every tensor and number of a checkpoint section, in a fixed order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for k in sorted(obj, key=str) for t in flat(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [t for x in obj for t in flat(x)]
    return [torch.tensor(float(obj))] if isinstance(obj, (int, float)) else []


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """A TensorBoard scalar series as TensorBoard shows it (a resumed run's purge applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


RESUME_CASES = {
    "classifier": ["model=convnet", "trainer.max_epochs=4", "dataset.flip=true", "dataset.translate=2",
                   "regularizer=dropout", "scheduler=cosine"],
    "vae": ["model=vae", "trainer.max_epochs=10"],
    "gan": ["model=wgan_gp", "trainer.max_epochs=3", "model.generator.width=16", "model.discriminator.width=16",
            "callbacks.samples.every_n_epochs=1"],
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, case):
    """SIGKILL at a random step after the first epoch, `dlexp resume`: weights, optimizer and scheduler state,
    step counters and every per-step loss in TensorBoard equal those of an uninterrupted run."""
    args = ["train", *RESUME_CASES[case], "seed=3", "trainer.log_every_n_steps=1",
            "callbacks.checkpoint.every_n_train_steps=5"]
    full = subprocess.run([dlexp_bin(), *args], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]
    reference = run_dir_of(full)

    total = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    target = random.Random(case).randint(total // 4, total // 2)  # a random step in the first half
    victim = start(tmp_path, *args)
    known = {reference.name}

    def checkpoint_past_target() -> bool:
        run_dir = new_run_dir(tmp_path, known)
        ckpt = run_dir / "checkpoints" / "last.ckpt" if run_dir else None
        return bool(ckpt and ckpt.exists() and torch.load(ckpt, weights_only=True)["global_step"] >= target)

    wait_for(checkpoint_past_target)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed = new_run_dir(tmp_path, known)
    saved = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    resumed = subprocess.run([dlexp_bin(), "resume", str(killed)], cwd=tmp_path, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert run_dir_of(resumed) == killed

    a = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
    assert 0 < saved < a["global_step"], f"the kill did not land mid-run (checkpoint at step {saved})"
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for section in ("optimizer_states", "lr_schedulers"):
        fa, fb = flat(a[section]), flat(b[section])
        assert len(fa) == len(fb) and all(torch.equal(x, y) for x, y in zip(fa, fb)), section
    tag = "train/d_loss_step" if case == "gan" else "train/loss_step"
    assert scalars(reference, tag) == scalars(killed, tag)
    assert json.loads((killed / "metrics.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_writes_checkpoint_and_exits(tmp_path, signum, code):
    """Ctrl-C / SIGTERM mid-training: a resumable last.ckpt, metrics status interrupted, the resume command,
    exit 130 / 143; `dlexp resume` then finishes the run."""
    proc = start(tmp_path, "train", "trainer.max_epochs=30", "logger=none")
    wait_for(lambda: log_has(new_run_dir(tmp_path, set()), "epoch 1:"))
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    run_dir = new_run_dir(tmp_path, set())
    assert proc.returncode == code, err[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["resume"] == f"dlexp resume {run_dir}"
    assert f"dlexp resume {run_dir}" in err
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] > 0 and "rng_state" in ckpt
    resumed = subprocess.run([dlexp_bin(), "resume", str(run_dir), "trainer.max_epochs=3"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


def test_resume_refuses_changes_that_alter_the_run(run_dlexp, tmp_path):
    """Only keys such as trainer.max_epochs may change on resume; others are refused in one line."""
    first = run_dlexp("train", "trainer=debug", "logger=none")
    run_dir = run_dir_of(first)
    refused = run_dlexp("resume", str(run_dir), "optimizer.lr=0.5")
    assert refused.returncode == 2 and "cannot change optimizer.lr on resume" in refused.stderr
    group = run_dlexp("resume", str(run_dir), "model=mlp")
    assert group.returncode == 2 and "cannot change model" in group.stderr
    nothing = run_dlexp("resume", str(tmp_path))
    assert nothing.returncode == 2 and "neither a dlexp run directory" in nothing.stderr


def test_ckpt_path_last_continues_the_latest_run(run_dlexp):
    """`dlexp train ckpt_path=last trainer.max_epochs=2` continues the latest run in its own directory."""
    first = run_dlexp("train", "trainer.max_epochs=1", "trainer.limit_train_batches=3", "logger=none")
    run_dir = run_dir_of(first)
    again = run_dlexp("train", "ckpt_path=last", "trainer.max_epochs=2")
    assert again.returncode == 0, again.stderr[-2000:]
    assert run_dir_of(again) == run_dir
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 2


def test_kill_during_a_slow_checkpoint_write_keeps_the_previous_one(tmp_path):
    """SIGKILL while a checkpoint is being written (fsync slowed down): last.ckpt stays the previous, loadable
    checkpoint; the resume removes the orphan temp file."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os, time\n_fsync = os.fsync\n"
        "def slow_fsync(fd):\n    time.sleep(1.5)\n    _fsync(fd)\nos.fsync = slow_fsync\n")
    proc = start(tmp_path, "train", "trainer.max_epochs=30", "logger=none", "callbacks.best_checkpoint=null",
                 env={"PYTHONPATH": str(hook)})
    run_dir = None

    def writing_second_checkpoint() -> bool:
        nonlocal run_dir
        run_dir = new_run_dir(tmp_path, set())
        ckpts = run_dir / "checkpoints" if run_dir else None
        return bool(ckpts and (ckpts / "last.ckpt").exists() and list(ckpts.glob(".last.ckpt.*.tmp")))

    wait_for(writing_second_checkpoint)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list((run_dir / "checkpoints").glob(".last.ckpt.*.tmp")), "the kill missed the write"
    torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)  # complete and loadable
    resumed = subprocess.run([dlexp_bin(), "resume", str(run_dir), "trainer.max_epochs=2"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not list(run_dir.rglob(".*.tmp"))


def test_unwritable_output_dir_fails_clearly(run_dlexp):
    """A read-only output folder: exit non-zero before training, one line naming the folder."""
    result = run_dlexp("train", "trainer=debug", "paths.output_dir=/sys/dlexp-outputs")
    assert result.returncode == 2
    assert "cannot write run directories under /sys/dlexp-outputs" in result.stderr
    assert "Traceback" not in result.stderr


def test_nan_loss_stops_within_a_step(run_dlexp, tmp_path):
    """An exploding lr: the run stops at the first non-finite loss, naming step and term, exit 1, and no
    checkpoint holds non-finite weights."""
    result = run_dlexp("train", "model=mlp", "optimizer=sgd", "optimizer.lr=1e12", "trainer.max_epochs=2",
                       "logger=none", "callbacks.checkpoint.every_n_train_steps=1")
    assert result.returncode == 1
    assert "non-finite loss at step" in result.stderr and "train/loss" in result.stderr
    run_dir = new_run_dir(tmp_path, set())
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"
    for ckpt in run_dir.glob("checkpoints/*.ckpt"):
        state = torch.load(ckpt, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_malicious_checkpoint_is_refused_and_runs_nothing(run_dlexp, tmp_path):
    """A pickle whose payload would create a marker file: refused by resume and init_from; no marker."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    first = run_dlexp("train", "trainer=debug", "logger=none")
    run_dir = run_dir_of(first)
    with open(run_dir / "checkpoints" / "last.ckpt", "wb") as f:
        pickle.dump({"state_dict": Payload()}, f, protocol=2)
    resumed = run_dlexp("resume", str(run_dir))
    assert resumed.returncode == 2 and "refused" in resumed.stderr and "last.ckpt" in resumed.stderr
    reused = run_dlexp("train", "trainer=debug", f"model.init_from={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert reused.returncode == 2 and "refused" in reused.stderr
    assert not marker.exists()


@pytest.mark.parametrize("content, expected", [
    (b"", "empty file"),
    (b"not a checkpoint at all", "refused: not a weights-only PyTorch checkpoint"),
    (None, "not a readable PyTorch checkpoint"),  # truncated
])
def test_corrupt_checkpoint_gives_one_line(run_dlexp, content, expected):
    """Empty, foreign or truncated last.ckpt: `dlexp resume` names the file and the problem, exit 2."""
    first = run_dlexp("train", "trainer=debug", "logger=none")
    ckpt = run_dir_of(first) / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000] if content is None else content)
    result = run_dlexp("resume", str(run_dir_of(first)))
    assert result.returncode == 2
    err = result.stderr.strip()
    assert expected in err and str(ckpt) in err and len(err.splitlines()) == 1, err


def test_runs_started_together_get_their_own_directories(tmp_path):
    """Two runs started in the same second never share a run directory."""
    procs = [start(tmp_path, "train", "trainer=debug", "logger=none") for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    dirs = {run_dir_of(subprocess.CompletedProcess([], p.returncode, out, err)) for p, (out, err) in zip(procs, outs)}
    assert len(dirs) == 2


def test_sweep_interrupted_then_resumed(tmp_path):
    """Ctrl-C in a sweep marks the job interrupted and stops the sweep; `dlexp resume SWEEP_DIR` finishes the
    interrupted job, runs the ones never started and skips completed ones."""
    proc = start(tmp_path, "train", "-m", "optimizer=sgd,adam,momentum", "trainer.max_epochs=3", "logger=none")
    sweep_root = tmp_path / "outputs" / "multirun"

    def job_one_training() -> bool:
        jobs = list(sweep_root.glob("*/1"))
        return bool(jobs) and log_has(jobs[0], "epoch 0:")

    wait_for(job_one_training)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    sweep = next(sweep_root.glob("*"))
    assert json.loads((sweep / "0" / "metrics.json").read_text())["status"] == "completed"
    assert json.loads((sweep / "1" / "metrics.json").read_text())["status"] == "interrupted"
    assert not (sweep / "2").exists()
    before = (sweep / "0" / "metrics.json").read_text()
    resumed = subprocess.run([dlexp_bin(), "resume", str(sweep)], cwd=tmp_path, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "job 0: completed, skipped" in resumed.stdout
    assert resumed.stdout.strip().splitlines()[-1] == f"multirun_dir: {sweep}"
    for job in ("0", "1", "2"):
        assert json.loads((sweep / job / "metrics.json").read_text())["status"] == "completed"
    assert (sweep / "0" / "metrics.json").read_text() == before


def test_write_failure_fails_the_run_and_keeps_the_previous_checkpoint(tmp_path):
    """A disk that refuses large writes (a 200 kB file-size limit stands in for a full disk): the checkpoint
    write fails, the run exits 1 naming the OS error, metrics.json says failed, no partial checkpoint."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    proc = subprocess.run([dlexp_bin(), "train", "trainer=debug", "logger=none"], cwd=tmp_path, capture_output=True,
                          text=True, preexec_fn=limit, timeout=300,
                          env={**os.environ, "DLEXP_DATA_DIR": str(tmp_path / "data")})
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "File too large" in proc.stderr
    run_dir = new_run_dir(tmp_path, set())
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"
    assert not list((run_dir / "checkpoints").glob("*.ckpt")) and not list(run_dir.rglob(".*.tmp"))


def test_step_checkpoint_on_the_last_batch_keeps_the_epoch_end_state(run_dlexp):
    """every_n_train_steps firing on an epoch's last batch: last.ckpt still holds the state after validation,
    so a resume gives the uninterrupted run's best checkpoint and test score."""
    common = ("seed=3", "logger=none", "callbacks.checkpoint.every_n_train_steps=3", "trainer=debug")
    full = run_dlexp("train", *common, "trainer.max_epochs=2")
    first = run_dlexp("train", *common, "trainer.max_epochs=1")
    run_dir = run_dir_of(first)
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["val_acc_best"] > 0
    again = run_dlexp("resume", str(run_dir), "trainer.max_epochs=2")
    assert again.returncode == 0, again.stderr[-2000:]
    a = json.loads((run_dir_of(full) / "metrics.json").read_text())
    b = json.loads((run_dir / "metrics.json").read_text())
    for key in ("val/acc_best", "test/acc", "test/loss", "global_step"):
        assert a[key] == b[key], key


def test_resume_refuses_a_longer_run_for_length_planned_schedules(run_dlexp):
    """cosine and onecycle are planned over the run's length: trainer.max_epochs cannot change on resume."""
    first = run_dlexp("train", "trainer=debug", "logger=none", "scheduler=onecycle")
    refused = run_dlexp("resume", str(run_dir_of(first)), "trainer.max_epochs=3")
    assert refused.returncode == 2 and "scheduler=onecycle was planned" in refused.stderr


def test_sweep_with_a_failed_job_exits_1(run_dlexp, tmp_path):
    """A sweep goes on past a failed job, which is recorded as failed, and the sweep exits 1."""
    result = run_dlexp("train", "-m", "trainer=debug", "logger=none", "optimizer=sgd", "optimizer.lr=1e30,0.01")
    assert result.returncode == 1
    sweep = tmp_path / result.stdout.strip().splitlines()[-1].removeprefix("multirun_dir: ")
    statuses = [json.loads((sweep / j / "metrics.json").read_text())["status"] for j in ("0", "1")]
    assert statuses == ["failed", "completed"]
