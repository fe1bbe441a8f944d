"""Parallel sweep jobs on one machine, the cores split among them: `dlexp train -m ... hydra/launcher=parallel`.

`n_jobs` jobs run at once (auto: one per core, no more than the sweep has jobs, no more than memory allows), each in
a process of its own (dlexp/sweeps/worker.py) with `threads` torch threads (auto: cores // n_jobs, at least 1), so
the jobs together never ask for more threads than there are cores (docs/sweeps.md). Jobs are Hydra jobs as the
sequential launcher runs them: same directories, configs, logs, and results at the same thread count. The launcher
writes the sweep summary after each job; Ctrl-C or SIGTERM is forwarded once to the running jobs, which stop with a
resumable checkpoint, and the command exits 130/143 once every job process has exited.
Config: conf/hydra/launcher/parallel.yaml.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from dlexp.errors import RunInterrupted
from dlexp.sweeps import worker
from dlexp.sweeps.summary import write_summary

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
MEMORY_PER_JOB_GB = 1.5  # peak RSS of a Fashion-MNIST convnet job is 1.07 GB (benchmarks/memory.py), most of it torch


class Unwind(BaseException):
    """Carries an engine error out through hydra.main, which would print any Exception as a traceback."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def cores() -> int:
    """The CPUs this process may run on (taskset and cpusets included)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def available_memory_gb() -> float | None:
    """MemAvailable of /proc/meminfo in GB (None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1e6  # kB
    except OSError:
        pass
    return None


def plan(n_jobs: int | str, threads: int | str, jobs: int, n_cores: int, memory_gb: float | None) -> tuple[int, int]:
    """(jobs at once, torch threads per job): auto jobs at once = min(jobs, cores, memory / MEMORY_PER_JOB_GB), at
    least 1; auto threads = cores // jobs at once, at least 1. Numbers are taken as given (at most `jobs` at once)."""
    if n_jobs == "auto":
        by_memory = int(memory_gb // MEMORY_PER_JOB_GB) if memory_gb is not None else n_cores
        at_once = max(1, min(jobs, n_cores, by_memory))
    else:
        at_once = max(1, min(int(n_jobs), jobs))
    per_job = max(1, n_cores // at_once) if threads == "auto" else int(threads)
    return at_once, per_job


def start_method(config: DictConfig) -> str:
    """fork for a CPU job on Linux (torch and Lightning are loaded already: it starts in milliseconds); spawn for a job
    that may use a GPU (CUDA does not survive a fork once initialised) and off Linux (fork is unsafe on macOS)."""
    on_cpu = str(OmegaConf.select(config, "trainer.accelerator", default="")) == "cpu"
    return "fork" if on_cpu and sys.platform == "linux" else "spawn"


@dataclass
class Running:
    """A job running in a process of its own."""

    number: int
    overrides: list[str]
    process: Any  # multiprocessing's Process
    conn: Connection  # its reply comes here


class ParallelLauncher(Launcher):
    """Hydra launcher: the sweep's jobs `n_jobs` at a time, each in a process of its own, `threads` torch threads."""

    def __init__(self, n_jobs: int | str = "auto", threads: int | str = "auto",
                 cuda_devices: Sequence[Any] | None = None) -> None:
        self.n_jobs, self.threads = n_jobs, threads
        self.cuda_devices = list(cuda_devices) if cuda_devices else None
        self.slots: Slots | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if self.slots is None:  # planned once: an Optuna search launches n_jobs trials at a time
            n_jobs, threads = plan(self.n_jobs, self.threads, len(job_overrides), cores(), available_memory_gb())
            log.info("Launching %d jobs, %d at a time, %d torch thread(s) each (%d cores)", len(job_overrides),
                     n_jobs, threads, cores())
            if n_jobs * threads > cores():
                log.warning("%d jobs x %d threads oversubscribe %d cores: every job slows down", n_jobs, threads,
                            cores())
            self.slots = Slots(n_jobs, threads, self.cuda_devices, (self.hydra_context, self.task_function))
        jobs = list(enumerate(job_overrides, start=initial_job_idx))
        for num, overrides in jobs:
            log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
        returns, signum = self.slots.run(jobs, configure=lambda num, o: self._job_config(num, o, sweep_dir),
                                         after_each=lambda: write_summary(sweep_dir))
        if signum is not None:
            write_summary(sweep_dir)
            raise Unwind(RunInterrupted(signum, f"dlexp resume {sweep_dir.resolve()}"))
        return returns

    def _job_config(self, num: int, overrides: Sequence[str], sweep_dir: Path) -> DictConfig:
        """A job's config as the sequential launcher composes it, with the sweep directory resolved here."""
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = num
            config.hydra.job.num = num
            config.hydra.sweep.dir = str(sweep_dir)  # dlexp_run_id is per process: the worker must not draw its own
        return config


class Slots:
    """n_jobs slots, each running one job at a time in a process of its own."""

    def __init__(self, size: int, threads: int, cuda_devices: list[Any] | None, start_args: tuple) -> None:
        self.size, self.threads, self.cuda_devices, self.start_args = size, threads, cuda_devices, start_args
        self.running: dict[int, Running] = {}  # slot -> its job
        self.signum: int | None = None  # a signal the launcher received (forwarded to the running jobs)

    def run(self, jobs: list[tuple[int, Sequence[str]]], configure: Callable[[int, Sequence[str]], DictConfig],
            after_each: Callable[[], Any]) -> tuple[list[JobReturn], int | None]:
        """Run the jobs (number, overrides), each in the next free slot with the config `configure` composes for it;
        returns their JobReturns in job order and the signal that stopped the sweep (None when every job ran)."""
        pending, returns = deque(jobs), {}
        stopped: int | None = None  # a job stopped by a signal of its own: no new jobs, the running ones finish
        with self._forwarding():
            while True:
                while pending and len(self.running) < self.size and self.signum is None and stopped is None:
                    num, overrides = pending.popleft()
                    self._start(num, configure(num, overrides))  # (not if a signal came while composing)
                if not self.running:
                    break
                for slot in self._ready():
                    kind, num, value = self._finish(slot)
                    if kind == "interrupted":
                        stopped = value
                    else:
                        returns[num] = value
                    after_each()
        return [returns[num] for num, _ in jobs if num in returns], self.signum or stopped

    def _start(self, num: int, config: DictConfig) -> None:
        """Start job `num` in the first free slot, with SIGINT and SIGTERM blocked (_signals_held); not after a
        signal (one that came while its config was composed)."""
        slot = min(set(range(self.size)) - set(self.running))
        context = multiprocessing.get_context(start_method(config))
        ours, theirs = context.Pipe(duplex=False)
        spawned = context.get_start_method() != "fork"
        singletons = Singleton.get_state()["instances"] if spawned else None  # a fork has them already
        process = context.Process(target=worker.main, name=f"dlexp-sweep-job-{num}", args=(
            theirs, *self.start_args, singletons, num, config, self.threads, os.getpid()))
        with _environment(worker.worker_env(slot, self.threads, self.cuda_devices)), _signals_held():
            if self.signum is not None:
                theirs.close()
                ours.close()
                return
            process.start()
            theirs.close()
            self.running[slot] = Running(num, list(config.hydra.overrides.task), process, ours)  # before a pending
            # signal reaches forward(), so that the new job gets it too

    def _ready(self) -> list[int]:
        """Slots whose job replied or exited (waits up to a second: signals are handled in between)."""
        jobs = self.running.items()
        ready = set(wait([r.conn for _, r in jobs] + [r.process.sentinel for _, r in jobs], timeout=1.0))
        return [slot for slot, r in jobs if r.conn in ready or r.process.sentinel in ready]

    def _finish(self, slot: int) -> tuple:
        """The reply of a finished job. A job whose process died without one is a row without metrics.json, as a
        run that fails is in a sweep that goes on."""
        job = self.running.pop(slot)
        try:
            reply = job.conn.recv()
        except (EOFError, OSError):
            reply = None
        job.process.join()
        job.conn.close()
        if reply is None:
            log.error("job %d: its process died (exit code %s); the sweep goes on", job.number, job.process.exitcode)
            ret = JobReturn(overrides=job.overrides, status=JobStatus.COMPLETED)
            ret.return_value = None
            return "done", job.number, ret
        return reply

    @contextmanager
    def _forwarding(self) -> Iterator[None]:
        """While jobs run: SIGINT and SIGTERM go to every running job (once per signal received); leaving early
        (an error here), the running jobs are stopped with SIGTERM and waited for."""

        def forward(signum: int, frame: Any) -> None:
            self.signum = self.signum or signum
            for job in self.running.values():
                if job.process.is_alive():
                    os.kill(job.process.pid, signum)

        previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            for job in self.running.values():  # only after an error: a normal end has none left
                job.process.terminate()
                job.process.join()
            self.running.clear()


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """os.environ with `values` while a worker starts (it inherits them; torch reads its thread count then)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM blocked while a job process starts: it inherits the mask and takes the signals over
    (dlexp/sweeps/worker.py) before it lets them in, so none is lost or handled by a copy of our handler; ours wait
    (pending) and reach forward() afterwards."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
