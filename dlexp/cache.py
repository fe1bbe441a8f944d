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
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

log = logging.getLogger(__name__)


class NotCacheable(Exception):
    """Why a run trains without the cache: logged, not an error."""


@dataclass
class CachedPrefix:
    """A net's forward split after its frozen prefix; both parts are the net's own modules (shared, not copied)."""

    prefix: nn.Sequential
    suffix: nn.Sequential


def as_sequential(net: nn.Module) -> nn.Sequential:
    """The net's forward as a chain of modules: an nn.Sequential itself, or the net's as_sequential() view."""
    if isinstance(net, nn.Sequential):
        return net
    if hasattr(net, "as_sequential"):
        return net.as_sequential()
    raise NotCacheable(f"{type(net).__name__} has no as_sequential() view of its forward")


def _train_mode_only(layer_name: str, layer: nn.Module) -> str | None:
    """What in `layer` computes differently while training (the cache is computed in eval mode), if anything."""
    for name, m in layer.named_modules(prefix=layer_name):
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return f"dropout {name} (p={m.p}) in the frozen layers is active in training"
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not list(m.parameters(recurse=False)):
            return f"batch norm {name} has no parameters to freeze, so it keeps training"
    return None


def split_frozen_prefix(net: nn.Module, frozen: list[nn.Parameter]) -> CachedPrefix:
    """Split the net's forward after the longest run of leading layers whose parameters are exactly `frozen`.

    Parameter-free layers (activations, flatten) right after the frozen ones join the prefix; a layer
    that computes differently in training (dropout) ends it. Raises NotCacheable saying why not.
    """
    chain = as_sequential(net)
    wanted, covered, cut, active = {id(p) for p in frozen}, set(), 0, None
    for k, (name, layer) in enumerate(chain.named_children(), start=1):
        params = {id(p) for p in layer.parameters()}
        if not params <= wanted:
            break  # the first layer with a trained parameter ends the prefix
        active = _train_mode_only(name, layer)
        if active:
            break
        covered |= params
        if covered == wanted:
            cut = k
    if not cut:
        if active:
            raise NotCacheable(active)
        names = [n for n, p in net.named_parameters() if id(p) in wanted]
        trained = next((n for n, p in net.named_parameters() if id(p) not in wanted), "?")
        raise NotCacheable(f"the frozen parameters ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}) are not "
                           f"exactly those of the net's leading layers: {trained} trains")
    prefix, suffix = chain[:cut], chain[cut:]
    if {id(p) for p in suffix.parameters()} & wanted:
        raise NotCacheable("a frozen layer is used again after the prefix")
    if not any(p.requires_grad for p in suffix.parameters()):
        raise NotCacheable("every layer is frozen: nothing left to train")
    return CachedPrefix(prefix, suffix)


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Run `module` in eval mode, then give every submodule back its own mode."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.train(training)


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
    with _eval_mode(task.net), torch.no_grad(), precision.forward_context():
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

    with _eval_mode(split.prefix), precision.forward_context():
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
