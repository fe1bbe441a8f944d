"""`dlexp train` with a generative config mistake (dlexp/config/checks.py, the nets and tasks): exit 2, one line."""
from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["model=convnet", "gan_loss=hinge"], ["GAN model", "discriminator", "convnet"]),
        (["model=dcgan", "task.n_critic=0"], ["n_critic"]),
        (["model=dcgan", "model.generator.latent_dim=0"], ["latent_dim"]),
        (["model=dcgan", "dataset=fake", "dataset.image_size=27"], ["image_size", "27"]),
        (["model=vae", "task.recon_loss=bce", "model.output=linear"], ["recon_loss=bce", "sigmoid"]),
    ],
    ids=["gan_loss-on-classifier", "n_critic-0", "latent_dim-0", "odd-image-size", "bce-linear-output"],
)
def test_generative_config_errors_exit_2_before_training(run_dlexp, tmp_path, overrides, expected):
    """A generative config mistake: exit 2, one plain line naming it, no traceback, no run directory."""
    result = run_dlexp("train", "trainer=debug", *overrides)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    err = result.stderr.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert "Traceback" not in result.stderr + result.stdout
    for words in expected:
        assert words in err, err
    assert not list((tmp_path / "outputs").glob("*/*")), "a run directory was left behind"
