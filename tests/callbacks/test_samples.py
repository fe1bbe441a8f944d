"""dlexp/callbacks/samples.py: the sample-image grids of GANs and VAEs, and the fixed noise behind them."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.utils import make_grid

from dlexp.data.datamodule import denormalize
from dlexp.engine.build import build

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec")

# small DCGAN nets on the digits (1x28x28), 16 a batch
SMALL_DCGAN = ["model.generator.width=8", "model.discriminator.width=8", "model.generator.latent_dim=16",
               "dataset.batch_size=16"]
GRID = ["task.n_samples=16", "callbacks.samples.every_n_epochs=1", "callbacks.samples.n=16",
        "callbacks.samples.nrow=4", "trainer.limit_train_batches=2"]


def png(path) -> np.ndarray:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def expected_grid(images: torch.Tensor, dm) -> np.ndarray:
    grid = make_grid(denormalize(images, dm.mean, dm.std), nrow=4, padding=2, pad_value=1.0)
    return grid.mul(255).add(0.5).clamp(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()


@pytest.mark.parametrize("model", ["dcgan", "vae"])
def test_sample_grids_are_written_and_the_noise_is_checkpointed(make_cfg, tmp_path, model):
    """every_n_epochs=1, n=16, nrow=4: samples/epoch_0001.png is a 4x4 grid of 28 px tiles with padding 2
    (4 * 30 + 2 px a side) showing the task's grid (the fixed-noise samples; for the VAE inputs and their
    reconstructions, first tile the first validation image) and for the VAE prior_epoch_0001.png too; the
    fixed noise is in the checkpoint's state_dict (loadable with weights_only=True)."""
    overrides = [*GRID, *(SMALL_DCGAN if model == "dcgan" else ["dataset.batch_size=16"])]
    cfg = make_cfg(f"model={model}", *overrides)
    parts = build(cfg, model)
    task, trainer, dm = parts.task, parts.trainer, parts.datamodule
    trainer.fit(task, datamodule=dm)
    samples = tmp_path / "run" / "samples"
    side = 4 * (28 + 2) + 2
    grid = png(samples / "epoch_0001.png")
    assert grid.shape == (side, side, 3)
    assert (grid[:2] == 255).all() and (grid[:, :2] == 255).all()  # white padding
    task.eval()
    reference = dm.transform(dm.splits["val"][0][:16], training=False)
    grids = task.sample_images(reference, nrow=4)
    assert np.abs(grid.astype(int) - expected_grid(grids[""], dm)).max() <= 1
    expected_files = {"epoch_0001.png"}
    if model == "vae":
        expected_files.add("prior_epoch_0001.png")
        prior = png(samples / "prior_epoch_0001.png")
        assert prior.shape == (side, side, 3)
        assert np.abs(prior.astype(int) - expected_grid(task.net.sample(task.fixed_noise), dm)).max() <= 1
        first_input = dm.splits["val"][0][0, 0].numpy().astype(int)  # mean 0, std 1: the stored uint8 pixels
        assert np.abs(grid[2:30, 2:30, 0].astype(int) - first_input).max() <= 1
    assert {p.name for p in samples.iterdir()} == expected_files

    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert torch.equal(state["fixed_noise"], task.fixed_noise)
    assert task.fixed_noise.shape == (16, task.net.latent_dim)


def test_reconstruction_grid_puts_inputs_above_their_reconstructions(make_cfg, tmp_path):
    """Documented layout (AutoencodingTask.sample_images, SampleImages): inputs above their reconstructions, i.e.
    with nrow=4 the first grid row holds the first 4 validation inputs and the second row their reconstructions."""
    cfg = make_cfg("model=vae", *GRID, "dataset.batch_size=16")
    parts = build(cfg, "vae")
    dm = parts.datamodule
    parts.trainer.fit(parts.task, datamodule=dm)
    grid = png(tmp_path / "run" / "samples" / "epoch_0001.png")[..., 0].astype(int)
    inputs = dm.splits["val"][0][:4, 0].numpy().astype(int)

    def tile(row: int, col: int) -> np.ndarray:
        return grid[2 + 30 * row: 30 + 30 * row, 2 + 30 * col: 30 + 30 * col]

    for col in range(4):
        assert np.abs(tile(0, col) - inputs[col]).max() <= 1, f"first row, column {col} is not input {col}"


@pytest.mark.parametrize("model", ["dcgan", "vae"])
def test_fixed_noise_follows_the_seed(make_cfg, model):
    """Two builds with the same seed draw the same fixed noise (whatever ran between); another seed differs."""
    first = build(make_cfg(f"model={model}"), model).task.fixed_noise
    torch.randn(100)  # global RNG use between builds must not matter
    again = build(make_cfg(f"model={model}"), model).task.fixed_noise
    other = build(make_cfg(f"model={model}", "seed=7"), model).task.fixed_noise
    assert torch.equal(first, again)
    assert first.shape == other.shape and not torch.equal(first, other)
