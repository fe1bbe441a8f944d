"""Instantiation: a composed config -> a typed Run (datamodule, task with net, optimizer, schedule and losses,
callbacks, loggers, trainer). Every failure here is a config or data problem, reported as one line before training.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dlexp.callbacks.run_state import RNGState, WeightsAgreement
from dlexp.callbacks.training import GradientClipping, RunInfo
from dlexp.engine import autotune, ddp
from dlexp.engine.checkpoint import AtomicCheckpointIO
from dlexp.engine.instantiate import make, net_from_config
from dlexp.engine.transfer import load_matching
from dlexp.errors import ConfigError

log = logging.getLogger("dlexp")

@dataclass
class Run:
    """What build() makes of a config: everything fit and test need."""

    datamodule: Any  # a LightningDataModule with load(), splits, transform() (dlexp/data/datamodule.py)
    task: pl.LightningModule
    trainer: pl.Trainer
    loggers: list[Any]
    model_name: str


def build(cfg: DictConfig, model_name: str, extra_callbacks: list | None = None,
          tensorboard_purge_step: int | None = None) -> Run:
    """Instantiate data, net, task, callbacks, loggers and trainer; load the data (fails fast on missing files).

    tensorboard_purge_step: on resume, TensorBoard drops what an earlier attempt logged from this step on.
    """
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = make("dataset", cfg.dataset, seed=cfg.seed)
    datamodule.load()
    regularization = make("regularizer", cfg.regularizer)
    net = _net(cfg, datamodule, model_name, regularization.dropout)
    task = _task(cfg, net, regularization, datamodule, model_name)
    callbacks = _callbacks(cfg, extra_callbacks or [])
    loggers = [make(f"logger.{k}", c, **({"purge_step": tensorboard_purge_step} if "purge_step" in c else {}))
               for k, c in (cfg.get("logger") or {}).items()]  # a logger that can forget steps declares purge_step
    # a tracker that is not required and cannot be reached says so (dlexp/engine/trackers.py): the run goes on
    loggers = [logger for logger in loggers if getattr(logger, "available", True)]
    if not loggers:  # Lightning refuses an LR monitor with nothing to log to
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    trainer = make(
        "trainer",
        cfg.trainer,
        strategy=ddp.strategy(cfg.trainer.get("strategy", "auto"), task, callbacks),
        gradient_clip_val=None,  # became the GradientClipping callback (_callbacks)
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
    return Run(datamodule, task, trainer, loggers, model_name)


def _net(cfg: DictConfig, datamodule: Any, model_name: str, dropout: float) -> nn.Module:
    """The net, with transferred weights, in the memory format and compiled as the config asks."""
    net = net_from_config(OmegaConf.to_container(cfg.model, resolve=True))
    if dropout > 0 and not any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in net.modules()):
        raise ConfigError(f"model '{model_name}' has no dropout; regularizer=dropout needs a model with a dropout "
                          "option")
    if cfg.model.get("init_from"):
        load_matching(net, cfg.model.init_from, list(cfg.model.init_include), list(cfg.model.init_exclude))
    switches = _switches(cfg, net, datamodule)
    torch.set_num_threads(switches.threads)
    if switches.channels_last:  # conv kernels and batches NHWC: faster on GPUs, on some CPUs (oneDNN) too
        net = net.to(memory_format=torch.channels_last)
        datamodule.memory_format = torch.channels_last
    if cfg.get("compile"):
        for module in [getattr(net, "generator", None), getattr(net, "discriminator", None)]:
            if module is not None:  # a GAN pair: the task calls its two nets, not the pair
                module.compile()
        net.compile()  # in place: state_dict keys (checkpoints) stay those of the plain net
    return net


def _task(cfg: DictConfig, net: nn.Module, regularization: Any, datamodule: Any, model_name: str) -> pl.LightningModule:
    """The task around the net, checked on one small batch: shapes that do not fit fail here, not mid-run."""
    optimizer, scheduler = make("optimizer", cfg.optimizer), make("scheduler", cfg.scheduler)
    _dry_run(optimizer, scheduler)
    # _partial_: Hydra would turn objects passed as kwargs (the Regularization dataclass) into configs
    make_task = make("task", cfg.task, _partial_=True)
    extra = {}
    if cfg.get("gan_loss") is not None:
        if "loss" not in inspect.signature(make_task).parameters:
            raise ConfigError(f"gan_loss needs a GAN model (a generator and a discriminator); model '{model_name}' "
                              "has none")
        extra["loss"] = make("gan_loss", cfg.gan_loss)
    try:
        task = make_task(net=net, optimizer=optimizer, scheduler=scheduler, regularization=regularization,
                         on_nan=cfg.on_nan, **extra)
        with torch.no_grad():
            x, y = datamodule.example_batch(4)
            task.eval().check_batch(x, y)
            task.train()
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"{model_name}: {e}") from None
    return task


def _callbacks(cfg: DictConfig, extra: list) -> list[pl.Callback]:
    """The configured callbacks, the engine's own (run info, RNG state, DDP agreement) and `extra`."""
    callbacks = [make(f"callbacks.{k}", c) for k, c in (cfg.get("callbacks") or {}).items() if c is not None]
    # a best-checkpoint with nothing to monitor (GANs have no validation metric unless val/fid is on): none
    callbacks = [c for c in callbacks if not (type(c) is pl.callbacks.ModelCheckpoint and c.monitor is None)]
    callbacks += [RunInfo(OmegaConf.to_container(cfg, resolve=True)), RNGState(), WeightsAgreement(), *extra]
    # the trainer's clip settings become the clipping callback: Lightning's own refuses manual optimization (GANs)
    if cfg.trainer.get("gradient_clip_val"):
        try:
            callbacks.append(GradientClipping(cfg.trainer.gradient_clip_algorithm, cfg.trainer.gradient_clip_val))
        except ValueError as e:
            raise ConfigError(f"trainer: {e}") from None
    return callbacks


def _switches(cfg: DictConfig, net: nn.Module, datamodule: Any) -> autotune.Switches:
    """channels_last and threads as configured, `auto` ones measured on this CPU (dlexp/engine/autotune.py)."""
    on_gpu = str(cfg.trainer.get("accelerator")) in ("gpu", "cuda")
    example = datamodule.example_batch(cfg.dataset.get("batch_size") or 64)
    switches = autotune.choose(net, example, cfg.get("channels_last", False), cfg.get("threads", "auto"), on_gpu)
    log.info("speed: %d thread(s)%s", switches.threads, ", channels_last" if switches.channels_last else "")
    # what `auto` became is what config.yaml records: a resumed run (and every DDP rank) uses the same switches
    cfg.channels_last, cfg.threads = switches.channels_last, switches.threads
    return switches


def _dry_run(optimizer: Any, scheduler: Any) -> None:
    """Build the optimizer and schedule on a dummy parameter, so bad values (lr < 0) fail before training."""
    try:
        opt = optimizer(params=[torch.zeros(1, requires_grad=True)])
    except Exception as e:
        raise ConfigError(f"optimizer: {type(e).__name__}: {e}") from None
    try:
        if scheduler is not None:
            scheduler(opt, total_steps=100, steps_per_epoch=10)
    except Exception as e:
        raise ConfigError(f"scheduler: {type(e).__name__}: {e}") from None
