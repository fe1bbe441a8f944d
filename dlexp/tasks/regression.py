"""Scalar regression as a LightningModule (the notes' Boston house prices): MSE loss, mean absolute error metric."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dlexp.tasks.supervised import SupervisedTask


class RegressionTask(SupervisedTask):
    """Fits float targets y (B,) with the net's (B, 1) or (B,) output by MSE; logs stage/loss (MSE), stage/mae and
    val/mae_best (the lowest val/mae so far). The notes: no activation on the output, MSE loss, MAE to read."""

    eval_report = "regression"  # dlexp eval: test MAE, RMSE and a scatter plot (dlexp/engine/evaluation.py)
    # what `monitor` may name (checked before a run or a search starts: dlexp/config/checks.py)
    logged_metrics = ("train/loss", "train/mae", "train/reg_loss", "val/loss", "val/mae", "val/mae_best",
                      "test/loss", "test/mae")
    best_metric = "mae"

    def step_metrics(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
        """MSE and MAE of one batch, and its size."""
        x, y = batch
        predicted = self.net(x).reshape(-1)  # (B, 1) or (B,) -> (B,)
        y = y.to(predicted.dtype)
        return {"loss": F.mse_loss(predicted, y), "mae": F.l1_loss(predicted, y)}, y.numel()

    def check_batch(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Fail before training when the targets are not real numbers or the net does not give one per sample."""
        if not torch.is_floating_point(y):
            raise ValueError(f"regression needs float targets (a dataset with num_classes: 0), got {y.dtype} labels")
        out = self.net(x)
        if out.shape not in ((x.shape[0], 1), (x.shape[0],)):
            raise ValueError(f"the model outputs {tuple(out.shape)} for a batch of {x.shape[0]}; a regressor gives "
                             f"({x.shape[0]}, 1) (model.num_outputs: 1)")
