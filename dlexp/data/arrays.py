"""Data that is not images, held and served like images: token ids, multi-hot rows, table rows, signals, text."""
from __future__ import annotations

from typing import Callable

import torch

from dlexp.data.datamodule import TensorDataModule
from dlexp.data.sources import ImageData

KINDS = ("tokens", "multi_hot", "tabular", "signal", "chars")
INTEGER_KINDS = ("tokens", "chars")  # x holds ids < vocab_size


class ArrayDataModule(TensorDataModule):
    """Samples of one declared `kind` and `shape` (per sample, without the batch dimension):

    - tokens (seq_len,) int64 word ids, 0 = padding;  chars (seq_len,) int64 character ids (language models:
      y is the same window shifted by one character);
    - multi_hot (vocab_size,) float 0/1;  tabular (num_features,) float, standardised with the training split's
      mean and std only (`standardize`);  signal (channels, length) float, normalised by the source.

    num_classes 0 means regression targets (float y); 1 output with num_classes 2 is binary classification.
    """

    def __init__(self, source: Callable[[], ImageData], name: str, kind: str, shape: list[int], num_classes: int,
                 vocab_size: int = 0, standardize: bool = False, batch_size: int = 64, val_fraction: float = 0.1,
                 split_seed: int = 0, folds: int = 0, fold: int = 0, seed: int = 0) -> None:
        super().__init__(source, name, num_classes, batch_size, val_fraction, split_seed, folds, fold, seed)
        if kind not in KINDS:
            raise ValueError(f"dataset.kind must be one of {', '.join(KINDS)}, got '{kind}'")
        if kind in INTEGER_KINDS and vocab_size < 2:
            raise ValueError(f"dataset.vocab_size must be >= 2 for kind={kind}, got {vocab_size}")
        self.kind, self.shape, self.vocab_size, self.standardize = kind, tuple(shape), vocab_size, standardize
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None

    def check(self, data: ImageData) -> None:
        shape = tuple(data.train_x.shape[1:])
        if shape != self.shape:
            raise ValueError(f"dataset '{self.name}' holds samples of shape {shape} but dataset.shape is "
                             f"{list(self.shape)}")
        if self.kind in INTEGER_KINDS:
            top = int(max(data.train_x.max(), data.test_x.max()))
            if top >= self.vocab_size:
                raise ValueError(f"dataset '{self.name}' holds id {top} but dataset.vocab_size={self.vocab_size} "
                                 "(a vocabulary or num_words mismatch)")
        super().check(data)

    def fit_statistics(self, train_x: torch.Tensor) -> None:
        """Standardisation statistics from the training split only (the notes: never from validation or test)."""
        if self.standardize:
            self.mean = train_x.float().mean(dim=0, keepdim=True)
            self.std = train_x.float().std(dim=0, keepdim=True).clamp_min(1e-8)

    def transform(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        if self.kind in INTEGER_KINDS:
            return x.long()
        x = x.float()
        if self.mean is not None:
            x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return x
