"""Sample grids of a generative run (images, or line plots of 1-D signals): PNGs in samples/ and images in
TensorBoard, every N epochs and at the end."""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from dlexp.data.datamodule import denormalize
from dlexp.plots import save_grid, signal_panels
from dlexp.nets.modes import eval_mode


def pictures(samples: torch.Tensor, datamodule: pl.LightningDataModule) -> torch.Tensor:
    """[0, 1] images of a task's samples: images (B, C, H, W) denormalised, signals (B, C, L) as line plots."""
    if samples.dim() == 3:
        return signal_panels(samples)
    return denormalize(samples, datamodule.mean, datamodule.std)


class SampleImages(pl.Callback):
    """Asks the task for its grids (task.sample_images) and writes samples/<prefix>epoch_0005.png.

    GANs draw from fixed noise; autoencoders reconstruct the first n validation images (input above
    reconstruction) and VAEs also decode fixed prior draws (prior_epoch_*.png).
    """

    def __init__(self, dirpath: str, every_n_epochs: int = 5, n: int = 64, nrow: int = 8) -> None:
        if every_n_epochs < 1 or n < 1:
            raise ValueError("samples: every_n_epochs and n must be >= 1")
        self.dirpath, self.every_n_epochs, self.n, self.nrow = Path(dirpath), every_n_epochs, n, nrow
        self.last_written = -1

    def _reference(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.Tensor | None:
        dm = trainer.datamodule
        if dm is None:
            return None
        split = "val" if dm.sizes().get("val") else "test"
        x = dm.splits[split][0][: self.n].to(pl_module.device)
        return dm.transform(x, training=False)

    def write(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        """Write the task's grids numbered by `epoch` (epochs completed)."""
        if epoch == self.last_written or not trainer.is_global_zero:
            return
        with eval_mode(pl_module):
            grids = pl_module.sample_images(self._reference(trainer, pl_module), nrow=self.nrow)
        dm = trainer.datamodule
        for prefix, images in grids.items():
            if images.shape[-1] < 4:  # not images (e.g. the 3-D points of the PCA example): nothing to look at
                continue
            path = self.dirpath / f"{prefix}epoch_{epoch:04d}.png"
            grid = save_grid(pictures(images, dm), path, self.nrow)
            for logger in trainer.loggers:
                if isinstance(logger, pl.loggers.TensorBoardLogger):
                    logger.experiment.add_image(f"samples/{prefix.rstrip('_') or 'grid'}", grid, trainer.global_step)
        self.last_written = epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1  # the counter advances only after this hook
        if epoch % self.every_n_epochs == 0:
            self.write(trainer, pl_module, epoch)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.write(trainer, pl_module, trainer.current_epoch)  # epochs completed; no-op if just written
