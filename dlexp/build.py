"""Instantiation: a composed config -> datamodule, task (net, optimizer, schedule, losses), callbacks, trainer.

Every failure here is a config or data problem and is reported as one line before training starts.
"""
from __future__ import annotations

import inspect
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dlexp.config import ConfigError

INIT_KEYS = ("init_from", "init_include", "init_exclude")


def build(cfg: DictConfig, model_name: str, extra_callbacks: list | None = None,
          tensorboard_purge_step: int | None = None) -> dict[str, Any]:
    """Instantiate data, net, task, callbacks, loggers and trainer; load the data (fails fast on missing files).

    tensorboard_purge_step: on resume, TensorBoard drops what an earlier attempt logged from this step on.
    """
    import pytorch_lightning as pl
    import torch

    from dlexp import ddp
    from dlexp.callbacks.run_state import RNGState, WeightsAgreement
    from dlexp.callbacks.training import GradientClipping, RunInfo
    from dlexp.checkpoint import AtomicCheckpointIO
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
    if _channels_last(cfg):  # conv kernels and batches NHWC: faster convolutions on GPUs and with oneDNN on CPUs
        net = net.to(memory_format=torch.channels_last)
        datamodule.memory_format = torch.channels_last
    if cfg.get("compile"):
        for module in [getattr(net, "generator", None), getattr(net, "discriminator", None)]:
            if module is not None:  # a GAN pair: the task calls its two nets, not the pair
                module.compile()
        net.compile()  # in place: state_dict keys (checkpoints) stay those of the plain net
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
        task = make_task(net=net, optimizer=optimizer, scheduler=scheduler, regularization=regularization,
                         on_nan=cfg.on_nan, **extra)
        with torch.no_grad():  # one small batch through the nets: shapes that do not fit fail here, not mid-run
            x, y = datamodule.example_batch(4)
            task.eval().check_batch(x, y)
            task.train()
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"{model_name}: {e}") from None
    callbacks = [_make(f"callbacks.{k}", c) for k, c in (cfg.get("callbacks") or {}).items() if c is not None]
    # a best-checkpoint with nothing to monitor (GANs have no validation metric unless val/fid is on): none
    callbacks = [c for c in callbacks if not (type(c) is pl.callbacks.ModelCheckpoint and c.monitor is None)]
    callbacks += [RunInfo(OmegaConf.to_container(cfg, resolve=True)), RNGState(), WeightsAgreement(),
                  *(extra_callbacks or [])]
    purge = {"purge_step": tensorboard_purge_step} if tensorboard_purge_step is not None else {}
    loggers = [_make(f"logger.{k}", c, **(purge if "TensorBoard" in c.get("_target_", "") else {}))
               for k, c in (cfg.get("logger") or {}).items()]
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
        strategy=ddp.strategy(cfg.trainer.get("strategy", "auto"), task, callbacks),
        gradient_clip_val=None,
        callbacks=callbacks,
        logger=loggers or False,
        default_root_dir=cfg.run_dir,
        enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks),
        enable_progress_bar=any(isinstance(c, pl.callbacks.ProgressBar) for c in callbacks),
        enable_model_summary=False,
        plugins=[AtomicCheckpointIO()],
    )
    if cfg.on_nan == "skip" and task.automatic_optimization and ddp.processes(trainer) > 1:
        raise ConfigError(f"on_nan=skip cannot skip a batch of model '{model_name}' under DDP (every rank must run "
                          "the backward pass; GANs can skip): use on_nan=stop")
    return {"datamodule": datamodule, "task": task, "trainer": trainer, "loggers": loggers, "model_name": model_name}


def _channels_last(cfg: DictConfig) -> bool:
    value = cfg.get("channels_last", False)
    if value == "auto":
        return str(cfg.trainer.get("accelerator")) in ("gpu", "cuda")
    if not isinstance(value, bool):
        raise ConfigError(f"channels_last must be true, false or auto, got '{value}'")
    return value


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
