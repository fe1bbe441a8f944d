"""val/fid during training: FID of generated samples against validation images, every N epochs."""
from __future__ import annotations

import pytorch_lightning as pl
import torch

from dlexp.data.datamodule import denormalize
from dlexp.metrics.extractor import Extractor
from dlexp.metrics.generative import frechet_distance
from dlexp.nets.modes import eval_mode


class FIDMonitor(pl.Callback):
    """Logs val/fid (n samples from fixed noise vs n validation images, on a domain classifier's features).

    With callbacks=[default,fid] the best checkpoint is picked by it (lower is better). conf/callbacks/fid.yaml
    builds it from a classifier run directory (dlexp/engine/extractors.py).
    """

    def __init__(self, extractor: Extractor, every_n_epochs: int = 5, n: int = 500, seed: int = 0) -> None:
        if every_n_epochs < 1 or n < 2:
            raise ValueError("fid: every_n_epochs must be >= 1 and n >= 2")
        self._extractor, self.every_n_epochs, self.n, self.seed = extractor, every_n_epochs, n, seed
        self._real: torch.Tensor | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not hasattr(pl_module.net, "sample"):
            raise ValueError("the fid callback needs a GAN or VAE model")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        dm = trainer.datamodule
        if self._real is None:
            x = dm.splits["val" if dm.sizes()["val"] else "test"][0][: self.n].cpu()
            self._real = self._extractor.run(x.float() / 255 if x.dtype == torch.uint8 else x.float())[0]
        g = torch.Generator().manual_seed(self.seed)
        z = torch.randn(self.n, pl_module.net.latent_dim, generator=g).to(pl_module.device)
        classes = getattr(pl_module.net, "num_classes", 0)
        labels = (torch.arange(self.n) % classes).to(pl_module.device) if classes else None
        ema = getattr(pl_module, "generator_ema", None)
        sample = ema if ema is not None else pl_module.net.sample  # the GAN's EMA copy when it keeps one
        with eval_mode(pl_module), torch.no_grad():
            fake = sample(z, labels)
        features = self._extractor.run(denormalize(fake, dm.mean, dm.std))[0]
        pl_module.log("val/fid", frechet_distance(self._real, features), on_epoch=True, sync_dist=True)
