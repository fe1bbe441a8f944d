"""Multi-process DDP (trainer=ddp): 2 CPU processes (gloo) through the installed `dlexp`, one run directory, the
same weights on every rank; the sharded training order; a worker that dies fails the run instead of hanging."""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import dlexp_bin, run_dir_of

from dlexp.data.datamodule import TensorBatches
from dlexp.callbacks.run_state import weights_digest

pytestmark = pytest.mark.slow
CPU_DDP = ("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")  # 2 gloo processes, also beside a GPU
TINY = (*CPU_DDP, "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2", "logger=none")


def workers_in(cwd: Path) -> list[int]:
    """Pids of DDP workers (python -m dlexp.engine.ddp_worker) started from cwd: left over, they would be orphans."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if b"dlexp.engine.ddp_worker" in cmdline and Path(os.readlink(proc / "cwd")) == cwd:
                pids.append(int(proc.name))
        except (OSError, ValueError):
            continue  # not a process, or gone meanwhile
    return pids


def check_one_ddp_run(run_dir: Path, expected_files: set[str]) -> dict:
    """One run directory written by rank 0 only; both ranks' digests in train.log, equal to each other and to
    the digest of the weights in last.ckpt; returns metrics.json."""
    assert {p.name for p in run_dir.iterdir()} == expected_files
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["world_size"] == 2
    ranks = re.findall(r"weights sha256 by rank: (\w+) (\w+)\n", (run_dir / "train.log").read_text())[-1]
    assert ranks[0] == ranks[1] and metrics["ddp/weights_identical"] is True
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert weights_digest(state) == metrics["ddp/weights_sha256"] == ranks[0]
    return metrics


@pytest.mark.parametrize("world_size", [2, 3])
def test_tensor_batches_shard_the_epoch_between_ranks(world_size):
    """Every rank gets the same number of batches; together they cover the epoch's order (padded by wrapping,
    as DistributedSampler does); a resumed rank continues its own shard where it stopped."""
    n = 50
    x, y = torch.arange(n).view(n, 1, 1, 1), torch.arange(n)

    def shard(rank: int, position: tuple[int, int] = (1, 0)) -> list[int]:
        batches = TensorBatches(x, y, 4, True, seed=5, position_fn=lambda: position, rank=rank, world_size=world_size)
        return [i for _, labels in batches for i in labels.tolist()]

    per_rank = -(-n // world_size)
    shards = [shard(r) for r in range(world_size)]
    assert [len(s) for s in shards] == [per_rank] * world_size
    assert len(TensorBatches(x, y, 4, True, rank=1, world_size=world_size)) == -(-per_rank // 4)
    assert sorted(set(sum(shards, []))) == list(range(n))  # every sample, at most the padding twice
    whole = TensorBatches(x, y, 4, True, seed=5, position_fn=lambda: (1, 0))
    order = [i for _, labels in whole for i in labels.tolist()]
    assert shards[1] == (order * 2)[1: per_rank * world_size: world_size]  # rank 1: order[1], order[1 + W], ...
    resumed = TensorBatches(x, y, 4, True, seed=5, position_fn=lambda: (1, 0), rank=1, world_size=world_size)
    resumed.load_state_dict({"epoch": 1, "batches_done": 2})
    assert [i for _, labels in resumed for i in labels.tolist()] == shards[1][8:]


def test_ddp_classifier_two_processes_one_run_directory(run_dlexp, tmp_path):
    """convnet with 2 DDP processes: each rank trains on its half of every epoch, the ranks end with bitwise the
    same weights, and only rank 0 writes (one run directory, no stray files, no process left); `dlexp resume`
    continues it with 2 processes in the same directory."""
    common = (*CPU_DDP, "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
              "logger=none")
    result = run_dlexp("train", *common, "trainer.max_epochs=1")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = run_dir_of(result)
    assert [p.name for p in (tmp_path / "outputs" / "runs").iterdir()] == [run_dir.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]  # no lightning_logs, nothing from rank 1
    files = {"checkpoints", "config.yaml", "overrides.yaml", "metrics.json", "train.log"}
    metrics = check_one_ddp_run(run_dir, files)
    n_train = int(re.search(r"dataset digits: train (\d+)", result.stdout).group(1))
    assert metrics["global_step"] == math.ceil(math.ceil(n_train / 2) / 64)  # batch_size 64 per process
    assert metrics["val/acc_best"] > 0.3 and 0 <= metrics["test/acc"] <= 1
    assert result.stdout.count("run_dir: ") == 1
    assert workers_in(tmp_path) == []

    again = run_dlexp("resume", str(run_dir), "trainer.max_epochs=2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert [p.name for p in (tmp_path / "outputs" / "runs").iterdir()] == [run_dir.name]
    resumed = check_one_ddp_run(run_dir, files)
    assert resumed["epochs"] == 2 and resumed["global_step"] == 2 * metrics["global_step"]
    assert workers_in(tmp_path) == []


def test_ddp_sweep_of_a_classifier_and_a_gan(run_dlexp, tmp_path):
    """dlexp train -m with trainer=ddp: each job is one 2-process run in its own job directory (not a sweep per
    process); the GAN (manual optimisation, two optimizers) ends with the same weights on both ranks too."""
    result = run_dlexp("train", "-m", *TINY, "trainer.max_epochs=1", "model=convnet,gan")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "outputs" / "multirun").iterdir())) == 1
    sweep = tmp_path / result.stdout.strip().splitlines()[-1].removeprefix("multirun_dir: ")
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    check_one_ddp_run(sweep / "0", {"checkpoints", "config.yaml", "overrides.yaml", "metrics.json", "train.log"})
    gan = check_one_ddp_run(sweep / "1", {"checkpoints", "config.yaml", "overrides.yaml", "metrics.json",
                                          "train.log", "samples"})
    assert {"train/d_loss", "train/g_loss"} <= gan.keys() and gan["global_step"] == 6  # 3 batches, D and G steps
    assert [p.name for p in (sweep / "1" / "samples").iterdir()] == ["epoch_0001.png"]
    assert workers_in(tmp_path) == []


def test_ddp_worker_that_dies_fails_the_run(tmp_path):
    """A worker killed mid-run: rank 0 exits 1 soon (no hang), metrics.json says failed and names the rank."""
    env = {**os.environ, "DLEXP_DATA_DIR": str(tmp_path / "data")}
    run = subprocess.Popen([dlexp_bin(), "train", *CPU_DDP, "trainer.max_epochs=100", "logger=none"],
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in run.stdout:
            if line.startswith("epoch 0:"):  # training is under way on both ranks
                break
        (worker,) = workers_in(tmp_path)
        os.kill(worker, signal.SIGKILL)
        start = time.time()
        assert run.wait(timeout=60) == 1
        assert time.time() - start < 30
    finally:
        run.kill()
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "DDP rank 1 was killed by SIGKILL" in metrics["error"]
    assert "DDP rank 1 was killed by SIGKILL" in run.stderr.read()


def test_ddp_refuses_on_nan_skip_for_automatic_optimization(run_dlexp, tmp_path):
    """Lightning cannot skip a batch's backward under DDP: on_nan=skip with a classifier is a config error (exit 2,
    no run directory), not a crash mid-run."""
    result = run_dlexp("train", *TINY, "on_nan=skip")
    assert result.returncode == 2
    assert "on_nan=skip cannot skip a batch of model 'convnet' under DDP" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "outputs" / "runs").exists() or not any((tmp_path / "outputs" / "runs").iterdir())
