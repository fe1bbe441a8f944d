"""hydra/launcher=parallel's plan: how many jobs at once and how many threads each, never more threads than cores
when left to auto; what a job's environment says (dlexp/sweeps/parallel.py, dlexp/sweeps/worker.py)."""
from __future__ import annotations

import pickle

import pytest
from hydra.core.utils import JobReturn, JobStatus

from dlexp.config.compose import compose
from dlexp.sweeps.parallel import MEMORY_PER_JOB_GB, cores, plan, start_method
from dlexp.sweeps.worker import THREAD_VARS, WORKER_ENV, _picklable, worker_env


@pytest.mark.parametrize("jobs, n_cores, expected", [
    (6, 2, (2, 1)),     # the optimizers sweep on this 2-core machine: 2 jobs of 1 thread
    (6, 16, (6, 2)),    # fewer jobs than cores: every job at once, the cores split (12 of 16 threads)
    (3, 8, (3, 2)),
    (1, 8, (1, 8)),     # one job: all the cores
    (40, 16, (16, 1)),
    (5, 1, (1, 1)),
])
def test_auto_splits_the_cores_and_never_oversubscribes(jobs, n_cores, expected):
    at_once, threads = plan("auto", "auto", jobs, n_cores, memory_gb=1000.0)
    assert (at_once, threads) == expected
    assert at_once * threads <= n_cores and at_once <= jobs


def test_auto_runs_no_more_jobs_than_memory_holds():
    assert plan("auto", "auto", 6, 16, memory_gb=3 * MEMORY_PER_JOB_GB + 0.1) == (3, 5)
    assert plan("auto", "auto", 6, 16, memory_gb=0.5) == (1, 16)  # at least one job
    assert plan("auto", "auto", 6, 4, memory_gb=None) == (4, 1)   # memory unknown: cores decide


def test_numbers_are_taken_as_given():
    assert plan(3, "auto", 6, 2, 100.0) == (3, 1)  # more jobs than cores when asked (the launcher warns)
    assert plan(8, "auto", 2, 16, 100.0) == (2, 8)  # never more at once than the sweep has jobs
    assert plan(1, 1, 6, 2, 100.0) == (1, 1)        # one at a time at one thread: the sequential reference
    assert plan("auto", 4, 6, 16, 100.0) == (6, 4)


def test_cores_counts_what_this_process_may_use():
    assert 1 <= cores()


def test_a_job_environment_sets_its_threads_before_torch_loads_and_picks_a_gpu():
    env = worker_env(3, 2, None)
    assert all(env[var] == "2" for var in THREAD_VARS) and env[WORKER_ENV] == "3"
    assert "CUDA_VISIBLE_DEVICES" not in env
    assert [worker_env(slot, 1, [0, 1])["CUDA_VISIBLE_DEVICES"] for slot in range(4)] == ["0", "1", "0", "1"]


def test_a_failed_job_return_crosses_the_process_boundary():
    class Unpicklable(Exception):
        def __reduce__(self):
            raise TypeError("no")

    ret = JobReturn(overrides=["optimizer=sgd"], status=JobStatus.FAILED)
    ret._return_value = Unpicklable("boom")
    back = pickle.loads(pickle.dumps(_picklable(ret)))
    assert back.status == JobStatus.FAILED and "Unpicklable: boom" in str(back._return_value)


def test_cpu_jobs_fork_and_jobs_that_may_use_a_gpu_start_afresh():
    import sys

    cpu, gpu, ddp = (compose([f"trainer={t}"]) for t in ("cpu", "gpu", "ddp"))
    assert start_method(cpu) == ("fork" if sys.platform == "linux" else "spawn")
    assert start_method(gpu) == start_method(ddp) == "spawn"  # CUDA does not survive a fork


def test_the_launcher_config_composes():
    launcher = compose(["hydra/launcher=parallel"], return_hydra_config=True).hydra.launcher
    assert launcher._target_ == "hydra_plugins.dlexp.ParallelLauncher"
    assert (launcher.n_jobs, launcher.threads, launcher.cuda_devices) == ("auto", "auto", None)
