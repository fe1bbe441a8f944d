"""SIGKILL a WGAN-GP run at distinct moments, `dlexp resume` it: the final checkpoint equals an uninterrupted run's.

Self-contained (no shared test helpers): the installed `dlexp` runs in a subprocess in pytest's tmp_path.

The run: WGAN-GP on digits, n_critic 5, 12 training batches per epoch, 2 epochs. Every batch is one critic
step and every 5th batch also a generator step, so an epoch is 14 global steps. With
callbacks.checkpoint.every_n_train_steps=3, last.ckpt is written at global steps 3, 6, 9, 12 (batches 3, 5, 8,
10 of epoch 0), at epoch 0's end (step 14), at 15, 18, 21, 24, 27 in epoch 1 and at its end (28). No step
save falls on an epoch's last batch here (LastCheckpoint skips them there: the last test).

The poller reads each new last.ckpt (os.replace makes every version complete) and kills as soon as the
wanted one is in place. For a kill during a write, a sitecustomize in the child slows the fsync of checkpoint
temp files and logs which Lightning hook each save comes from, so the kill lands inside a known write.
Each attempt checks which checkpoint the kill left and retries (up to 3 attempts) when it landed elsewhere.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

DLEXP = shutil.which("dlexp")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(DLEXP is None, reason="the dlexp command is not installed")]

BATCHES = 12  # training batches per epoch
RUN = ["model=wgan_gp", "dataset=digits", "seed=7", "trainer.max_epochs=2", "logger=none",
       f"trainer.limit_train_batches={BATCHES}", "model.generator.width=16", "model.discriminator.width=16"]
EVERY_3 = "callbacks.checkpoint.every_n_train_steps=3"
ATTEMPTS = 3
TIMEOUT = 300

# Runs in the child (PYTHONPATH): every checkpoint temp file's fsync is logged with the hook that saves it
# (epoch_end / batch_end) and slowed down, so a write in progress lasts long enough to be killed inside.
SITECUSTOMIZE = '''
import os, sys, time
_fsync = os.fsync
_log, _delay = os.environ["KILL_TEST_SAVE_LOG"], float(os.environ["KILL_TEST_SAVE_DELAY"])

def _slow_fsync(fd):
    try:
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        name = ""
    if name.startswith(".last.ckpt.") and name.endswith(".tmp"):
        frame, names = sys._getframe(1), set()
        while frame is not None:
            names.add(frame.f_code.co_name)
            frame = frame.f_back
        hook = "epoch_end" if "on_train_epoch_end" in names else "batch_end" if "on_train_batch_end" in names else "other"
        with open(_log, "a") as f:
            f.write(f"{hook} {name}\\n")
        time.sleep(_delay)
    _fsync(fd)

os.fsync = _slow_fsync
'''


def env(tmp: Path, slow_saves: bool = False) -> dict[str, str]:
    out = {**os.environ, "OMP_NUM_THREADS": "1", "DLEXP_DATA_DIR": str(tmp / "data")}
    if slow_saves:
        hook = tmp / "hook"
        hook.mkdir(exist_ok=True)
        (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
        out.update(PYTHONPATH=os.pathsep.join([str(hook), *filter(None, [os.environ.get("PYTHONPATH")])]),
                   KILL_TEST_SAVE_LOG=str(tmp / "saves.log"), KILL_TEST_SAVE_DELAY="0.5")
    return out


def run_dir_of(stdout: str) -> Path:
    lines = [line for line in stdout.splitlines() if line.startswith("run_dir: ")]
    assert lines, f"no run_dir line in:\n{stdout[-2000:]}"
    return Path(lines[-1].removeprefix("run_dir: "))


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def progress(ckpt: dict[str, Any]) -> dict[str, Any]:
    """Where a checkpoint stands: global step, epoch, batches of the epoch processed, epochs finished."""
    loop = ckpt["loops"]["fit_loop"]
    batches = loop["epoch_loop.batch_progress"]["current"]
    epochs = loop["epoch_progress"]["current"]
    return {"global_step": ckpt["global_step"], "epoch": ckpt["epoch"], "batches_processed": batches["processed"],
            "batches_completed": batches["completed"], "epochs_processed": epochs["processed"],
            "epochs_completed": epochs["completed"]}


def differences(a: Any, b: Any, where: str) -> list[str]:
    """Paths where two checkpoint sections differ: tensors bitwise (and dtype), other values by ==."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(map(str, a.keys() ^ b.keys()))}"]
        return [d for k in a for d in differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


def assert_equals_reference(reference: dict[str, Any], final: dict[str, Any]) -> None:
    assert (final["epoch"], final["global_step"]) == (reference["epoch"], reference["global_step"])
    differ = []
    for section in ("state_dict", "optimizer_states", "loops"):  # weights and buffers, Adam states, counters
        differ += differences(reference[section], final[section], section)
    assert not differ, f"{len(differ)} differences from the uninterrupted run: {differ[:10]}"


class Watch:
    """What the poller has seen of a run in progress."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.ckpt: dict[str, Any] | None = None  # the latest last.ckpt, loaded
        self._signature: tuple[int, int] | None = None
        self.run_dir: Path | None = None

    def poll(self) -> None:
        if self.run_dir is None:
            runs = list((self.work / "outputs" / "runs").glob("*"))
            self.run_dir = runs[0] if runs else None
        if self.run_dir is None:
            return
        try:
            with open(self.run_dir / "checkpoints" / "last.ckpt", "rb") as f:
                st = os.fstat(f.fileno())
                if (st.st_ino, st.st_mtime_ns) != self._signature:  # a new save is in place (os.replace)
                    self.ckpt = torch.load(f, map_location="cpu", weights_only=True)
                    self._signature = (st.st_ino, st.st_mtime_ns)
        except FileNotFoundError:
            pass

    def writing(self, hook: str, nth: int = 1) -> bool:
        """The nth save from `hook` (epoch_end / batch_end) is being written now (its temp file exists)."""
        log = self.work / "saves.log"
        saves = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
        mine = [name for kind, name in saves if kind == hook]
        return len(mine) >= nth and self.run_dir is not None and (self.run_dir / "checkpoints" / mine[nth - 1]).exists()


def kill_then_resume(root: Path, name: str, kill_when: Callable[[Watch], bool],
                     landed: Callable[[dict[str, Any]], bool], steps: str = EVERY_3,
                     slow_saves: bool = False) -> tuple[Path, dict[str, Any], list[str]]:
    """Start the run, SIGKILL it once kill_when(watch) holds, check with landed(last.ckpt) that the kill left
    the wanted checkpoint (else try again), then `dlexp resume` it. Returns (run_dir, progress at the kill,
    temp files the kill left)."""
    tried = []
    for attempt in range(ATTEMPTS):
        work = root / f"{name}-{attempt}"
        work.mkdir(parents=True)
        proc = subprocess.Popen([DLEXP, "train", *RUN, steps], cwd=work, env=env(work, slow_saves),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        watch, killed, end = Watch(work), False, time.time() + TIMEOUT
        try:
            while proc.poll() is None and time.time() < end:
                watch.poll()
                if kill_when(watch):
                    proc.send_signal(signal.SIGKILL)
                    killed = True
                    break
                time.sleep(0.001)
        finally:
            if proc.poll() is None and not killed:
                proc.kill()
            output = proc.communicate()[0]
        last = watch.run_dir / "checkpoints" / "last.ckpt" if watch.run_dir else None
        if not killed:  # the run ended (or timed out) before the moment came: the kill point was missed
            tried.append(f"attempt {attempt}: not killed (exit {proc.returncode}): {output[-500:]}")
            continue
        if proc.returncode != -signal.SIGKILL:  # it had exited by itself just before the signal
            tried.append(f"attempt {attempt}: exited ({proc.returncode}) before the kill")
            continue
        if last is None or not last.exists():
            tried.append(f"attempt {attempt}: killed before the first checkpoint")
            continue
        at_kill = progress(load(last))
        if not landed(at_kill):
            tried.append(f"attempt {attempt}: the kill left {at_kill}")
            continue
        temps = sorted(p.name for p in (last.parent).glob(".*.tmp"))
        metrics = json.loads((watch.run_dir / "metrics.json").read_text()) if (watch.run_dir / "metrics.json").exists() else {}
        assert metrics.get("status") != "completed", "killed, yet metrics.json says completed"
        resumed = subprocess.run([DLEXP, "resume", str(watch.run_dir)], cwd=work, env=env(work),
                                 capture_output=True, text=True, timeout=TIMEOUT)
        assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
        assert run_dir_of(resumed.stdout) == watch.run_dir
        assert not list(watch.run_dir.rglob(".*.tmp")), "the resume left the killed write's temp file"
        assert json.loads((watch.run_dir / "metrics.json").read_text())["status"] == "completed"
        return watch.run_dir, at_kill, temps
    pytest.fail(f"{name}: no kill at the wanted moment in {ATTEMPTS} attempts: {tried}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, Any]:
    """The uninterrupted run's final last.ckpt (the same command, never killed)."""
    work = tmp_path_factory.mktemp("reference")
    done = subprocess.run([DLEXP, "train", *RUN, EVERY_3], cwd=work, env=env(work), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    run_dir = run_dir_of(done.stdout)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    ckpt = load(run_dir / "checkpoints" / "last.ckpt")
    assert (ckpt["epoch"], ckpt["global_step"]) == (1, 28)  # the schedule in the module docstring
    return ckpt


def epoch_end_save(p: dict[str, Any]) -> bool:
    """Epoch 0's end save: written in on_train_epoch_end, after the epoch's last batch."""
    return p["global_step"] == 14 and p["batches_completed"] == BATCHES and p["epochs_processed"] == 1


KILL_POINTS = {
    # right after the first last.ckpt appears (step 3, batch 3 of epoch 0)
    "first_checkpoint": (lambda w: w.ckpt is not None, lambda p: p["global_step"] == 3),
    # mid-epoch between two step checkpoints: after step 18 (epoch 1, 4 batches done), before step 21
    "mid_epoch": (lambda w: w.ckpt is not None and w.ckpt["global_step"] == 18,
                  lambda p: p["global_step"] == 18 and p["epoch"] == 1 and p["batches_processed"] == 4),
    # right after epoch 0's end save is in place, around the epoch boundary (before epoch 1's first save)
    "epoch_end": (lambda w: w.ckpt is not None and epoch_end_save(progress(w.ckpt)), epoch_end_save),
    # while epoch 0's end save is being written: last.ckpt is still the step-12 save (batch 10 of 12)
    "during_write": (lambda w: w.writing("epoch_end"), lambda p: p["global_step"] == 12 and p["epochs_processed"] == 0),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_then_resume_equals_the_uninterrupted_run(reference, tmp_path, point):
    """SIGKILL at `point`, `dlexp resume RUN_DIR`: weights, buffers, both Adam states, step and epoch counters
    of the final last.ckpt are bitwise those of the uninterrupted run; metrics.json says completed."""
    kill_when, landed = KILL_POINTS[point]
    run_dir, at_kill, temps = kill_then_resume(tmp_path, point, kill_when, landed, slow_saves=point == "during_write")
    if point == "during_write":
        assert temps, "the kill did not land inside a checkpoint write"
    assert_equals_reference(reference, load(run_dir / "checkpoints" / "last.ckpt"))


def test_kill_during_the_epoch_end_save_when_the_step_trigger_falls_on_the_last_batch(reference, tmp_path):
    """every_n_train_steps=7 falls on epoch 0's last batch (step 14), where the epoch-end save follows at once: only
    the epoch-end save is written there (a step save, its batch processed but not completed, resumed past the epoch's
    end hooks and the next epoch's start). A kill during that write resumes as exactly as any other kill."""
    run_dir, at_kill, temps = kill_then_resume(
        tmp_path, "last_batch", lambda w: w.writing("epoch_end"),
        lambda p: p["global_step"] == 7 and p["epochs_processed"] == 0,
        steps="callbacks.checkpoint.every_n_train_steps=7", slow_saves=True)
    assert temps, "the kill did not land inside a checkpoint write"
    saves = [line.split()[0] for line in (run_dir.parents[2] / "saves.log").read_text().splitlines()]
    assert saves == ["batch_end", "epoch_end"], f"saves before the kill: {saves} (step 7, then the epoch's end)"
    assert_equals_reference(reference, load(run_dir / "checkpoints" / "last.ckpt"))
