"""dlexp/callbacks/frozen_cache.py: same seed -> same weights and metrics as uncached training, declined (with the
reason logged) whenever that could differ, and checkpoints that still hold, and evaluate as, the whole net."""
from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dlexp.engine import restore
from dlexp.engine.build import build
from dlexp.engine.restore import load_datamodule, restore_net
from dlexp.engine.rundir import RunDir
from dlexp.nets.prefix import CachedPrefix
from dlexp.errors import ConfigError
from conftest import run_dir_of

# digits (1295 train / 143 val / 359 test images): 3 epochs of 10 batches of a small net, seconds on one CPU thread
DIGITS = ["dataset=digits", "trainer.max_epochs=3", "trainer.limit_train_batches=10", "trainer.limit_val_batches=null",
          "trainer.limit_test_batches=null"]
NETS = {  # the default freeze pattern layer1\. : a Linear layer, or a conv + BN + ReLU + pool block
    "mlp": (["model=mlp", "model.hidden=[64,32]"], lambda net: net.layer1),
    "convnet": (["model=convnet", "model.channels=[4,8]"], lambda net: net.features.layer1),
}
FAKE_MLP = ["dataset=fake", "model=mlp", "model.hidden=[16,16]"]


def fit(make_cfg, tmp_path, name: str, *overrides: str, count=None, callbacks: str = "[checkpoint,freeze]") -> dict:
    """build() + fit + test in tmp_path/name (last.ckpt kept); counts calls of `count(net)` in training steps."""
    parts = build(make_cfg(f"run_dir={tmp_path / name}", f"callbacks={callbacks}", *overrides), "test")
    trainer, task = parts.trainer, parts.task
    calls = []
    if count is not None:
        # training steps run it in train mode; the cache is computed once in eval mode
        count(task.net).register_forward_hook(lambda m, *_: calls.append(1) if trainer.training and m.training
                                              else None)
    trainer.fit(task, datamodule=parts.datamodule)
    parts.metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    parts.metrics.update(trainer.test(task, datamodule=parts.datamodule, verbose=False)[0])
    parts.prefix_calls_in_training = len(calls)
    parts.ckpt = torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)
    return parts


@pytest.mark.parametrize("net", NETS)
def test_cached_training_equals_uncached(make_cfg, tmp_path, caplog, net):
    """Same seed, 3 epochs: the cached run never runs layer1 in training yet ends with the same weights and metrics."""
    caplog.set_level(logging.INFO, logger="dlexp")
    overrides, layer1 = NETS[net]
    cached = fit(make_cfg, tmp_path, "cached", *DIGITS, *overrides, count=layer1)
    assert "frozen-prefix cache: on: " in caplog.text
    uncached = fit(make_cfg, tmp_path, "uncached", *DIGITS, *overrides, "callbacks.freeze.cache=false", count=layer1)
    assert isinstance(cached.task.cached_prefix, CachedPrefix) and uncached.task.cached_prefix is None
    assert cached.prefix_calls_in_training == 0 and uncached.prefix_calls_in_training == 30  # 10 steps x 3
    a, b = cached.ckpt["state_dict"], uncached.ckpt["state_dict"]
    assert a.keys() == b.keys() and any(k.startswith("net.") and "layer1" in k for k in a)  # the whole net
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), rtol=1e-5, atol=1e-6), k
    assert cached.ckpt["global_step"] == uncached.ckpt["global_step"] == 30
    for k in ("val/loss", "val/acc", "train/loss_epoch", "test/loss", "test/acc"):
        assert cached.metrics[k] == pytest.approx(uncached.metrics[k], rel=1e-5, abs=1e-6), k
    assert cached.metrics["test/acc"] > 0.2  # above chance (0.1): equal results are not two broken runs


def test_resumed_cached_run_equals_uninterrupted_uncached(make_cfg, tmp_path):
    """Resume recomputes the cache from the checkpoint's net: 2 cached epochs + 1 resumed = 3 uncached epochs."""
    overrides = [*DIGITS, *NETS["convnet"][0]]
    first = fit(make_cfg, tmp_path, "run", *overrides, "trainer.max_epochs=2")
    assert first.ckpt["epoch"] == 1
    resumed = build(make_cfg(f"run_dir={tmp_path / 'run'}", "callbacks=[checkpoint,freeze]", *overrides), "test")
    resumed.trainer.fit(resumed.task, datamodule=resumed.datamodule,
                           ckpt_path=str(tmp_path / "run" / "checkpoints" / "last.ckpt"))
    assert resumed.task.cached_prefix is not None
    whole = fit(make_cfg, tmp_path, "whole", *overrides, "callbacks.freeze.cache=false")
    got = resumed.task.state_dict()
    for k, v in whole.task.state_dict().items():
        assert torch.allclose(got[k].float(), v.float(), rtol=1e-5, atol=1e-6), k


@pytest.mark.parametrize("override, reason", [
    ("dataset.flip=true", "augmentation is on (dataset.flip/translate)"),
    ("dataset.translate=2", "augmentation is on (dataset.flip/translate)"),
    ("callbacks.freeze.patterns=[layer2\\.]", "(layer2.0.weight, layer2.0.bias) are not exactly those of the net's "
                                              "leading layers: layer1.0.weight trains"),
    ("callbacks.freeze.patterns=[weight$]", "leading layers: layer1.0.bias trains"),
    ("regularizer=dropout", "dropout layer1.2 (p=0.5) in the frozen layers is active in training"),
    ("callbacks.freeze.unfreeze_at_epoch=1", "unfreeze_at_epoch=1: the frozen layers train again later"),
    ("callbacks.freeze.cache=false", "callbacks.freeze.cache=false"),
    ("callbacks.freeze.cache_max_mb=0.01", "MB > callbacks.freeze.cache_max_mb=0.01"),
])
def test_cache_declines_and_says_why(make_cfg, tmp_path, caplog, override, reason):
    """Whatever could make cached training differ (or not fit in memory) trains uncached, with the reason logged."""
    caplog.set_level(logging.INFO, logger="dlexp")
    parts = build(make_cfg("callbacks=freeze", *FAKE_MLP, override), "test")
    parts.trainer.fit(parts.task, datamodule=parts.datamodule)
    line = next(line for line in caplog.text.splitlines() if "frozen-prefix cache: off (" in line)
    assert reason in line
    assert "frozen-prefix cache: on" not in caplog.text
    assert parts.task.cached_prefix is None and not parts.datamodule.features_cached


def test_bad_cache_value_is_a_config_error(make_cfg):
    with pytest.raises(ConfigError, match="callbacks.freeze.cache must be auto or false, got 'yes'"):
        build(make_cfg("callbacks=freeze", *FAKE_MLP, "callbacks.freeze.cache=yes"), "test")


@pytest.mark.slow
def test_reuse_frozen_layer1_end_to_end_with_cache(make_cfg, tmp_path, run_dlexp):
    """The notes' reuse: layer1 of a trained MLP into a deeper one, frozen and cached; the checkpoint's whole net
    evaluates on raw test images to the test/acc that metrics.json records."""
    fit(make_cfg, tmp_path, "source", "dataset=digits", "model=mlp", "model.hidden=[64]",
        "trainer.limit_train_batches=20", callbacks="checkpoint")
    result = run_dlexp("train", "trainer=cpu", "model=mlp", "model.hidden=[64,32]",  # (exact: fp32, not bf16)
                       f"model.init_from={tmp_path / 'source'}",
                       "model.init_include=[layer1]", "callbacks=[default,freeze]", "trainer.max_epochs=2",
                       "logger=none")
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = run_dir_of(result)
    log = (run_dir / "train.log").read_text()
    assert "frozen-prefix cache: on: flatten, layer1 (2 of 4 layers, 50,240 parameters) run once per sample" in log
    metrics = json.loads((run_dir / "metrics.json").read_text())
    run = RunDir(run_dir)  # what `dlexp eval` loads: best.ckpt into the whole net
    dm, net, state = load_datamodule(run), restore_net(run), restore.state_dict(run)
    source = torch.load(tmp_path / "source" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(state["net.layer1.0.weight"], source["net.layer1.0.weight"])  # frozen, kept in the checkpoint
    x, y = dm.splits["test"]
    with torch.no_grad():
        predicted = net(dm.transform(x, training=False)).argmax(dim=1)
    assert float((predicted == y).float().mean()) == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert metrics["test/acc"] > 0.5


@pytest.mark.slow
def test_benchmark_quick_mode_runs_and_matches():
    """benchmarks/cache.py --quick: both runs train, the cached one is not slower per fit by much, results equal."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "cache.py"
    result = subprocess.run([sys.executable, str(script), "--quick", "--threads", "1"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    speedup = re.search(r"speedup: ([\d.]+)x per epoch", result.stdout)
    diff = re.search(r"weights ([\d.e+-]+), val/loss ([\d.e+-]+)", result.stdout)
    assert speedup and diff, result.stdout
    assert float(diff[1]) <= 1e-5 and float(diff[2]) <= 1e-5
    assert float(speedup[1]) > 0  # timings on a shared CI machine are not asserted; the lead's runs report them
