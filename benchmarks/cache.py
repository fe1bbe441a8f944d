"""Frozen-prefix caching: the notes' reuse setup trained with and without the cache, in one run, same seed.

The notes ("cache the frozen layers' outputs"): train a net, reuse its layer1 and layer2 in a deeper net,
freeze them and feed the new layers from the frozen layers' outputs, computed once. Here: an MLP
300-200 is trained for one epoch (the source), its layer1+layer2 are loaded into an MLP 300-200-100
(model.init_from) and frozen (callbacks=freeze); that run is trained twice, callbacks.freeze.cache=false
and =auto. Printed: time per epoch (training + validation, the cache's one-off build excluded), whole
fit time (build included), the speedup ratios, and the largest differences of final weights and val loss
between the two runs (0 or float rounding: the cache must not change results).

Both runs go through dlexp's own build() + Trainer.fit in this process (not `dlexp train` subprocesses):
the point is the training loop's time per epoch, which start-up would only blur; both sides pay the same
Lightning overhead per step, so the ratio is what the cache saves.

    python benchmarks/cache.py                       # Fashion-MNIST where present, else digits; 3 epochs
    python benchmarks/cache.py --dataset digits --epochs 5 --threads 1
    python benchmarks/cache.py --quick               # seconds: digits, small nets, a few batches (tests)
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch

from dlexp.engine.build import build
from dlexp.config.compose import compose

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


class EpochTimer(pl.Callback):
    """Wall time of each training epoch, its validation included (both run on the cached features)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def _now(self) -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = self._now()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds.append(self._now() - self._start)


def train(overrides: list[str]) -> dict:
    """build() + fit one run; its per-epoch times, fit time, final net state and val/loss."""
    parts = build(compose(overrides), model_name="mlp")
    timer = EpochTimer()
    parts.trainer.callbacks.append(timer)
    start = time.perf_counter()
    parts.trainer.fit(parts.task, datamodule=parts.datamodule)
    fit_s = time.perf_counter() - start
    return {"epoch_s": timer.seconds, "fit_s": fit_s, "cached": parts.task.cached_prefix is not None,
            "state": {k: v.detach().cpu().clone() for k, v in parts.task.net.state_dict().items()},
            "val_loss": float(parts.trainer.callback_metrics["val/loss"])}


def main(argv: list[str] | None = None) -> int:
    for name in ("pytorch_lightning", "lightning_fabric"):  # its per-fit banners would bury the table
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist" if FASHION.is_file() else "digits")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--trainer", default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default); "
                        "on a busy shared CPU, 1 avoids threads waiting on each other in every small op")
    parser.add_argument("--quick", action="store_true", help="digits, small nets, 2 epochs of 5 batches")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    hidden, epochs, limit = ([300, 200], args.epochs, "null") if not args.quick else ([32, 16], 2, "5")
    dataset = "digits" if args.quick else args.dataset
    with tempfile.TemporaryDirectory() as tmp:
        common = [f"dataset={dataset}", f"trainer={args.trainer}", "logger=none", "model=mlp", "seed=0",
                  f"trainer.limit_train_batches={limit}", "trainer.limit_val_batches=null"]
        source = Path(tmp) / "source"  # the notes' first net, trained: its layer1 and layer2 are reused
        first = build(compose([*common, f"run_dir={source}", "callbacks=checkpoint", f"model.hidden={hidden}",
                               "trainer.max_epochs=1"]), model_name="mlp")
        first.trainer.fit(first.task, datamodule=first.datamodule)
        reuse = [*common, f"model.hidden={[*hidden, hidden[-1] // 2]}", f"model.init_from={source}",
                 "model.init_include=[layer1,layer2]", "callbacks=freeze",
                 "callbacks.freeze.patterns=[layer1\\.,layer2\\.]", f"trainer.max_epochs={epochs}"]
        runs = {cache: train([*reuse, f"run_dir={Path(tmp) / cache}", f"callbacks.freeze.cache={cache}"])
                for cache in ("false", "auto")}
    uncached, cached = runs["false"], runs["auto"]
    if not cached["cached"]:
        print("error: the cached run did not cache (see the 'frozen-prefix cache: off' log line)", file=sys.stderr)
        return 1
    per_epoch = {k: statistics.median(r["epoch_s"]) for k, r in runs.items()}
    weights_diff = max(float((cached["state"][k].float() - v.float()).abs().max())
                       for k, v in uncached["state"].items())
    sizes = "-".join(str(h) for h in [*hidden, hidden[-1] // 2])
    print(f"frozen-prefix caching: MLP {sizes}, layer1+layer2 from a trained MLP {'-'.join(map(str, hidden))} "
          f"and frozen; {dataset}, {epochs} epochs, trainer={args.trainer}, {torch.get_num_threads()} threads")
    print(f"{'mode':<10}{'s/epoch (median)':>18}{'fit s':>9}{'val/loss':>10}  epochs (s)")
    for name, key in (("uncached", "false"), ("cached", "auto")):
        r = runs[key]
        epochs_s = " ".join(f"{s:.2f}" for s in r["epoch_s"])
        print(f"{name:<10}{per_epoch[key]:>18.3f}{r['fit_s']:>9.2f}{r['val_loss']:>10.4f}  {epochs_s}")
    print(f"speedup: {per_epoch['false'] / per_epoch['auto']:.2f}x per epoch, "
          f"{uncached['fit_s'] / cached['fit_s']:.2f}x per fit (the cache's build included)")
    print(f"max abs difference cached vs uncached: weights {weights_diff:.3g}, "
          f"val/loss {abs(cached['val_loss'] - uncached['val_loss']):.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
