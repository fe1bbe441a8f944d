"""dlexp/tasks/autoencoding.py: denoising, the VAE's KL term, deterministic eval, the linear AE as PCA, bf16."""
from __future__ import annotations

import math

import pytest
import torch

from dlexp.engine.build import build
from dlexp.nets.autoencoders import MLPAutoEncoder, MLPVAE
from dlexp.tasks.autoencoding import AutoencodingTask

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec")


def adam(params) -> torch.optim.Optimizer:
    """An optimizer factory as the task gets it from Hydra (called with params=...)."""
    return torch.optim.Adam(params, lr=1e-3)


def ae_task(noise: str = "none", noise_level: float = 0.3, **kwargs) -> AutoencodingTask:
    torch.manual_seed(0)
    return AutoencodingTask(MLPAutoEncoder(1, 28, hidden=[32, 8]), adam, recon_loss="mse", noise=noise,
                            noise_level=noise_level, **kwargs)


@pytest.mark.parametrize("level", [0.1, 0.3, 0.7])
def test_masking_noise_zeroes_that_fraction_of_pixels(level):
    """noise=masking zeroes about noise_level of the pixels and leaves the others exactly as they were."""
    task = ae_task("masking", level)
    torch.manual_seed(1)
    x = torch.rand(64, 1, 28, 28) + 0.5  # no pixel is zero to start with
    noisy = task.corrupt(x)
    zeroed = noisy == 0
    assert float(zeroed.float().mean()) == pytest.approx(level, abs=0.01)
    assert torch.equal(noisy[~zeroed], x[~zeroed])


@pytest.mark.parametrize("level", [0.1, 0.5])
def test_gaussian_noise_has_the_level_as_std(level):
    """noise=gaussian adds zero-mean noise of std noise_level; noise=none leaves x alone."""
    task = ae_task("gaussian", level)
    torch.manual_seed(1)
    x = torch.rand(64, 1, 28, 28)
    delta = task.corrupt(x) - x
    assert float(delta.std()) == pytest.approx(level, rel=0.03)
    assert abs(float(delta.mean())) < 5 * level / math.sqrt(delta.numel())
    assert ae_task("none").corrupt(x) is x


@pytest.mark.parametrize("noise, level, expected", [("masking", 0.3, 0.3 * 784), ("gaussian", 0.5, 0.25 * 784)])
def test_denoising_corrupts_the_input_and_keeps_the_clean_target(monkeypatch, noise, level, expected):
    """With a perfect identity 'autoencoder' the training loss is the distance from the corrupted input to the
    clean x (about noise_level * 784 masked pixels of 1, or 784 * level^2), not 0: the target stays clean.
    Validation sees clean inputs, so its loss is 0."""
    task = ae_task(noise, level)
    seen = []

    def identity(source):
        seen.append(source)
        return source, source.new_zeros(source.shape[0])

    monkeypatch.setattr(task, "reconstruct", identity)
    x = torch.ones(32, 1, 28, 28)
    torch.manual_seed(2)
    train_loss = float(task.model_step(x, "train")["train/loss"])
    assert train_loss == pytest.approx(expected, rel=0.05)
    assert not torch.equal(seen[0], x)
    assert float(task.model_step(x, "val")["val/loss"]) == 0.0 and seen[1] is x


def test_invalid_autoencoding_settings_raise():
    """Bad recon_loss / noise / noise_level values, and BCE on a linear decoder, are refused."""
    with pytest.raises(ValueError, match="recon_loss"):
        AutoencodingTask(MLPAutoEncoder(1, 28), adam, recon_loss="l1")
    with pytest.raises(ValueError, match="needs a decoder with output=sigmoid"):
        AutoencodingTask(MLPAutoEncoder(1, 28, output="linear"), adam, recon_loss="bce")
    with pytest.raises(ValueError, match="task.noise must be one of"):
        ae_task("salt")
    with pytest.raises(ValueError, match="noise_level"):
        ae_task("masking", 1.0)
    with pytest.raises(ValueError, match="noise_level"):
        ae_task("gaussian", -0.1)


def vae_task(beta: float = 1.0) -> AutoencodingTask:
    torch.manual_seed(0)
    return AutoencodingTask(MLPVAE(1, 4, hidden=[8], latent_dim=2), adam, recon_loss="bce", beta=beta)


MU = torch.tensor([[1.0, 0.0], [0.5, -2.0]])
LOGVAR = torch.tensor([[0.0, math.log(2.0)], [-1.0, 0.5]])


def test_kl_term_is_the_closed_form(monkeypatch):
    """KL(N(mu, sigma^2) || N(0, I)) = 0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2) per sample (hand-computed
    for the first sample), and the loss adds beta * its batch mean to the summed reconstruction."""
    task = vae_task(beta=0.5).eval()
    monkeypatch.setattr(task.net, "encode", lambda x: (MU, LOGVAR))
    x = torch.rand(2, 1, 4, 4)
    out, kl = task.reconstruct(x)
    assert float(kl[0]) == pytest.approx(0.5 + 0.5 * (1 - math.log(2.0)), rel=1e-6)
    closed = [0.5 * sum(m ** 2 + math.exp(lv) - 1 - lv for m, lv in zip(mu, lv_row))
              for mu, lv_row in zip(MU.tolist(), LOGVAR.tolist())]
    torch.testing.assert_close(kl, torch.tensor(closed))
    reference = torch.distributions.kl_divergence(torch.distributions.Normal(MU, (0.5 * LOGVAR).exp()),
                                                  torch.distributions.Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(kl, reference)
    torch.testing.assert_close(out, task.net.decode(MU))  # eval: z = mu
    recon = torch.nn.functional.binary_cross_entropy(out.clamp(1e-6, 1 - 1e-6), x, reduction="none").flatten(1).sum(1)
    torch.testing.assert_close(task.model_step(x, "val")["val/loss"], recon.mean() + 0.5 * kl.mean())


def test_vae_is_deterministic_in_eval_and_samples_in_training():
    """eval: the reconstruction decodes mu, the same every call; training: z = mu + sigma * eps differs."""
    task = vae_task()
    x = torch.rand(8, 1, 4, 4)
    task.eval()
    first, again = task(x), task(x)
    assert torch.equal(first, again)
    mu, _ = task.net.encode(x)
    torch.testing.assert_close(first, task.net.decode(mu))
    task.train()
    a, b = task(x), task(x)
    assert not torch.allclose(a, b) and not torch.allclose(a, first)


def test_linear_autoencoder_on_points3d_learns_the_pca_plane(make_cfg):
    """model=linear_ae on dataset=points3d (the notes' PCA example): the 2-d code's decoder spans the top-2
    principal plane of the training points and the reconstruction error approaches PCA's (the smallest
    eigenvalue of the covariance)."""
    cfg = make_cfg("model=linear_ae", "dataset=points3d", "trainer.max_epochs=30", "trainer.limit_train_batches=1.0",
                   "trainer.limit_val_batches=1")
    parts = build(cfg, "linear_ae")
    task, dm = parts.task, parts.datamodule
    parts.trainer.fit(task, datamodule=dm)
    x = dm.splits["train"][0].flatten(1).double()
    centred = x - x.mean(0)
    eigenvalues, eigenvectors = torch.linalg.eigh(centred.T @ centred / len(x))
    task.eval()
    with torch.no_grad():
        out = task(dm.splits["train"][0]).flatten(1).double()
    error = float(((out - x) ** 2).sum(1).mean())
    assert eigenvalues[0] <= error * (1 + 1e-6) <= eigenvalues[0] * 1.05 and error < 0.1 * float(eigenvalues.sum())
    basis, _ = torch.linalg.qr(task.net.decoder[0].weight.detach().double())  # (3, 2) column space
    cosines = torch.linalg.svdvals(basis.T @ eigenvectors[:, 1:])  # principal angles to the top-2 plane
    assert float(cosines.min()) > 0.99


def test_autoencoder_trains_under_bf16_autocast(make_cfg):
    """trainer.precision=bf16-mixed (the gpu trainer's setting): the reconstruction loss is computed in float32
    outside autocast (CUDA refuses binary_cross_entropy under autocast) and stays finite."""
    parts = build(make_cfg("model=vae", "trainer.precision=bf16-mixed"), "vae")
    parts.trainer.fit(parts.task, datamodule=parts.datamodule)
    loss = parts.trainer.callback_metrics["train/loss_epoch"]
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
