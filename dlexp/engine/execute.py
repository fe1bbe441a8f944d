"""One run from a composed config: build -> fit -> test -> record (metrics.json) -> summary.

It ends in one of three ways (docs/contracts.md, C1 and C3): completed (returns the monitored value), a
ConfigError before training (a new run directory is removed), RunFailed or RunInterrupted (recorded in
metrics.json, a resumable checkpoint kept). dlexp/cli.py turns the errors into exit codes.
"""
from __future__ import annotations

import atexit
import gc
import logging
import shutil
import signal
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dlexp.callbacks.run_state import StopOnSignal
from dlexp.data.sources import DataNotFound
from dlexp.engine import ddp, ranks
from dlexp.engine.build import Run, build
from dlexp.engine.checkpoint import load_checkpoint
from dlexp.engine.fit import fit_and_test, report
from dlexp.engine.logs import close_handlers, route_lightning_logs
from dlexp.engine.record import RunRecord
from dlexp.engine.rundir import LOG, RunDir
from dlexp.errors import ConfigError, RunFailed, RunInterrupted

log = logging.getLogger("dlexp")
# exit in 0.2 s, not 1.4 s: the interpreter's last garbage collections would walk the ~500,000 objects torch and
# Lightning made (benchmarks/overhead.py). Frozen objects are still freed by refcount; only cycles alive at exit
# are left to the OS, and nothing dlexp writes waits on them (files are closed, loggers finalised).
atexit.register(gc.freeze)


def execute(cfg: DictConfig, run_dir: Path, choices: dict[str, Any], overrides: list[str], in_sweep: bool = False,
            ckpt_path: Path | None = None) -> float | None:
    """Build, train, test and summarise in run_dir; with ckpt_path, continue that run from the checkpoint.

    Returns the monitored metric's best value (what a sweep ranks by). In a sweep a run that cannot be built
    leaves its directory with status failed; outside one a new run's directory is removed.
    """
    route_lightning_logs()
    rank_zero = ranks.launcher_rank() == 0  # torchrun/srun start one dlexp per rank: global rank 0 writes and logs
    if not rank_zero:
        ranks.quiet_rank()
    folder = RunDir(run_dir)
    record = RunRecord(folder, resumed=ckpt_path is not None, writes=rank_zero)
    stopper = StopOnSignal(str(folder.last_checkpoint))
    stopper.install()
    try:
        purge = logged_step(ckpt_path) if ckpt_path else None  # read once: the build and the DDP job use it
        run = _build(cfg, choices, purge, stopper)
    except ConfigError as e:
        if in_sweep:  # one bad combination of a sweep: recorded as failed, the sweep goes on
            folder.write_overrides(overrides)
            record.failed(str(e))
        elif ckpt_path is None:
            close_handlers()
            shutil.rmtree(run_dir, ignore_errors=True)
        stopper.uninstall()
        raise
    try:
        if ckpt_path is None and rank_zero:
            folder.write_config(OmegaConf.to_container(cfg, resolve=True), choices)
            folder.write_overrides(overrides)
        metrics = _train(cfg, run, choices, ckpt_path, purge, stopper, record)
    finally:
        stopper.uninstall()
    if rank_zero:
        report(cfg, run, record.completed(metrics))
        log.info("run_dir: %s", run_dir)
    value = metrics.get(f"{cfg.monitor}_best", metrics.get(cfg.monitor)) if cfg.monitor else None  # as summaries rank
    return float(value) if value is not None else None


def _build(cfg: DictConfig, choices: dict[str, Any], purge: int | None, stopper: StopOnSignal) -> Run:
    """build(), with any failure as a ConfigError (a config or data problem found before training)."""
    try:
        return build(cfg, choices.get("model", "?"), extra_callbacks=[stopper], tensorboard_purge_step=purge)
    except (ConfigError, DataNotFound) as e:
        raise ConfigError(str(e)) from None
    except Exception as e:
        raise ConfigError(f"{type(e).__name__}: {e}") from None


def _train(cfg: DictConfig, run: Run, choices: dict[str, Any], ckpt_path: Path | None, purge: int | None,
           stopper: StopOnSignal, record: RunRecord) -> dict[str, Any]:
    """fit_and_test on every local rank; an interruption or a failure is recorded, then raised."""
    run_dir = record.run_dir.path
    # DDP on one machine: the other local ranks get the same job (dlexp/engine/ddp.py)
    job = {"config": OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True)), "model": choices.get("model", "?"),
           "ckpt_path": str(ckpt_path) if ckpt_path else None,
           "purge_step": purge}
    try:
        stopper.check()
        with ddp.local_ranks(run.trainer, job, record.failed):
            return fit_and_test(run, ckpt_path, stopper)
    except (RunInterrupted, KeyboardInterrupt) as e:
        resume = f"dlexp resume {run_dir}"
        record.interrupted(resume)
        raise RunInterrupted(getattr(e, "signum", signal.SIGINT), resume) from None
    except Exception as e:
        log.debug("".join(traceback.format_exception(e)))
        record.failed(f"{type(e).__name__}: {e}")
        where = f"traceback in {run_dir / LOG}" if record.writes else f"DDP rank {ranks.launcher_rank()}"
        raise RunFailed(f"run failed: {type(e).__name__}: {e} ({where})") from e


def logged_step(ckpt_path: Path) -> int:
    """The logging step training continues at: where TensorBoard should forget a killed attempt's extra points."""
    loop = load_checkpoint(ckpt_path).get("loops", {}).get("fit_loop", {})
    step = int(loop.get("epoch_loop.state_dict", {}).get("_batches_that_stepped", 0))
    batch = loop.get("epoch_loop.batch_progress", {}).get("current", {})
    # saved at a batch's end (every_n_train_steps): that batch was logged at `step` before the counter moved on
    return step + 1 if batch.get("processed", 0) > batch.get("completed", 0) else step
