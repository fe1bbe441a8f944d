"""Fit, then test the best checkpoint: the metrics of a run, its TensorBoard hparams session and its summary."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.model_helpers import is_overridden

from dlexp.callbacks.run_state import StopOnSignal, WeightsAgreement
from dlexp.engine.build import Run

log = logging.getLogger("dlexp")
HPARAM_SECTIONS = ("model", "dataset", "optimizer", "scheduler", "regularizer", "trainer")


def fit_and_test(run: Run, ckpt_path: Path | None = None, stopper: StopOnSignal | None = None) -> dict[str, Any]:
    """Train (from ckpt_path when resuming), test the best checkpoint; returns the run's final metrics."""
    trainer, task, datamodule = run.trainer, run.task, run.datamodule
    n_params = sum(p.numel() for p in task.net.parameters())
    n_trainable = sum(p.numel() for p in task.net.parameters() if p.requires_grad)
    log.info("model %s: %s parameters (%s trainable); dataset %s: %s", run.model_name, f"{n_params:,}",
             f"{n_trainable:,}", datamodule.name, ", ".join(f"{k} {v}" for k, v in datamodule.sizes().items()))
    trainer.fit(task, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    if stopper is not None:
        stopper.check()
    # epoch means under their plain names (train/loss_epoch -> train/loss); per-step values dropped
    metrics: dict[str, Any] = {
        k.removesuffix("_epoch"): float(v) for k, v in trainer.callback_metrics.items()
        if k.startswith(("train/", "val/")) and not k.endswith("_step")
    }
    best = best_checkpoint(trainer)
    if is_overridden("test_step", task):  # GANs have no test metric of their own (see dlexp eval)
        tested = trainer.test(task, datamodule=datamodule, ckpt_path=best.best_model_path if best else None,
                              verbose=False)[0]
        metrics.update({k: float(v) for k, v in tested.items()})
        if stopper is not None:
            stopper.check()
    if best and best.best_model_score is not None:
        metrics[f"{best.monitor}_best"] = float(best.best_model_score)
    agreement = next((c.metrics for c in trainer.callbacks if isinstance(c, WeightsAgreement)), {})
    metrics.update(params=n_params, epochs=trainer.current_epoch, global_step=trainer.global_step,
                   world_size=trainer.world_size, **agreement)
    return metrics


def best_checkpoint(trainer: pl.Trainer) -> pl.callbacks.ModelCheckpoint | None:
    """The checkpoint callback that keeps best.ckpt by the monitored metric, once it has written one."""
    ckpt = next((c for c in trainer.checkpoint_callbacks if c.monitor), None)
    return ckpt if ckpt is not None and ckpt.best_model_path else None


def report(cfg: DictConfig, run: Run, metrics: dict[str, Any]) -> None:
    """Hand the finished run to its loggers (TensorBoard: an hparams session) and print the summary."""
    params = flat_hparams(cfg)
    for logger in run.loggers:
        end_run = getattr(logger, "end_run", None)
        if end_run is not None:  # a tracker (dlexp/engine/trackers.py) keeps the run's files and ends its run
            end_run(metrics)
            continue
        if isinstance(logger, pl.loggers.TensorBoardLogger):
            log_hparams_session(logger, params, metrics)
        else:
            logger.log_hyperparams(params)
        logger.finalize("success")
    best = best_checkpoint(run.trainer)
    log.info("== summary ==")
    log.info("model %s on %s: %d epochs, %d steps, %.1f s", run.model_name, run.datamodule.name,
             metrics["epochs"], metrics["global_step"], metrics["wall_s"])
    if best is not None and f"{best.monitor}_best" in metrics:
        log.info("best %s %.4f (%s)", best.monitor, metrics[f"{best.monitor}_best"], best.best_model_path)
    stage = "test/" if any(k.startswith("test/") for k in metrics) else "train/"  # GANs: last epoch's losses
    log.info("%s", "  ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if k.startswith(stage)))


def log_hparams_session(logger: pl.loggers.TensorBoardLogger, params: dict[str, Any], metrics: dict[str, Any]) -> None:
    """This run as a session of TensorBoard's hparams view, with its final metrics as scalars.

    Unlike Lightning's log_hyperparams, no per-run experiment summary: TensorBoard then builds the experiment from
    every session under --logdir, so all runs of a sweep (with their different keys) show up in one table.
    """
    # deferred: tensorboard (0.1-0.3 s of imports) loads only for runs that log to TensorBoard (start-up)
    from torch.utils.tensorboard.summary import hparams

    best = {k: v for k, v in metrics.items() if k.endswith("_best") and isinstance(v, float)}
    logger.log_metrics(best, step=metrics["global_step"])  # test/ and val/ are logged already, *_best is not
    _, session_start, session_end = hparams(params, best)
    writer = logger.experiment._get_file_writer()
    writer.add_summary(session_start)
    writer.add_summary(session_end)


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The config as flat scalar hparams for TensorBoard's hparams view (lists as strings)."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}/")
        else:
            flat[prefix.rstrip("/")] = node if isinstance(node, (int, float, str, bool)) else str(node)

    container = OmegaConf.to_container(cfg, resolve=True)
    for section in HPARAM_SECTIONS:
        walk(container.get(section, {}), f"{section}/")
    flat["seed"] = cfg.seed
    return flat
