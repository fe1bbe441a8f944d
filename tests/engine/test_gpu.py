"""trainer=gpu against the plain path, on a CUDA GPU (skipped where there is none; their CPU fallbacks are in
test_speed.py): data resident on the GPU, bf16 autocast, channels_last, torch.compile, whole-batch augmentation,
and the `dlexp` command choosing trainer=gpu by itself."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import run_dir_of
from test_speed import close, fit

from dlexp.data.augment import random_flip, random_translate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")

GPU = ["trainer.accelerator=gpu", "trainer.precision=bf16-mixed"]  # what conf/trainer/gpu.yaml sets over cpu
GPU_FP32 = ["trainer.accelerator=gpu", "trainer.precision=32-true", "channels_last=false"]


@pytest.fixture
def exact_float32(monkeypatch):
    """cuDNN and cuBLAS in true float32 (their TF32 default rounds inputs to 10 bits), for CPU comparisons."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def test_gpu_run_keeps_the_data_on_the_gpu_in_bf16_and_channels_last(make_cfg):
    _, parts = fit(make_cfg, *GPU)
    parts.trainer.test(parts.task, datamodule=parts.datamodule)  # each split moves when first served
    for split, (x, y) in parts.datamodule.splits.items():
        assert x.device.type == "cuda" and y.device.type == "cuda", f"{split} split was not moved to the GPU"
        assert x.dtype == torch.uint8, f"{split} split is not kept as uint8 (4x the memory)"
    assert parts.trainer.strategy.root_device.type == "cuda"  # (Lightning moves the net back to the CPU after)
    net = parts.task.net
    assert all(p.dtype == torch.float32 for p in net.parameters())  # fp32 master weights
    assert net.features.layer2[0].weight.is_contiguous(memory_format=torch.channels_last)  # auto: on on a GPU
    assert parts.trainer.precision == "bf16-mixed"


def test_gpu_float32_trains_to_the_cpu_weights(make_cfg, exact_float32):
    cpu, _ = fit(make_cfg, "trainer.precision=32-true")
    gpu, _ = fit(make_cfg, *GPU_FP32)
    worst = max((cpu[k] - gpu[k].cpu()).abs().max().item() for k in cpu)
    # cuDNN sums the gradients in another order than oneDNN: 3.8e-4 apart after 6 steps on an H100
    assert close(cpu, {k: v.cpu() for k, v in gpu.items()}, atol=1e-3), f"largest difference {worst:.2e}"


def test_gpu_bf16_channels_last_stays_close_to_float32(make_cfg, exact_float32):
    plain, _ = fit(make_cfg, *GPU_FP32)
    fast, _ = fit(make_cfg, *GPU, "channels_last=true")
    assert not close(plain, fast, atol=1e-6) and close(plain, fast, atol=0.05)  # ran in bf16, trained the same


def test_gpu_compile_trains_to_the_eager_weights(make_cfg, exact_float32):
    eager, _ = fit(make_cfg, *GPU_FP32)
    compiled, parts = fit(make_cfg, *GPU_FP32, "compile=true")
    assert getattr(parts.task.net, "_compiled_call_impl", None) is not None, "the net was not compiled"
    worst = max((eager[k] - compiled[k]).abs().max().item() for k in eager)
    assert close(eager, compiled, atol=1e-3), f"largest difference {worst:.2e}"  # inductor sums in its own order


def test_gpu_augmentation_has_the_cpu_distribution():
    torch.manual_seed(0)
    x = torch.arange(4 * 8 * 8, dtype=torch.float32).view(4, 1, 8, 8).repeat(5000, 1, 1, 1)  # 20000 images
    for device in ("cpu", "cuda"):
        flipped = random_flip(x.to(device))
        assert set(flipped.view(len(x), -1)[:, 0].tolist()) <= set(x[:4].view(4, -1)[:, [0, 7]].flatten().tolist())
        rate = (flipped != x.to(device)).flatten(1).any(1).float().mean().item()
        assert abs(rate - 0.5) < 0.02, f"{device}: {rate:.3f} of the images flipped, not half"
        shifted = random_translate(x.to(device), 2)
        zeros = (shifted == 0).flatten(1).sum(1)  # > 1 where a shift zero-filled a row or column
        moved = (zeros > 1).float().mean().item()
        assert shifted.shape == x.shape and abs(moved - 24 / 25) < 0.01, f"{device}: {moved:.3f} moved"  # 24 of 25


def test_dlexp_train_chooses_the_gpu_by_itself(run_dlexp):
    result = run_dlexp("train", "dataset=digits", "trainer.max_epochs=3", "logger=none")
    assert result.returncode == 0, result.stderr[-2000:]
    run = run_dir_of(result)
    config = (run / "config.yaml").read_text()
    assert "accelerator: gpu" in config and "precision: bf16-mixed" in config
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/acc"] > 0.8, metrics
