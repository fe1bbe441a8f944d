"""A net's forward split after its frozen leading layers: what frozen-prefix caching runs once per sample and what
still trains (the conditions and the why: dlexp/callbacks/frozen_cache.py)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn


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
