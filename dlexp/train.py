"""`dlexp train`: compose -> instantiate -> fit -> test -> summary. The only module besides cli.py that sees a DictConfig."""
from __future__ import annotations

import inspect
import logging
import shutil
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dlexp.config import ConfigError, conf_dir, register_resolvers
from dlexp.io import atomic_write_json, atomic_write_text

log = logging.getLogger("dlexp")
INIT_KEYS = ("init_from", "init_include", "init_exclude")
last_sweep_dir: str | None = None  # read by cli.py to print multirun_dir


def run(args: list[str]) -> int:
    """Run Hydra's main with `args` (overrides and Hydra flags such as -m) and return the exit code."""
    import hydra

    register_resolvers()
    sys.argv = ["dlexp train", *args]
    hydra.main(config_path=str(conf_dir()), config_name="train", version_base="1.3")(task)()
    return 0


def task(cfg: DictConfig) -> float | None:
    """One run in its run directory (made by Hydra); returns the monitored metric for sweepers."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    _route_lightning_logs()
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    global last_sweep_dir
    last_sweep_dir = hydra_cfg.sweep.dir if multirun else None
    start = time.time()
    try:
        parts = build(cfg, model_name=hydra_cfg.runtime.choices.get("model", "?"))
    except Exception as e:  # a config or data problem found before training: no run directory is left
        from dlexp.data.sources import DataNotFound

        _discard(run_dir)
        message = str(e) if isinstance(e, (ConfigError, DataNotFound)) else f"{type(e).__name__}: {e}"
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)

    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    atomic_write_text(run_dir / "overrides.yaml", OmegaConf.to_yaml(list(hydra_cfg.overrides.task)))
    try:
        metrics = fit_and_test(cfg, parts, start)
    except Exception as e:
        log.debug("".join(traceback.format_exception(e)))
        _write_metrics(run_dir, {"status": "failed", "error": f"{type(e).__name__}: {e}",
                                 "wall_s": round(time.time() - start, 2)})
        print(f"error: run failed: {type(e).__name__}: {e} (traceback in {run_dir / 'train.log'})", file=sys.stderr)
        if multirun:
            return None
        raise SystemExit(1)
    log.info("run_dir: %s", run_dir)
    value = metrics.get(cfg.monitor)
    return float(value) if value is not None else None


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


def build(cfg: DictConfig, model_name: str) -> dict[str, Any]:
    """Instantiate data, net, task, callbacks, loggers and trainer; load the data (fails fast on missing files)."""
    import pytorch_lightning as pl
    import torch

    from dlexp.callbacks.training import GradientClipping, RunInfo
    from dlexp.transfer import load_matching

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = _make("dataset", cfg.dataset, seed=cfg.seed)
    datamodule.load()
    regularization = _make("regularizer", cfg.regularizer)
    if regularization.dropout > 0 and "dropout" not in cfg.model:
        raise ConfigError(f"model '{model_name}' has no dropout; regularizer=dropout needs a model with a dropout option")
    net = net_from_config(OmegaConf.to_container(cfg.model, resolve=True))
    if cfg.model.get("init_from"):
        load_matching(net, cfg.model.init_from, list(cfg.model.init_include), list(cfg.model.init_exclude))
    optimizer, scheduler = _make("optimizer", cfg.optimizer), _make("scheduler", cfg.scheduler)
    _dry_run(optimizer, scheduler)
    # _partial_: Hydra would turn objects passed as kwargs (the Regularization dataclass) into configs
    make_task = _make("task", cfg.task, _partial_=True)
    extra = {}
    if cfg.get("gan_loss") is not None:
        if "loss" not in inspect.signature(make_task).parameters:
            raise ConfigError(f"gan_loss needs a GAN model (a generator and a discriminator); model '{model_name}' "
                              "has none")
        extra["loss"] = _make("gan_loss", cfg.gan_loss)
    try:
        task = make_task(net=net, optimizer=optimizer, scheduler=scheduler, regularization=regularization, **extra)
        with torch.no_grad():  # one small batch through the nets: shapes that do not fit fail here, not mid-run
            x, y = datamodule.example_batch(4)
            task.eval().check_batch(x, y)
            task.train()
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"{model_name}: {e}") from None
    callbacks = [_make(f"callbacks.{k}", c) for k, c in (cfg.get("callbacks") or {}).items() if c is not None]
    callbacks.append(RunInfo(OmegaConf.to_container(cfg, resolve=True)))
    loggers = [_make(f"logger.{k}", c) for k, c in (cfg.get("logger") or {}).items()]
    if not loggers:  # Lightning refuses an LR monitor with nothing to log to
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    # the trainer's clip settings become the clipping callback: Lightning's own refuses manual optimization (GANs)
    if cfg.trainer.get("gradient_clip_val"):
        try:
            callbacks.append(GradientClipping(cfg.trainer.gradient_clip_algorithm, cfg.trainer.gradient_clip_val))
        except ValueError as e:
            raise ConfigError(f"trainer: {e}") from None
    trainer = _make(
        "trainer",
        cfg.trainer,
        gradient_clip_val=None,
        callbacks=callbacks,
        logger=loggers or False,
        default_root_dir=cfg.run_dir,
        enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks),
        enable_progress_bar=any(isinstance(c, pl.callbacks.ProgressBar) for c in callbacks),
        enable_model_summary=False,
    )
    return {"datamodule": datamodule, "task": task, "trainer": trainer, "loggers": loggers, "model_name": model_name}


def net_from_config(model: dict[str, Any]) -> Any:
    """The net of a resolved model config (the transfer-learning keys are not the net's)."""
    return _make("model", {k: v for k, v in model.items() if k not in INIT_KEYS})


def _dry_run(optimizer: Any, scheduler: Any) -> None:
    """Build the optimizer and schedule on a dummy parameter, so bad values (lr < 0) fail before training."""
    import torch

    try:
        opt = optimizer(params=[torch.zeros(1, requires_grad=True)])
    except Exception as e:
        raise ConfigError(f"optimizer: {type(e).__name__}: {e}") from None
    try:
        if scheduler is not None:
            scheduler(opt, total_steps=100, steps_per_epoch=10)
    except Exception as e:
        raise ConfigError(f"scheduler: {type(e).__name__}: {e}") from None


def _make(key: str, node: Any, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, with a failure reported as one line naming the config key."""
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except Exception as e:
        cause = e.__cause__ or e
        lines = str(cause).strip().splitlines()
        raise ConfigError(f"{key}: {type(cause).__name__}: {lines[0] if lines else ''}") from None


def fit_and_test(cfg: DictConfig, parts: dict[str, Any], start: float) -> dict[str, Any]:
    """Train, test the best checkpoint, write metrics.json and TensorBoard hparams, print the summary."""
    trainer, task, datamodule = parts["trainer"], parts["task"], parts["datamodule"]
    n_params = sum(p.numel() for p in task.net.parameters())
    n_trainable = sum(p.numel() for p in task.net.parameters() if p.requires_grad)
    log.info("model %s: %s parameters (%s trainable); dataset %s: %s", parts["model_name"], f"{n_params:,}",
             f"{n_trainable:,}", datamodule.name, ", ".join(f"{k} {v}" for k, v in datamodule.sizes().items()))
    import pytorch_lightning as pl
    from pytorch_lightning.utilities.model_helpers import is_overridden

    trainer.fit(task, datamodule=datamodule)
    # epoch means under their plain names (train/loss_epoch -> train/loss); per-step values dropped
    metrics: dict[str, Any] = {
        k.removesuffix("_epoch"): float(v) for k, v in trainer.callback_metrics.items()
        if k.startswith(("train/", "val/")) and not k.endswith("_step")
    }
    ckpt = trainer.checkpoint_callback
    best_path = ckpt.best_model_path if cfg.monitor and ckpt is not None and ckpt.best_model_path else None
    if is_overridden("test_step", task):  # GANs have no test metric of their own (see dlexp eval)
        test_metrics = trainer.test(task, datamodule=datamodule, ckpt_path=best_path, verbose=False)[0]
        metrics.update({k: float(v) for k, v in test_metrics.items()})
    if best_path and ckpt.best_model_score is not None:
        metrics[f"{cfg.monitor}_best"] = float(ckpt.best_model_score)
    metrics.update(params=n_params, epochs=trainer.current_epoch, global_step=trainer.global_step,
                   wall_s=round(time.time() - start, 2), status="completed")
    run_dir = Path(cfg.run_dir)
    _write_metrics(run_dir, metrics)
    for logger in parts["loggers"]:
        if isinstance(logger, pl.loggers.TensorBoardLogger):  # hparams view with the final metrics
            logger.log_hyperparams(_flat_hparams(cfg), {k: v for k, v in metrics.items() if isinstance(v, float)})
        else:
            logger.log_hyperparams(_flat_hparams(cfg))
        logger.finalize("success")
    _summary(cfg, parts, metrics, best_path)
    return metrics


def _write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    atomic_write_json(run_dir / "metrics.json", dict(sorted(metrics.items())))


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


def _summary(cfg: DictConfig, parts: dict[str, Any], metrics: dict[str, Any], best_path: str | None) -> None:
    monitor_best = metrics.get(f"{cfg.monitor}_best")
    stage = "test/" if any(k.startswith("test/") for k in metrics) else "train/"  # GANs: last epoch's losses
    tests = "  ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if k.startswith(stage))
    log.info("== summary ==")
    log.info("model %s on %s: %d epochs, %d steps, %.1f s", parts["model_name"], parts["datamodule"].name,
             metrics["epochs"], metrics["global_step"], metrics["wall_s"])
    if monitor_best is not None:
        log.info("best %s %.4f (%s)", cfg.monitor, monitor_best, best_path)
    log.info("%s", tests)
