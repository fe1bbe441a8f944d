"""GANs as a LightningModule with manual optimization: n_critic D steps per G step, two optimizers."""
from __future__ import annotations

import copy
from typing import Any

import pytorch_lightning as pl
import torch

from dlexp.losses.gan import GANLoss, gradient_penalty
from dlexp.losses.regularizers import Regularization
from dlexp.nets.gans import GAN
from dlexp.nets.modes import eval_mode
from dlexp.tasks.classification import OptimizerFactory, SchedulerFactory, training_batches
from dlexp.tasks.guard import all_finite, check_on_nan
from dlexp.tasks.train_log import TrainLog


def _spectral(module: torch.nn.Module) -> bool:
    return any("parametrizations.weight" in name for name, _ in module.named_parameters())


PROG_BAR = ("train/d_loss", "train/d_real", "train/d_fake", "train/g_loss")  # shown on the progress bar


class AdversarialTask(pl.LightningModule):
    """Every batch trains D (the critic) once; every n_critic-th batch also trains G.

    Logs train/d_loss, train/g_loss, train/d_real and train/d_fake (D's mean probability for BCE losses,
    mean score otherwise), train/wasserstein (E[D(x)] - E[D(G(z))]) for critics and train/gp.
    Gradient clipping comes from the grad_clip callback, which applies to each network's step.
    """

    # what `monitor` may name (checked before a run or a search starts: dlexp/config/checks.py); val/fid: callbacks=[...,fid]
    logged_metrics = ("train/d_loss", "train/g_loss", "train/d_real", "train/d_fake", "train/wasserstein", "train/gp",
                      "val/fid")

    def __init__(
        self,
        net: GAN,
        optimizer: OptimizerFactory,
        loss: GANLoss,
        scheduler: SchedulerFactory | None = None,
        regularization: Regularization | None = None,
        n_critic: int = 1,
        g_lr: float | None = None,
        d_lr: float | None = None,
        ema_decay: float | None = None,
        label_smoothing: float = 0.0,
        instance_noise: float = 0.0,
        n_samples: int = 64,
        on_nan: str = "stop",
    ) -> None:
        super().__init__()
        self.on_nan = check_on_nan(on_nan)
        self.train_log = TrainLog(self.logged_metrics, PROG_BAR)
        if not isinstance(net, GAN):
            raise ValueError("the adversarial task needs a model with a generator and a discriminator")
        if loss.wasserstein and not (loss.clip_value or loss.gp_weight or _spectral(net.discriminator)):
            raise ValueError("a Wasserstein critic must be kept Lipschitz: set gan_loss.clip_value, use "
                             "gan_loss=wasserstein_gp, or model.discriminator.spectral_norm=true")
        if n_critic < 1:
            raise ValueError(f"task.n_critic must be >= 1 (discriminator steps per generator step), got {n_critic}")
        if ema_decay is not None and not 0 < ema_decay < 1:
            raise ValueError(f"task.ema_decay must be in (0, 1), got {ema_decay}")
        if label_smoothing and not loss.uses_real_label:
            raise ValueError(f"task.label_smoothing needs a BCE or least-squares gan_loss, not {type(loss).__name__}")
        if not 0 <= label_smoothing < 0.5 or instance_noise < 0:
            raise ValueError("task.label_smoothing must be in [0, 0.5) and task.instance_noise >= 0")
        reg = regularization or Regularization()
        if reg.has_penalty or reg.max_norm or reg.label_smoothing:
            raise ValueError("regularizer=... applies to classifiers and autoencoders; GANs have task.label_smoothing, "
                             "task.instance_noise and spectral_norm in the discriminator")
        if scheduler is not None:  # refuse an epoch-level schedule (plateau) now, not mid-run
            probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
            if scheduler(probe, 100, 10).get("interval") != "step":
                raise ValueError("GAN schedules step every batch: scheduler=plateau is not supported")
        self.automatic_optimization = False
        self.net, self.loss = net, loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.n_critic, self.g_lr, self.d_lr = n_critic, g_lr, d_lr
        self.ema_decay, self.real_label, self.instance_noise = ema_decay, 1.0 - label_smoothing, instance_noise
        self.generator_ema = copy.deepcopy(net.generator).requires_grad_(False) if ema_decay else None
        # the sample grid's noise (and labels, class by class): fixed by the run's seed, kept in the checkpoint
        g = torch.Generator().manual_seed(torch.initial_seed())
        self.register_buffer("fixed_noise", torch.randn(n_samples, net.latent_dim, generator=g))
        self.register_buffer("fixed_labels", torch.arange(n_samples) % max(1, net.num_classes))

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net.sample(z, labels)

    def _labels(self, y: torch.Tensor) -> torch.Tensor | None:
        return y if self.net.num_classes else None

    def _noisy(self, x: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """Instance noise: N(0, sigma^2) on D's inputs, sigma annealed linearly to 0 over the run."""
        if not self.instance_noise:
            return x
        trainer = self.trainer
        progress = (trainer.current_epoch + batch_idx / max(1, trainer.num_training_batches)) / max(1, trainer.max_epochs)
        return x + self.instance_noise * max(0.0, 1.0 - progress) * torch.randn_like(x)

    def _report(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(scores).mean() if self.loss.logits else scores.mean()

    def training_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        labels = self._labels(y)
        opt_g, opt_d = self.optimizers()
        self._critic_step(opt_d, x, labels, batch_idx)
        generator_turn = (batch_idx + 1) % self.n_critic == 0  # G steps once every n_critic batches
        if generator_turn:
            self._generator_step(opt_g, x, labels, batch_idx)
        # each schedule advances with its own optimizer's steps: D every batch, G every n_critic batches
        schedulers = self.lr_schedulers()
        if schedulers:
            sched_g, sched_d = schedulers
            sched_d.step()
            if generator_turn:
                sched_g.step()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.train_log.end_batch(self, batch_idx)

    def on_train_epoch_end(self) -> None:
        self.train_log.end_epoch(self)

    def _critic_step(self, opt_d: Any, x: torch.Tensor, labels: torch.Tensor | None, batch_idx: int) -> None:
        """One discriminator / critic step on a real batch and as many samples of G (not trained here)."""
        G, D = self.net.generator, self.net.discriminator
        z = torch.randn(x.shape[0], self.net.latent_dim, device=x.device)
        with torch.no_grad():
            fake = G(z, labels)
        real_in, fake_in = self._noisy(x, batch_idx), self._noisy(fake, batch_idx)
        self.toggle_optimizer(opt_d)
        d_real, d_fake = D(real_in, labels), D(fake_in, labels)
        d_loss = self.loss.d_loss(d_real, d_fake, self.real_label)
        if self.loss.gp_weight:
            gp = gradient_penalty(D, real_in, fake_in, labels)
            self.train_log.add({"train/gp": gp}, x.shape[0])
            d_loss = d_loss + self.loss.gp_weight * gp
        d_finite = all_finite(self, self.on_nan, {"train/d_loss": d_loss})
        if d_finite:
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            opt_d.step()
        self.untoggle_optimizer(opt_d)
        if self.loss.clip_value:  # WGAN: keep the critic K-Lipschitz by clamping its weights
            with torch.no_grad():
                for p in D.parameters():
                    p.clamp_(-self.loss.clip_value, self.loss.clip_value)
        if d_finite:
            critic = {"train/d_loss": d_loss, "train/d_real": self._report(d_real),
                      "train/d_fake": self._report(d_fake)}
            if self.loss.wasserstein:
                critic["train/wasserstein"] = d_real.mean() - d_fake.mean()
            self.train_log.add(critic, x.shape[0])

    def _generator_step(self, opt_g: Any, x: torch.Tensor, labels: torch.Tensor | None, batch_idx: int) -> None:
        """One generator step against the current critic; then the EMA copy follows."""
        self.toggle_optimizer(opt_g)
        z = torch.randn(x.shape[0], self.net.latent_dim, device=x.device)
        g_loss = self.loss.g_loss(self.net.discriminator(self._noisy(self.net.generator(z, labels), batch_idx), labels))
        if all_finite(self, self.on_nan, {"train/g_loss": g_loss}):
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(g_loss)
            opt_g.step()
            self.train_log.add({"train/g_loss": g_loss}, x.shape[0])
        self.untoggle_optimizer(opt_g)
        self._update_ema()

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.generator_ema is None:
            return
        for ema, p in zip(self.generator_ema.parameters(), self.net.generator.parameters()):
            ema.lerp_(p, 1.0 - self.ema_decay)
        for ema, b in zip(self.generator_ema.buffers(), self.net.generator.buffers()):
            ema.copy_(b)

    def configure_optimizers(self):
        def make(module: torch.nn.Module, lr: float | None) -> torch.optim.Optimizer:
            return self.optimizer_factory(params=module.parameters(), **({"lr": lr} if lr else {}))

        optimizers = [make(self.net.generator, self.g_lr), make(self.net.discriminator, self.d_lr)]  # TTUR
        if self.scheduler_factory is None:
            return optimizers
        per_epoch, batches = training_batches(self.trainer)
        schedules = [self.scheduler_factory(opt, max(1, steps // every), max(1, per_epoch // every))
                     for opt, every, steps in ((optimizers[0], self.n_critic, batches), (optimizers[1], 1, batches))]
        return optimizers, schedules

    @torch.no_grad()
    def sample_images(self, reference: torch.Tensor | None = None, nrow: int = 8) -> dict[str, torch.Tensor]:
        """The fixed-noise grid, from the EMA generator when there is one."""
        with eval_mode(self.generator_ema or self.net.generator) as generator:
            return {"": generator(self.fixed_noise, self.fixed_labels if self.net.num_classes else None)}

    def check_batch(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Fail before training when G's images do not have the data's shape or D cannot score them."""
        z = torch.randn(x.shape[0], self.net.latent_dim)
        fake = self.net.generator(z, self._labels(y))
        if fake.shape != x.shape:
            raise ValueError(f"the generator makes images of shape {tuple(fake.shape[1:])}, the data has "
                             f"{tuple(x.shape[1:])}")
        scores = self.net.discriminator(x, self._labels(y))
        if scores.shape != (x.shape[0],):
            raise ValueError(f"the discriminator gives scores of shape {tuple(scores.shape)}, expected ({x.shape[0]},)")
