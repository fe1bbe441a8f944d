"""`dlexp train`: Hydra's entry, then build -> fit -> test -> metrics.json and summary, with the exit codes of C1."""
from __future__ import annotations

import atexit
import gc
import logging
import shutil
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dlexp import ddp
from dlexp.build import build, net_from_config  # noqa: F401  (net_from_config: dlexp sample)
from dlexp.config import ConfigError, conf_dir, register_resolvers
from dlexp.io import atomic_write_json, atomic_write_text

log = logging.getLogger("dlexp")
# exit in 0.2 s, not 1.4 s: the interpreter's last garbage collections would walk the ~500,000 objects torch and
# Lightning made (benchmarks/overhead.py). Frozen objects are still freed by refcount; only cycles alive at exit
# are left to the OS, and nothing dlexp writes waits on them (files are closed, loggers finalised).
atexit.register(gc.freeze)


def run(args: list[str]) -> int:
    """Run Hydra's main with `args` (overrides and Hydra flags such as -m) and return the exit code."""
    import hydra

    register_resolvers()
    sys.argv = ["dlexp train", *args, *ddp.rank_overrides()]  # a rank > 0 of torchrun/srun: scratch directories
    hydra.main(config_path=str(conf_dir()), config_name="train", version_base="1.3")(task)()
    return 0


def task(cfg: DictConfig) -> float | None:
    """Hydra's task function: one run in the run directory Hydra made; returns the monitored metric."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra")}
    return execute(cfg, Path(hydra_cfg.runtime.output_dir), choices, list(hydra_cfg.overrides.task), multirun)


def execute(cfg: DictConfig, run_dir: Path, choices: dict[str, Any], overrides: list[str], multirun: bool = False,
            ckpt_path: Path | None = None) -> float | None:
    """Build, train, test and summarise in run_dir; with ckpt_path, continue that run from the checkpoint.

    Exit codes (SystemExit): 2 for a config or data problem found before training (a new run directory is
    removed), 1 for a failed run, 130/143 after Ctrl-C/SIGTERM with a resumable checkpoint written.
    """
    import signal

    from dlexp.callbacks.run_state import RunInterrupted, StopOnSignal
    from dlexp.data.sources import DataNotFound

    _route_lightning_logs()
    rank_zero = ddp.launcher_rank() == 0  # torchrun/srun start one dlexp per rank: global rank 0 writes and logs
    if not rank_zero:
        ddp.quiet_rank()
    start = time.time()
    previous = _read_metrics(run_dir) if ckpt_path else {}
    stopper = StopOnSignal(str(run_dir / "checkpoints" / "last.ckpt"))
    stopper.install()
    try:
        try:
            purge = _logged_step(ckpt_path) if ckpt_path else None
            parts = build(cfg, choices.get("model", "?"), extra_callbacks=[stopper], tensorboard_purge_step=purge)
        except Exception as e:  # a config or data problem found before training
            message = str(e) if isinstance(e, (ConfigError, DataNotFound)) else f"{type(e).__name__}: {e}"
            print(f"error: {message}", file=sys.stderr)
            if multirun:  # one bad combination of a sweep: recorded as failed, the sweep goes on
                atomic_write_text(run_dir / "overrides.yaml", OmegaConf.to_yaml(overrides))
                _write_metrics(run_dir, {"status": "failed", "error": message, "wall_s": _wall(start, previous)})
                return None
            if ckpt_path is None:
                _discard(run_dir)
            raise SystemExit(2)
        if ckpt_path is None and rank_zero:
            config = {**OmegaConf.to_container(cfg, resolve=True), "choices": choices}
            atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(config))
            atomic_write_text(run_dir / "overrides.yaml", OmegaConf.to_yaml(overrides))
        # DDP on one machine: the other local ranks get the same job (see dlexp/ddp.py)
        job = {"config": OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True)),
               "model": choices.get("model", "?"), "ckpt_path": str(ckpt_path) if ckpt_path else None,
               "purge_step": purge}

        def fail(message: str) -> None:
            _write_metrics(run_dir, {**previous, "status": "failed", "error": message,
                                     "wall_s": _wall(start, previous)})

        try:
            stopper.check()
            with ddp.local_ranks(parts["trainer"], job, fail):
                metrics = fit_and_test(cfg, parts, start - previous.get("wall_s", 0.0), ckpt_path, stopper)
        except (RunInterrupted, KeyboardInterrupt) as e:
            signum = getattr(e, "signum", signal.SIGINT)
            if rank_zero:
                _write_metrics(run_dir, {**previous, "status": "interrupted", "wall_s": _wall(start, previous),
                                         "resume": f"dlexp resume {run_dir}"})
                print(f"interrupted by {signal.Signals(signum).name}: resume with\n  dlexp resume {run_dir}",
                      file=sys.stderr)
            raise SystemExit(128 + signum)  # 130 after Ctrl-C, 143 after SIGTERM; a sweep stops here too
        except Exception as e:
            log.debug("".join(traceback.format_exception(e)))
            if rank_zero:
                fail(f"{type(e).__name__}: {e}")
            where = f"traceback in {run_dir / 'train.log'}" if rank_zero else f"DDP rank {ddp.launcher_rank()}"
            print(f"error: run failed: {type(e).__name__}: {e} ({where})", file=sys.stderr)
            if multirun:  # recorded as failed in metrics.json and the sweep summary; the sweep goes on
                return None
            raise SystemExit(1)
    finally:
        stopper.uninstall()
    if rank_zero:
        log.info("run_dir: %s", run_dir)
    value = metrics.get(f"{cfg.monitor}_best", metrics.get(cfg.monitor)) if cfg.monitor else None  # as summaries rank
    return float(value) if value is not None else None


def _read_metrics(run_dir: Path) -> dict[str, Any]:
    import json

    path = run_dir / "metrics.json"
    return {k: v for k, v in json.loads(path.read_text()).items() if k in ("wall_s",)} if path.is_file() else {}


def _wall(start: float, previous: dict[str, Any]) -> float:
    return round(time.time() - start + previous.get("wall_s", 0.0), 2)


def _logged_step(ckpt_path: Path) -> int:
    """The logging step training continues at: where TensorBoard should forget a killed attempt's extra points."""
    from dlexp.checkpoint import load_checkpoint

    loop = load_checkpoint(ckpt_path).get("loops", {}).get("fit_loop", {})
    step = int(loop.get("epoch_loop.state_dict", {}).get("_batches_that_stepped", 0))
    batch = loop.get("epoch_loop.batch_progress", {}).get("current", {})
    # saved at a batch's end (every_n_train_steps): that batch was logged at `step` before the counter moved on
    return step + 1 if batch.get("processed", 0) > batch.get("completed", 0) else step


def _route_lightning_logs() -> None:
    """Lightning adds its own console handler when imported before logging is set up: send its records to ours."""
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip"))  # ads
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's own deprecation, not the user's
    warnings.filterwarnings("ignore", message=".*no `validation_step`.*")  # GANs: no validation, by design


def _discard(run_dir: Path) -> None:
    logging.shutdown()
    for handler in logging.getLogger().handlers:
        handler.close()
    shutil.rmtree(run_dir, ignore_errors=True)


def fit_and_test(cfg: DictConfig, parts: dict[str, Any], start: float, ckpt_path: Path | None = None,
                 stopper: Any = None) -> dict[str, Any]:
    """Train, test the best checkpoint, write metrics.json and TensorBoard hparams, print the summary."""
    import pytorch_lightning as pl
    from pytorch_lightning.utilities.model_helpers import is_overridden

    from dlexp.callbacks.run_state import WeightsAgreement

    trainer, task, datamodule = parts["trainer"], parts["task"], parts["datamodule"]
    n_params = sum(p.numel() for p in task.net.parameters())
    n_trainable = sum(p.numel() for p in task.net.parameters() if p.requires_grad)
    log.info("model %s: %s parameters (%s trainable); dataset %s: %s", parts["model_name"], f"{n_params:,}",
             f"{n_trainable:,}", datamodule.name, ", ".join(f"{k} {v}" for k, v in datamodule.sizes().items()))
    trainer.fit(task, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    if stopper is not None:
        stopper.check()
    agreement = next((c.metrics for c in trainer.callbacks if isinstance(c, WeightsAgreement)), {})
    # epoch means under their plain names (train/loss_epoch -> train/loss); per-step values dropped
    metrics: dict[str, Any] = {
        k.removesuffix("_epoch"): float(v) for k, v in trainer.callback_metrics.items()
        if k.startswith(("train/", "val/")) and not k.endswith("_step")
    }
    ckpt = next((c for c in trainer.checkpoint_callbacks if c.monitor), None)  # best by the monitored metric
    best_path = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
    if is_overridden("test_step", task):  # GANs have no test metric of their own (see dlexp eval)
        test_metrics = trainer.test(task, datamodule=datamodule, ckpt_path=best_path, verbose=False)[0]
        metrics.update({k: float(v) for k, v in test_metrics.items()})
        if stopper is not None:
            stopper.check()
    if best_path and ckpt.best_model_score is not None:
        metrics[f"{ckpt.monitor}_best"] = float(ckpt.best_model_score)
    metrics.update(params=n_params, epochs=trainer.current_epoch, global_step=trainer.global_step,
                   wall_s=round(time.time() - start, 2), status="completed", world_size=trainer.world_size, **agreement)
    if not trainer.is_global_zero:  # DDP: rank 0 writes metrics.json, logs and the summary
        return metrics
    run_dir = Path(cfg.run_dir)
    _write_metrics(run_dir, metrics)
    for logger in parts["loggers"]:
        if isinstance(logger, pl.loggers.TensorBoardLogger):
            _log_hparams_session(logger, _flat_hparams(cfg), metrics)
        else:
            logger.log_hyperparams(_flat_hparams(cfg))
        logger.finalize("success")
    _summary(ckpt.monitor if best_path else None, parts, metrics, best_path)
    return metrics


def _write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    """Strict JSON: a non-finite value (a skipped NaN batch's epoch mean) is written as null."""
    import math

    clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in metrics.items()}
    atomic_write_json(run_dir / "metrics.json", dict(sorted(clean.items())))


def _log_hparams_session(logger: Any, params: dict[str, Any], metrics: dict[str, Any]) -> None:
    """This run as a session of TensorBoard's hparams view, with its final metrics as scalars.

    Unlike Lightning's log_hyperparams, no per-run experiment summary: TensorBoard then builds the experiment from
    every session under --logdir, so all runs of a sweep (with their different keys) show up in one table.
    """
    from torch.utils.tensorboard.summary import hparams

    best = {k: v for k, v in metrics.items() if k.endswith("_best") and isinstance(v, float)}
    logger.log_metrics(best, step=metrics["global_step"])  # test/ and val/ are logged already, *_best is not
    _, session_start, session_end = hparams(params, best)
    writer = logger.experiment._get_file_writer()
    writer.add_summary(session_start)
    writer.add_summary(session_end)


def _flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The config as flat scalar hparams for TensorBoard's hparams view (lists as strings)."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}/")
        else:
            flat[prefix.rstrip("/")] = node if isinstance(node, (int, float, str, bool)) else str(node)

    container = OmegaConf.to_container(cfg, resolve=True)
    for section in ("model", "dataset", "optimizer", "scheduler", "regularizer", "trainer"):
        walk(container.get(section, {}), f"{section}/")
    flat["seed"] = cfg.seed
    return flat


def _summary(monitor: str | None, parts: dict[str, Any], metrics: dict[str, Any], best_path: str | None) -> None:
    monitor_best = metrics.get(f"{monitor}_best")
    stage = "test/" if any(k.startswith("test/") for k in metrics) else "train/"  # GANs: last epoch's losses
    tests = "  ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if k.startswith(stage))
    log.info("== summary ==")
    log.info("model %s on %s: %d epochs, %d steps, %.1f s", parts["model_name"], parts["datamodule"].name,
             metrics["epochs"], metrics["global_step"], metrics["wall_s"])
    if monitor_best is not None:
        log.info("best %s %.4f (%s)", monitor, monitor_best, best_path)
    log.info("%s", tests)
