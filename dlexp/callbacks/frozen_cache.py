"""Frozen-prefix caching (the notes' "cache the frozen layers' outputs"): run a frozen prefix once per sample.

When the parameters the Freeze callback froze are exactly those of the first layers of a net's forward,
and nothing in those layers or before them changes from epoch to epoch (no dropout, frozen batch norm in
eval mode, no augmentation), each image maps to the same features every epoch. Computing them once for
train/val/test and training the remaining layers on them gives the same batches, losses and weights as
running the whole net, in less time. The task keeps the whole net, so checkpoints hold every layer and
`dlexp eval`, `dlexp sample`, resume and init_from see no difference.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import nn

from dlexp.nets.modes import eval_mode
from dlexp.nets.prefix import CachedPrefix, NotCacheable, split_frozen_prefix

log = logging.getLogger(__name__)


def _plan(trainer: Any, task: Any, frozen: list[nn.Parameter], max_mb: float) -> CachedPrefix:
    """The split to cache, after checking every condition under which cached training equals uncached."""
    datamodule = trainer.datamodule
    if not hasattr(task, "cached_prefix"):
        raise NotCacheable(f"{type(task).__name__} does not train on cached features")
    if not hasattr(datamodule, "cache_features"):
        raise NotCacheable(f"{type(datamodule).__name__} cannot hold cached features")
    if datamodule.flip or datamodule.translate:
        raise NotCacheable("augmentation is on (dataset.flip/translate): the frozen layers see new inputs every epoch")
    split = split_frozen_prefix(task.net, frozen)
    # the view must be the forward: compare both on a few real images (eval mode: no side effects, no RNG)
    precision = trainer.precision_plugin
    x = precision.convert_input(datamodule.example_batch(8)[0].to(task.device))
    with eval_mode(task.net), torch.no_grad(), precision.forward_context():
        features = split.prefix(x)
        same = torch.allclose(split.suffix(features).float(), task.net(x).float(), rtol=1e-4, atol=1e-5)
    if not same:
        raise NotCacheable(f"{type(task.net).__name__}.as_sequential() does not compute what its forward does")
    n = sum(datamodule.sizes().values())
    mb = n * features[0].numel() * features.element_size() / 2**20
    if mb > max_mb:
        raise NotCacheable(f"the features would take {mb:,.1f} MB > callbacks.freeze.cache_max_mb={max_mb:g}")
    return split


def cache_frozen_prefix(trainer: Any, task: Any, frozen: list[nn.Parameter], max_mb: float = 2048) -> bool:
    """Replace the data by the frozen prefix's outputs and train the rest on them, when that is safe.

    Logs a line saying what is cached, or why training runs uncached; returns whether caching is on.
    """
    if getattr(task, "cached_prefix", None) is not None:
        return True  # a second fit on the same task and data: already cached
    try:
        split = _plan(trainer, task, frozen, max_mb)
    except NotCacheable as e:
        log.info("frozen-prefix cache: off (%s)", e)
        return False
    start, precision, datamodule = time.time(), trainer.precision_plugin, trainer.datamodule

    def prefix(x: torch.Tensor) -> torch.Tensor:
        return split.prefix(precision.convert_input(x))

    with eval_mode(split.prefix), precision.forward_context():
        datamodule.cache_features(prefix)
    task.cached_prefix = split
    features = datamodule.splits["train"][0]
    n_params = sum(p.numel() for p in split.prefix.parameters())
    log.info("frozen-prefix cache: on: %s (%d of %d layers, %s parameters) run once per sample; features %s %s, "
             "%.1f MB for %d samples, computed in %.2f s", ", ".join(n for n, _ in split.prefix.named_children()),
             len(split.prefix), len(split.prefix) + len(split.suffix), f"{n_params:,}", tuple(features.shape[1:]),
             str(features.dtype).removeprefix("torch."),
             sum(x.numel() * x.element_size() for x, _ in datamodule.splits.values()) / 2**20,
             sum(datamodule.sizes().values()), time.time() - start)
    return True
