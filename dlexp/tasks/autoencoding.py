"""Autoencoders and VAEs as a LightningModule: reconstruction (+ KL for a VAE), optional input corruption."""
from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from dlexp.losses.regularizers import Regularization
from dlexp.tasks.classification import OptimizerFactory, SchedulerFactory, configure
from dlexp.tasks.guard import all_finite, check_on_nan
from dlexp.tasks.train_log import TrainLog

NOISES = ("none", "gaussian", "masking")


class AutoencodingTask(pl.LightningModule):
    """Loss per sample = reconstruction summed over pixels (+ beta * KL for a VAE); logged as stage/loss,
    stage/recon_loss and stage/kl. Denoising: the input is corrupted, the target stays clean."""

    # what `monitor` may name (checked before a run or a search starts: dlexp/config/checks.py); kl: VAEs only; val/fid:
    # callbacks=[...,fid]
    logged_metrics = tuple(f"{stage}/{name}" for stage in ("train", "val", "test")
                           for name in ("loss", "recon_loss", "kl")) + ("train/reg_loss", "val/fid")

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        regularization: Regularization | None = None,
        recon_loss: str = "bce",
        beta: float = 1.0,
        noise: str = "none",
        noise_level: float = 0.3,
        n_samples: int = 64,
        on_nan: str = "stop",
    ) -> None:
        super().__init__()
        self.on_nan = check_on_nan(on_nan)
        if recon_loss not in ("bce", "mse"):
            raise ValueError(f"task.recon_loss must be bce or mse, got '{recon_loss}'")
        if recon_loss == "bce" and getattr(net, "output", None) != "sigmoid":
            raise ValueError("task.recon_loss=bce needs a decoder with output=sigmoid (data in [0, 1]); use mse")
        if noise not in NOISES:
            raise ValueError(f"task.noise must be one of {', '.join(NOISES)}, got '{noise}'")
        if not 0 <= noise_level < (1 if noise == "masking" else float("inf")):
            raise ValueError(f"task.noise_level out of range for {noise} noise: {noise_level}")
        self.net, self.optimizer_factory, self.scheduler_factory = net, optimizer, scheduler
        self.reg = regularization or Regularization()
        self.train_log = TrainLog(per_step=("train/loss", "train/reg_loss"), prog_bar=("train/loss",))
        if self.reg.label_smoothing or self.reg.max_norm:
            raise ValueError("regularizer label_smoothing and max_norm apply to classifiers; autoencoders take l1/l2/dropout")
        self.recon_loss, self.beta, self.noise, self.noise_level = recon_loss, beta, noise, noise_level
        self.variational = bool(getattr(net, "variational", False))
        # prior draws for the sample grid: fixed by the run's seed, kept in the checkpoint
        g = torch.Generator().manual_seed(torch.initial_seed())
        self.register_buffer("fixed_noise", torch.randn(n_samples, net.latent_dim, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(x)[0]

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """Denoising autoencoder input: x + N(0, level^2), or x with a `level` fraction of pixels zeroed."""
        if self.noise == "gaussian":
            return x + self.noise_level * torch.randn_like(x)
        if self.noise == "masking":
            return x * (torch.rand_like(x) >= self.noise_level)
        return x

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, per-sample KL); a VAE samples z = mu + sigma * eps while training, uses mu otherwise."""
        if not self.variational:
            return self.net.decode(self.net.encode(x)), x.new_zeros(x.shape[0])
        mu, logvar = self.net.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if self.training else mu
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)  # KL(q(z|x) || N(0, I)), (B,)
        return self.net.decode(z), kl

    def model_step(self, x: torch.Tensor, stage: str) -> dict[str, torch.Tensor]:
        source = self.corrupt(x) if stage == "train" and self.noise != "none" else x
        out, kl = self.reconstruct(source)
        with torch.autocast(device_type=x.device.type, enabled=False):  # BCE is refused under autocast (bf16 GPU)
            out, x32 = out.float(), x.float()
            if self.recon_loss == "bce":
                recon = F.binary_cross_entropy(out.clamp(1e-6, 1 - 1e-6), x32.clamp(0, 1), reduction="none")
            else:
                recon = F.mse_loss(out, x32, reduction="none")
        recon = recon.flatten(1).sum(dim=1).mean()  # summed over pixels, mean over the batch
        terms = {f"{stage}/loss": recon + self.beta * kl.mean(), f"{stage}/recon_loss": recon}
        if self.variational:
            terms[f"{stage}/kl"] = kl.mean()
        return terms

    def _log(self, terms: dict[str, torch.Tensor], n: int) -> None:
        """Validation and test: epoch means (training: self.train_log)."""
        for name, value in terms.items():
            self.log(name, value, on_epoch=True, prog_bar=name.endswith("/loss"), batch_size=n, sync_dist=True)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        terms = self.model_step(batch[0], "train")
        if self.reg.has_penalty:
            terms["train/reg_loss"] = self.reg.penalty(self.net)
        if not all_finite(self, self.on_nan, terms):
            return None  # Lightning skips backward and the optimizer step; nothing is logged
        self.train_log.add(terms, batch[0].shape[0])
        return terms["train/loss"] + terms.get("train/reg_loss", 0.0)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.train_log.end_batch(self, batch_idx)

    def on_train_epoch_end(self) -> None:
        self.train_log.end_epoch(self)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._log(self.model_step(batch[0], "val"), batch[0].shape[0])

    def test_step(self, batch, batch_idx: int) -> None:
        self._log(self.model_step(batch[0], "test"), batch[0].shape[0])

    def configure_optimizers(self):
        return configure(self, self.optimizer_factory(params=self.parameters()), self.scheduler_factory)

    @torch.no_grad()
    def sample_images(self, reference: torch.Tensor, nrow: int = 8) -> dict[str, torch.Tensor]:
        """Grids for the sample callback: rows of inputs, each above a row of their reconstructions; for a
        VAE also decoded prior samples."""
        half = max(nrow, reference.shape[0] // 2 // nrow * nrow)  # whole rows
        inputs = reference[:half]
        out, _ = self.reconstruct(inputs)
        rows = torch.stack([inputs.view(-1, nrow, *inputs.shape[1:]), out.view(-1, nrow, *out.shape[1:])], dim=1)
        grids = {"": rows.flatten(0, 2)}  # (rows, 2, nrow, C, H, W) -> inputs row, recon row, ...
        if self.variational:
            grids["prior_"] = self.net.sample(self.fixed_noise)
        return grids

    def check_batch(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Fail before training when the net cannot reconstruct images of this shape."""
        out, _ = self.reconstruct(x)
        if out.shape != x.shape:
            raise ValueError(f"the autoencoder outputs {tuple(out.shape[1:])} for images of shape {tuple(x.shape[1:])}")
