"""Multi-process DDP: rank 0 starts the other local ranks itself, so one run (or one sweep job) is one run directory.

Lightning's own launcher re-runs the command line for ranks 1..N-1; under Hydra that re-runs a whole sweep in
every child and points it at the wrong directory. Here rank 0 (the process Hydra runs the job in) starts
`python -m dlexp.engine.ddp_worker` for local ranks 1..N-1 with LOCAL_RANK, NODE_RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT set, sets them in its own environment too, and hands each worker the job on stdin (the resolved
config, the model name, the checkpoint to resume). With LOCAL_RANK in the environment Lightning's
LightningEnvironment treats the processes as created externally and launches nothing. Workers build the
same objects (dlexp.engine.build.build) and run the same fit and test (dlexp.engine.fit.fit_and_test); only global rank 0
writes files. Under torchrun or srun (Lightning detects TorchElastic / SLURM) every rank is a `dlexp train`
of its own and nothing is started here.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator

import torch.distributed
from pytorch_lightning.strategies.launchers import _SubprocessScriptLauncher

READY_TIMEOUT_S = 600.0  # a worker builds the same objects rank 0 already built: data loading, nets
FINISH_TIMEOUT_S = 120.0  # workers end with rank 0 (their last collective is rank 0's); then they are killed
FAILURE_GRACE_S = 30.0  # a dead worker makes rank 0's next collective fail; if rank 0 hangs instead, it is ended
ENV_KEYS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "WORLD_SIZE", "LOCAL_RANK")


def strategy(name: Any, task: Any, callbacks: list) -> Any:
    """The trainer's strategy; `ddp` searches for unused parameters when a backward pass reaches only part of
    the model: a GAN's two optimizers (each backward reaches one network) or a callback that freezes layers
    (it declares `freezes_parameters`)."""
    partial = not task.automatic_optimization or any(getattr(c, "freezes_parameters", False) for c in callbacks)
    return "ddp_find_unused_parameters_true" if name == "ddp" and partial else name


def processes(trainer: Any) -> int:
    """How many processes the trainer's strategy trains with (known before fit, unlike trainer.world_size)."""
    strategy = trainer.strategy
    return getattr(strategy, "num_processes", 1) * getattr(strategy, "num_nodes", 1)


def _starts_ranks(trainer: Any) -> bool:
    """True exactly where Lightning would re-run the command line: DDP's subprocess launcher, no external one."""
    launcher = trainer.strategy.launcher
    if not isinstance(launcher, _SubprocessScriptLauncher):
        return False
    return not launcher.cluster_environment.creates_processes_externally


@contextlib.contextmanager
def local_ranks(trainer: Any, job: dict[str, Any], fail: Callable[[str], None]) -> Iterator[None]:
    """Around rank 0's fit and test: start local ranks 1..N-1 with `job` (config, model, ckpt_path, purge_step),
    wait until they have built the run, and at the end wait for them (kill them if rank 0 failed).

    A worker that fails makes rank 0's next collective fail (gloo: at once), so the run fails with exit 1; if
    rank 0 still hangs after FAILURE_GRACE_S (a NCCL collective), `fail(message)` records it and rank 0 exits 1.
    """
    if not _starts_ranks(trainer):
        yield
        return
    strategy = trainer.strategy
    environment = strategy.cluster_environment
    saved = {k: os.environ.get(k) for k in ENV_KEYS}
    os.environ.update(MASTER_ADDR=environment.main_address, MASTER_PORT=str(environment.main_port),
                      NODE_RANK=str(environment.node_rank()), WORLD_SIZE=str(processes(trainer)), LOCAL_RANK="0")
    workers: dict[int, subprocess.Popen] = {}
    done = threading.Event()
    try:
        _start_workers(workers, strategy.num_processes, json.dumps(job).encode())
        for local_rank, worker in workers.items():
            _wait_ready(local_rank, worker)
        threading.Thread(target=_watch, args=(workers, done, fail), daemon=True).start()
        yield
    except BaseException as e:
        done.set()
        killed = _stop(workers, grace=5.0)
        failed = _failed({r: w for r, w in workers.items() if r not in killed})
        if failed and _lost_connection(e):  # the root cause is the worker's, not rank 0's broken link to it
            raise RuntimeError(failed) from e
        raise
    else:
        done.set()
        failed = _failed(workers, stuck=_stop(workers, grace=FINISH_TIMEOUT_S))
        if failed:
            raise RuntimeError(failed)
    finally:
        for key, value in saved.items():  # the next job of a sweep starts from a clean environment
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # the next job of a sweep makes its own group


def _start_workers(workers: dict[int, subprocess.Popen], processes: int, payload: bytes) -> None:
    """Start local ranks 1..processes-1 (into `workers` as they start), each given the job on stdin."""
    for local_rank in range(1, processes):
        # own session: a Ctrl-C reaches rank 0 only, which stops every rank after the same batch (StopOnSignal)
        env = {**os.environ, "LOCAL_RANK": str(local_rank)}
        worker = subprocess.Popen([sys.executable, "-m", "dlexp.engine.ddp_worker"], env=env, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, start_new_session=True)
        workers[local_rank] = worker
        worker.stdin.write(payload)
        worker.stdin.close()


def _lost_connection(error: BaseException) -> bool:
    """rank 0's error is only that another rank went away (a gloo or NCCL transport error)."""
    return isinstance(error, torch.distributed.DistError) or (
        isinstance(error, RuntimeError) and any(word in str(error) for word in ("gloo", "NCCL", "Connection")))


def _wait_ready(local_rank: int, worker: subprocess.Popen) -> None:
    """Block until the worker has built the run (one line on its stdout) or died (end of file)."""
    timer = threading.Timer(READY_TIMEOUT_S, worker.kill)
    timer.start()
    try:
        line = worker.stdout.readline()
    finally:
        timer.cancel()
        worker.stdout.close()
    if line.strip() != b"ready":
        code = worker.wait()
        raise RuntimeError(f"DDP rank {local_rank} failed before training (exit code {code}; its error is above)")


def _watch(workers: dict[int, subprocess.Popen], done: threading.Event, fail: Callable[[str], None]) -> None:
    """While rank 0 runs: a worker that died and a rank 0 that did not notice within the grace period end the run."""
    failed_at = None
    while not done.wait(1.0):
        if failed_at is None and _failed(workers):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > FAILURE_GRACE_S:
            message = _failed(workers)
            _stop(workers, grace=0.0)
            fail(message)
            print(f"error: run failed: {message}", file=sys.stderr, flush=True)
            os._exit(1)


def _failed(workers: dict[int, subprocess.Popen], stuck: list[int] = ()) -> str:
    """'' while every worker runs or ended well, else what went wrong ('DDP rank 1 exited with code 1 ...');
    `stuck`: ranks rank 0 had to kill at the end."""
    bad = []
    for local_rank, worker in workers.items():
        code = worker.poll()
        if local_rank in stuck:
            bad.append(f"DDP rank {local_rank} did not end with rank 0")
        elif code is not None and code < 0:
            bad.append(f"DDP rank {local_rank} was killed by {signal.Signals(-code).name}")
        elif code:
            bad.append(f"DDP rank {local_rank} exited with code {code} (its error is above)")
    return "; ".join(bad)


def _stop(workers: dict[int, subprocess.Popen], grace: float) -> list[int]:
    """Wait up to `grace` seconds for the workers to end, then kill the rest (one stuck in a collective ignores
    SIGTERM); returns the ranks killed."""
    end = time.monotonic() + grace
    killed = []
    for local_rank, worker in workers.items():
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(timeout=max(0.0, end - time.monotonic()))
        if worker.poll() is None:
            worker.kill()
            worker.wait()
            killed.append(local_rank)
    return killed


