"""Data that is not images, held and served like images: token ids, multi-hot rows, table rows, signals, text."""
from __future__ import annotations

from typing import Callable

import torch

from dlexp.data.datamodule import TensorDataModule
from dlexp.data.sources import SourceData

KINDS = ("tokens", "multi_hot", "tabular", "signal", "chars")
INTEGER_KINDS = ("tokens", "chars")  # x holds ids < vocab_size


class ArrayDataModule(TensorDataModule):
    """Samples of one declared `kind` and `shape` (per sample, without the batch dimension):

    - tokens (seq_len,) int64 word ids, 0 = padding;  chars (seq_len,) int64 character ids (language models:
      y is the same window shifted by one character);
    - multi_hot (vocab_size,) 0/1 (uint8 in memory: 25,000 IMDB rows take 250 MB, not 1 GB; float batches);  tabular (num_features,) float, standardised with the training split's
      mean and std only (`standardize`);  signal (channels, length) float, normalised by the source.

    num_classes 0 means regression targets (float y); 1 output with num_classes 2 is binary classification.
    mean / std: a fixed normalisation of float data, per channel or feature (null: none; standardize learns it).
    seq_len / length: the keys `shape` is interpolated from (models read them too); val_split: random, or tail
    (the last val_fraction of the training part, in order: text windows overlap, a random share would leak).
    """

    def __init__(self, source: Callable[[], SourceData], name: str, kind: str, shape: list[int], num_classes: int,
                 vocab_size: int = 0, standardize: bool = False, mean: list[float] | None = None,
                 std: list[float] | None = None, seq_len: int | None = None, length: int | None = None,
                 batch_size: int = 64, val_fraction: float = 0.1, val_split: str = "random", split_seed: int = 0,
                 folds: int = 0, fold: int = 0, seed: int = 0) -> None:
        super().__init__(source, name, num_classes, batch_size, val_fraction, split_seed, folds, fold, seed, val_split)
        if kind not in KINDS:
            raise ValueError(f"dataset.kind must be one of {', '.join(KINDS)}, got '{kind}'")
        if kind in INTEGER_KINDS and vocab_size < 2:
            raise ValueError(f"dataset.vocab_size must be >= 2 for kind={kind}, got {vocab_size}")
        self.kind, self.shape, self.vocab_size, self.standardize = kind, tuple(shape), vocab_size, standardize
        if (mean is None) != (std is None) or (mean is not None and (standardize or kind in INTEGER_KINDS)):
            raise ValueError("dataset.mean and dataset.std go together, for float data that is not standardized")
        per_channel = (1, -1, *[1] * (len(self.shape) - 1))  # (1, C, 1) for signals, (1, F) for rows
        self.mean = torch.tensor(mean, dtype=torch.float32).view(per_channel) if mean is not None else None
        self.std = torch.tensor(std, dtype=torch.float32).view(per_channel) if std is not None else None

    def check(self, data: SourceData) -> None:
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
