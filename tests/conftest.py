"""Shared fixtures: compose configs the way `dlexp train` does, shrunk to CPU and tiny data; run the real CLI."""
from __future__ import annotations

import gzip
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from omegaconf import DictConfig

from dlexp.config.compose import compose
from dlexp.data.signals import scipy_ecg_files
from dlexp.engine.instantiate import make

if TYPE_CHECKING:
    import pytorch_lightning as pl

    from dlexp.engine.build import Run

# the dlexp commands tests start run tiny nets on tiny batches: one thread each is faster than waking a pool, and
# with one test process per core (pytest -n auto) more threads would oversubscribe the machine
os.environ.setdefault("OMP_NUM_THREADS", "1")
# the speed probe's cache (channels_last/threads: auto, dlexp/engine/autotune.py) of this session, not the user's
os.environ.setdefault("DLEXP_CACHE_DIR", tempfile.mkdtemp(prefix="dlexp-test-cache-"))

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_ecg = pytest.mark.skipif(not any(p.is_file() for p in scipy_ecg_files()),
                               reason="the real ECG recording is absent: apt-get install python3-scipy")
needs_fashion = pytest.mark.skipif(
    not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="real Fashion-MNIST absent: apt-get install dataset-fashion-mnist",
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny nets on tiny batches: one intra-op thread is faster than waking a pool (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_cfg(tmp_path):
    """compose(overrides) with run_dir in tmp, trainer=debug, no loggers or callbacks unless asked."""

    def _make(*overrides: str) -> DictConfig:
        base = [f"run_dir={tmp_path / 'run'}", "trainer=debug", "logger=none", "callbacks=none"]
        return compose(base + list(overrides))

    return _make


# fake data (461 train / 51 val images of 1x28x28), 3 train and 2 val batches per epoch (trainer=debug)
FAKE_MLP = ["dataset=fake", "model=mlp", "model.hidden=[16]"]


def run(make_cfg, *overrides: str, extra: tuple[pl.Callback, ...] = (), before_fit=None) -> Run:
    """build() a composed config, append `extra` callbacks after the configured ones, fit; returns build's parts."""
    from dlexp.engine.build import build  # deferred: tests that never build in-process skip importing Lightning

    parts = build(make_cfg(*overrides), model_name="test")
    parts.trainer.callbacks.extend(extra)
    if before_fit is not None:
        before_fit(parts)
    parts.trainer.fit(parts.task, datamodule=parts.datamodule)
    return parts


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of a module's state_dict (parameters and buffers)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped if the name ends in .gz), as MNIST ships them."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as f:  # closed: Python 3.12 buffers gzip writes
        f.write(data)


def write_cifar(data_dir: Path, n: int = 4, n_test: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """cifar-10-batches-py with data_batch_1..5 and test_batch; returns the concatenated train/test arrays."""
    rng = np.random.default_rng(seed)
    folder = data_dir / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        size = n_test if name == "test_batch" else n
        x = rng.integers(0, 256, (size, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, size).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": y, b"data": x, b"filenames": []}, f)
        xs.append(x)
        ys.append(y)
    return {"train_x": np.concatenate(xs[:5]), "train_y": np.concatenate(ys[:5]), "test_x": xs[5], "test_y": np.array(ys[5])}


@pytest.fixture
def idx_dir(tmp_path) -> Path:
    """A data dir with small MNIST and Fashion-MNIST IDX files in torchvision's layout (<Name>/raw)."""
    rng = np.random.default_rng(0)
    for name, suffix in (("MNIST", ".gz"), ("FashionMNIST", "")):
        raw = tmp_path / "data" / name / "raw"
        for prefix, n in (("train", 200), ("t10k", 50)):
            labels = rng.integers(0, 10, n).astype(np.uint8)
            images = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
            write_idx(raw / f"{prefix}-images-idx3-ubyte{suffix}", images)
            write_idx(raw / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return tmp_path / "data"


def dlexp_bin() -> str:
    """The installed console script (what a user runs)."""
    found = shutil.which("dlexp") or str(Path(sys.executable).parent / "dlexp")
    assert Path(found).exists(), "dlexp is not installed: pip install ."
    return found


@pytest.fixture
def run_dlexp(tmp_path):
    """Run the installed `dlexp` in tmp_path (outputs/ lands there); returns the CompletedProcess."""

    def _run(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "DLEXP_DATA_DIR": str(tmp_path / "data"), **(env or {})}
        return subprocess.run([dlexp_bin(), *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=timeout, env=full_env)

    return _run


def run_dir_of(result: subprocess.CompletedProcess) -> Path:
    """The run directory named on the last line of stdout (docs/contracts.md, C1)."""
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("run_dir: "), f"last line is not run_dir: {last!r}\n{result.stderr[-2000:]}"
    return Path(last.removeprefix("run_dir: "))


def build_dataset(overrides: list[str]):
    """(config, datamodule) of a composed config's dataset, instantiated as `dlexp train` does, and loaded."""
    cfg = compose(overrides)
    datamodule = make("dataset", cfg.dataset, seed=0)
    datamodule.load()
    return cfg, datamodule


def write_keras_text(data_dir: Path, n: int = 240, seed: int = 0) -> Path:
    """Small imdb.npz and reuters.npz in Keras' format (object arrays of word-rank lists, ranks from 1) with a
    learnable signal: an IMDB review is positive when it holds word 7, a Reuters topic is its first word % 46."""
    rng = np.random.default_rng(seed)

    def reviews(count: int, topics: bool) -> tuple[np.ndarray, np.ndarray]:
        seqs, labels = np.empty(count, dtype=object), np.zeros(count, dtype=np.int64)
        for i in range(count):
            words = rng.integers(10, 9999, int(rng.integers(5, 60))).tolist()
            if topics:
                labels[i] = words[0] % 46
            else:
                labels[i] = i % 2
                words[int(rng.integers(len(words)))] = 7 if labels[i] else 8
            seqs[i] = words
        return seqs, labels

    data_dir.mkdir(parents=True, exist_ok=True)
    (x_train, y_train), (x_test, y_test) = reviews(n, False), reviews(n // 4, False)
    np.savez(data_dir / "imdb.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    x, y = reviews(n, True)
    np.savez(data_dir / "reuters.npz", x=x, y=y)
    return data_dir
