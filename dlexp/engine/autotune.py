"""Speed switches whose best value depends on the CPU, chosen by measurement: `channels_last: auto` and
`threads: auto` time a few training steps of the run's own net on a real batch for each candidate and keep the
fastest. The choice is cached per CPU model, torch version, thread budget, net and batch shape, so only a machine's
first run of a configuration pays for the probe (about a second or two).

On a GPU, `channels_last: auto` is on (NHWC convolutions pay on tensor cores) and threads are left alone.
The probe runs on a copy of the net with the RNG forked: the run's weights, buffers and random draws are the same
whether the probe ran or came from the cache.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

try:
    import fcntl
except ImportError:  # Windows: no lock; at worst two processes starting together both measure
    fcntl = None

from dlexp.engine.machine import cpu_model
from dlexp.errors import ConfigError
from dlexp.io import atomic_write_json

log = logging.getLogger("dlexp")
DEFAULT_THREADS = torch.get_num_threads()  # torch's default for this process (the cores), read once at import
WARMUP, TIMED = 2, 4  # probe steps per candidate: warm-up (allocator, oneDNN primitives), then timed


@dataclass(frozen=True)
class Switches:
    channels_last: bool
    threads: int


def cache_file() -> Path:
    """$DLEXP_CACHE_DIR, else $XDG_CACHE_HOME/dlexp, else ~/.cache/dlexp: speed.json."""
    folder = os.environ.get("DLEXP_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
                                                       "dlexp")
    return Path(folder) / "speed.json"


def choose(net: nn.Module, example: tuple[torch.Tensor, torch.Tensor], channels_last: bool | str,
           threads: int | str, on_gpu: bool) -> Switches:
    """The switches for this run: given values kept, `auto` ones measured on the CPU (or read from the cache)."""
    _check(channels_last, threads)
    if on_gpu:
        return Switches(channels_last in (True, "auto"), torch.get_num_threads())
    formats = [False, True] if channels_last == "auto" and has_conv(net) else [channels_last is True]
    budget = thread_budget()
    counts = thread_candidates(budget) if threads == "auto" else [min(int(threads), budget)]
    if len(formats) * len(counts) == 1:
        return Switches(formats[0], counts[0])
    key = (f"{cpu_model()}|torch {torch.__version__}|{budget} threads|{type(net).__name__} "
           f"{sum(p.numel() for p in net.parameters())}|{tuple(example[0].shape)}|{formats}|{counts}")
    with _locked():  # processes starting together (DDP ranks, sweep jobs) measure once and agree
        cached = _read_cache().get(key)
        if cached is None:
            cached = _measure_or_default(net, example, formats, counts)
            _write_cache(key, cached)
            log.info("speed probe (cached in %s): %s", cache_file(), ", ".join(
                f"{t['threads']} thread(s){' channels_last' if t['channels_last'] else ''} {t['ms']:.1f} ms/step"
                for t in cached["timings"]))
    return Switches(cached["channels_last"], cached["threads"])


def _check(channels_last: object, threads: object) -> None:
    if channels_last not in (True, False, "auto"):
        raise ConfigError(f"channels_last must be true, false or auto, got '{channels_last}'")
    if threads != "auto" and not (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1):
        raise ConfigError(f"threads must be auto or an integer >= 1, got '{threads}'")


def thread_budget() -> int:
    """The threads this process may use: OMP_NUM_THREADS where set (a parallel sweep's job gets its share that way),
    else torch's default for the process, as it was before any run of it chose a count (jobs of a sweep run one
    after another in one process: each starts from the whole budget, not from the previous job's choice)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else DEFAULT_THREADS


def thread_candidates(budget: int) -> list[int]:
    """1, 2, 4, ... up to the budget, and the budget itself."""
    counts, n = [], 1
    while n < budget:
        counts.append(n)
        n *= 2
    return [*counts, budget]


def has_conv(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) and m.weight.dim() == 4 for m in net.modules())


def _measure_or_default(net: nn.Module, example: tuple[torch.Tensor, torch.Tensor], formats: list[bool],
                        counts: list[int]) -> dict:
    """measure(), or the plain defaults for a net the probe cannot step by itself (a VAE: its task calls its parts)."""
    try:
        return measure(net, example, formats, counts)
    except (NotImplementedError, TypeError, ValueError, RuntimeError) as e:
        log.info("speed probe skipped (%s: %s): contiguous format, %d thread(s)", type(e).__name__, e, counts[-1])
        return {"channels_last": False, "threads": counts[-1], "timings": [], "skipped": str(e)}


def measure(net: nn.Module, example: tuple[torch.Tensor, torch.Tensor], formats: list[bool],
            counts: list[int]) -> dict:
    """Time training steps for every (format, threads) pair; the fastest wins. Leaves torch's threads as found."""
    budget, timings = torch.get_num_threads(), []
    with torch.random.fork_rng():
        try:
            for fmt in formats:
                probe_net = copy.deepcopy(net).train()
                if fmt:
                    probe_net = probe_net.to(memory_format=torch.channels_last)
                x = example[0].contiguous(memory_format=torch.channels_last) if fmt else example[0]
                step = training_step(probe_net, x, example[1])
                for threads in counts:
                    torch.set_num_threads(threads)
                    timings.append({"channels_last": fmt, "threads": threads, "ms": 1000 * seconds_per(step)})
        finally:
            torch.set_num_threads(budget)
    best = min(timings, key=lambda t: t["ms"])
    return {"channels_last": best["channels_last"], "threads": best["threads"], "timings": timings}


def training_step(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """A forward and backward pass of the net on x (a GAN pair: its critic on x and on generated images)."""
    if hasattr(net, "generator") and hasattr(net, "discriminator"):
        z, labels = torch.randn(len(x), net.latent_dim), y if net.num_classes else None

        def forward() -> torch.Tensor:
            fake = net.generator(z, labels)
            return net.discriminator(x, labels).float().sum() + net.discriminator(fake, labels).float().sum()
    else:
        def forward() -> torch.Tensor:
            return net(x).float().sum()

    def step() -> None:
        forward().backward()
        net.zero_grad(set_to_none=True)
    return step


def seconds_per(step: Callable[[], None]) -> float:
    """The fastest of TIMED steps after WARMUP ones (the minimum: other load on the machine only adds time)."""
    for _ in range(WARMUP):
        step()
    times = []
    for _ in range(TIMED):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times)


@contextlib.contextmanager
def _locked():
    """An exclusive lock on the cache (where fcntl exists and the folder can be made; else none)."""
    try:
        cache_file().parent.mkdir(parents=True, exist_ok=True)
        handle = open(cache_file().with_suffix(".lock"), "a") if fcntl is not None else None
    except OSError:
        handle = None
    if handle is None:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _read_cache() -> dict:
    try:
        return json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}  # no cache yet, or a damaged one: measure again


def _write_cache(key: str, value: dict) -> None:
    try:
        cache_file().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache_file(), {**_read_cache(), key: value})
    except OSError as e:  # a read-only home: the choice holds for this run only
        log.warning("speed probe: could not cache the choice in %s (%s)", cache_file(), e)
