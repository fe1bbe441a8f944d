"""End-to-end generative runs through the installed `dlexp`: sample grids, checkpoints, `dlexp sample`."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import run_dir_of
from PIL import Image


def grid_size(n: int, nrow: int, side: int = 28) -> tuple[int, int]:
    """Pixel size of torchvision's make_grid with padding 2."""
    rows = -(-n // nrow)
    return nrow * (side + 2) + 2, rows * (side + 2) + 2


@pytest.mark.slow
def test_dcgan_on_digits_writes_grids_and_samples(run_dlexp):
    """model=dcgan: a grid per epoch, last.ckpt with both nets and the fixed noise, and dlexp sample images."""
    result = run_dlexp("train", "model=dcgan", "trainer.max_epochs=2", "trainer.limit_train_batches=4",
                       "callbacks.samples.every_n_epochs=1")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = run_dir_of(result)
    for epoch in (1, 2):
        with Image.open(run_dir / "samples" / f"epoch_{epoch:04d}.png") as img:
            img.verify()
        with Image.open(run_dir / "samples" / f"epoch_{epoch:04d}.png") as img:
            assert img.size == grid_size(64, 8)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 2
    for key in ("train/d_loss", "train/g_loss", "train/d_real", "train/d_fake"):
        assert key in metrics and metrics[key] == metrics[key], key  # present and not NaN
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    state = ckpt["state_dict"]
    assert any(k.startswith("net.generator.") for k in state) and any(k.startswith("net.discriminator.") for k in state)
    assert state["fixed_noise"].shape == (64, 100)
    assert not (run_dir / "checkpoints" / "best.ckpt").exists()  # a GAN has no validation metric to pick by

    grid = run_dlexp("sample", str(run_dir), "n=16", "seed=1")
    assert grid.returncode == 0, grid.stderr
    with Image.open(run_dir / "samples" / "sample_grid_n16_seed1.png") as img:
        assert img.size == grid_size(16, 8)
    strip = run_dlexp("sample", str(run_dir), "mode=interpolate", "n=16", "steps=8", "single=true")
    assert strip.returncode == 0, strip.stderr
    singles = sorted((run_dir / "samples" / "sample_interpolate_n16_seed0").glob("*.png"))
    assert len(singles) == 16
    with Image.open(singles[0]) as img:
        assert img.size == (28, 28)
    again = run_dlexp("sample", str(run_dir), "n=16", "seed=1", "out=again")
    assert (run_dir / "samples" / "sample_grid_n16_seed1.png").read_bytes() == (
        run_dir.parent.parent.parent / "again" / "sample_grid_n16_seed1.png").read_bytes(), again.stderr


@pytest.mark.slow
def test_wgan_gp_logs_critic_terms(run_dlexp):
    """model=wgan_gp: Wasserstein estimate and gradient penalty logged, n_critic 5 means 1 G step per 5 batches."""
    result = run_dlexp("train", "model=wgan_gp", "trainer.max_epochs=1", "trainer.limit_train_batches=10",
                       "logger=csv")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = run_dir_of(result)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"train/wasserstein", "train/gp"} <= metrics.keys()
    assert metrics["global_step"] == 10 + 2  # 10 critic steps + 2 generator steps


@pytest.mark.slow
def test_vae_reconstruction_loss_falls(run_dlexp):
    """model=vae on digits: validation reconstruction loss falls epoch over epoch; KL is logged separately."""
    result = run_dlexp("train", "model=vae", "trainer.max_epochs=4", "logger=csv")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = run_dir_of(result)
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    recon = [float(r["val/recon_loss"]) for r in rows if r.get("val/recon_loss")]
    assert len(recon) == 4 and recon == sorted(recon, reverse=True) and recon[-1] < 0.9 * recon[0], recon
    assert all(float(r["val/kl"]) > 0 for r in rows if r.get("val/kl"))
    assert (run_dir / "samples" / "prior_epoch_0004.png").exists()
    sampled = run_dlexp("sample", str(run_dir), "mode=interpolate", "n=32")
    assert sampled.returncode == 0, sampled.stderr


def test_sample_refuses_a_classifier_run(run_dlexp, tmp_path):
    """dlexp sample on a classifier run: exit 2 and a line saying it needs a GAN or VAE run."""
    run_dir = tmp_path / "outputs" / "runs" / "fake_run"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(
        "model:\n  _target_: dlexp.nets.classifiers.Softmax\n  in_channels: 1\n  image_size: 28\n  num_classes: 10\n"
        "  init_from: null\ndataset:\n  mean: [0.5]\n  std: [0.5]\n")
    result = run_dlexp("sample", str(run_dir))
    assert result.returncode == 2 and "GAN and VAE runs" in result.stderr
    bad = run_dlexp("sample", str(run_dir), "n=lots")
    assert bad.returncode == 2 and "n expects an integer" in bad.stderr
