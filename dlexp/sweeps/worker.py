"""One job of a parallel sweep (dlexp/sweeps/parallel.py) in a process of its own, with its share of the cores.

On Linux the process is forked from the launcher (torch and Lightning already loaded: it starts in milliseconds),
elsewhere spawned. Its thread count is set with torch.set_num_threads and in its environment (OMP_NUM_THREADS and
friends: what a spawned interpreter's torch and any process the job starts read); the job's train.log says what
torch has. The job lives in a process group of its own, so a terminal's Ctrl-C reaches only the launcher, which
forwards it once to every running job: the job stops as a run stopped by Ctrl-C does (a resumable checkpoint, status
`interrupted`). A job whose launcher disappeared (killed) stops the same way, with SIGTERM.
"""
from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Callable

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig
from omegaconf.basecontainer import BaseContainer

from dlexp.config.compose import register_resolvers
from dlexp.errors import RunInterrupted

WORKER_ENV = "DLEXP_SWEEP_WORKER"  # set in a job's environment: its slot (the sweep summary is the launcher's)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")  # read once, when torch/BLAS load

log = logging.getLogger("dlexp")


def worker_env(slot: int, threads: int, cuda_devices: list[Any] | None) -> dict[str, str]:
    """The environment of the job in `slot` (0 .. n_jobs-1): its thread count; with cuda_devices, the GPU it sees."""
    env = {var: str(threads) for var in THREAD_VARS}
    env[WORKER_ENV] = str(slot)
    if cuda_devices:
        env["CUDA_VISIBLE_DEVICES"] = str(cuda_devices[slot % len(cuda_devices)])
    return env


def main(conn: Connection, hydra_context: HydraContext, task_function: TaskFunction, singletons: dict | None,
         number: int, config: DictConfig, threads: int, launcher_pid: int) -> None:
    """Run job `number` in this process and send its reply: ('done', number, JobReturn) or ('interrupted', number,
    signum). It starts with SIGINT and SIGTERM blocked (the launcher's doing) and takes them over in a process group
    of its own: until the run installs its own handler (dlexp/callbacks/run_state.py), either stops the job."""
    os.setpgrp()  # out of the terminal's process group: Ctrl-C comes from the launcher, once
    for signum in STOP_SIGNALS:  # (forked: replaces the launcher's forwarding handler)
        signal.signal(signum, _stop)
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # one that came meanwhile is handled now
        _watch_launcher(launcher_pid)
        if singletons is not None:  # a spawned interpreter: Hydra's singletons (config store, ...) as the launcher
            # has them; OmegaConf's resolvers are functions that do not pickle, so it registers its own
            Singleton.set_state({"instances": singletons, "omegaconf_resolvers": BaseContainer._resolvers})
            setup_globals()
            register_resolvers()
        reply = run_one(number, config, hydra_context, task_function, threads)
    except JobStopped as e:  # before the job started
        reply = ("interrupted", number, e.signum)
    sys.stdout.flush()  # the job's output before the launcher's next lines (stdout may be a pipe)
    sys.stderr.flush()
    try:
        conn.send(reply)
    except OSError:
        pass  # the launcher is gone


def run_one(number: int, config: DictConfig, hydra_context: HydraContext, task_function: TaskFunction,
            threads: int) -> tuple:
    """One job through Hydra's run_job (its directory, logging, callbacks), as the sequential launcher runs it."""
    try:
        ret = run_job(hydra_context=hydra_context, task_function=_announced(task_function, number, threads),
                      config=config, job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    except JobStopped as e:  # a signal before the run took the signals over: nothing to save yet
        return "interrupted", number, e.signum
    except BaseException as e:
        error = getattr(e, "error", None)  # dlexp's Unwind: the run stopped and recorded itself as interrupted
        if isinstance(error, RunInterrupted):
            return "interrupted", number, error.signum
        raise
    return "done", number, _picklable(ret)


def _announced(task_function: TaskFunction, number: int, threads: int) -> Callable[[DictConfig], Any]:
    """task_function at this job's thread count, after saying in the job's log which slot runs it and how many
    threads torch has."""

    def task(cfg: DictConfig) -> Any:
        import torch  # deferred: a spawned job loads it here, after its environment set the thread count

        torch.set_num_threads(threads)
        worker = os.environ.get(WORKER_ENV, "?")
        for handler in logging.getLogger().handlers:  # console lines of jobs running side by side: "[job] line"
            if type(handler) is logging.StreamHandler:
                handler.setFormatter(logging.Formatter(f"[{number}] %(message)s"))
        log.info("parallel sweep: job %d in slot %s (pid %d), threads: %d (torch.get_num_threads())", number,
                 worker, os.getpid(), torch.get_num_threads())
        return task_function(cfg)

    return task


def _picklable(ret: JobReturn) -> JobReturn:
    """A job's return as the launcher can receive it: an exception that does not pickle becomes a RuntimeError."""
    if ret.status == JobStatus.FAILED:
        try:
            pickle.dumps(ret._return_value)
        except Exception:
            ret._return_value = RuntimeError(f"{type(ret._return_value).__name__}: {ret._return_value}")
    return ret


class JobStopped(BaseException):
    """SIGINT or SIGTERM before the run took the signals over: the job stops (nothing to save yet). A BaseException,
    so that no `except Exception` on the way (OmegaConf's error formatting, Hydra's callbacks) swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, frame: Any) -> None:
    raise JobStopped(signum)


def _watch_launcher(launcher_pid: int) -> None:
    """SIGTERM this worker once its launcher is gone (killed): a running job saves a checkpoint and stops."""

    def watch() -> None:
        while os.getppid() == launcher_pid:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="dlexp-watch-launcher", daemon=True).start()
