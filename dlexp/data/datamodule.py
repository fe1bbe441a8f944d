"""Tensor-resident image data: one uint8 tensor per split, batched by index on the device.

torchvision's per-sample PIL path costs far more than the step of a small net; here a batch is an
index slice of a tensor that already lives on the training device, converted, augmented and
normalised there as a whole batch.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import pytorch_lightning as pl
import torch

from dlexp.data.augment import random_flip, random_translate
from dlexp.data.sources import SourceData


def denormalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Undo the dataset's normalisation (tanh range [-1, 1] with mean 0.5, std 0.5) into [0, 1] pixels."""
    return (images.float().cpu() * std.cpu() + mean.cpu()).clamp(0, 1)



class TensorBatches:
    """Iterable of (uint8 images, labels) index batches over tensors; reshuffled each epoch from seed + epoch.

    Stateful for exact resumption: the order depends only on (seed, epoch), so the position is just
    (epoch, batches done), which `position_fn` reads from the trainer when a checkpoint is saved (the
    iterator itself runs a batch ahead of training).

    Under DDP (world_size > 1) rank r takes every world_size-th index of the epoch's order, padded by
    wrapping around as torch's DistributedSampler does, so every rank runs the same number of batches.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0,
                 position_fn: Callable[[], tuple[int, int]] = lambda: (0, 0), rank: int = 0,
                 world_size: int = 1) -> None:
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.seed, self.position_fn, self.rank, self.world_size = seed, position_fn, rank, world_size
        self._resume_at: tuple[int, int] | None = None

    def __len__(self) -> int:
        return math.ceil(math.ceil(len(self.y) / self.world_size) / self.batch_size)

    def state_dict(self) -> dict[str, int]:
        epoch, done = self.position_fn()
        return {"epoch": epoch, "batches_done": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_at = (state["epoch"], state["batches_done"])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, epoch = len(self.y), self.position_fn()[0]
        skip = 0
        if self._resume_at is not None and self._resume_at[0] == epoch and self._resume_at[1] < len(self):
            skip = self._resume_at[1]  # continue the interrupted epoch where it stopped
        self._resume_at = None
        if self.shuffle:  # same order for the same seed and epoch, whatever ran before
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))
            order = order.to(self.x.device)
        else:
            order = torch.arange(n, device=self.x.device)
        if self.world_size > 1:  # this rank's share of the order, padded to a multiple of world_size
            total = math.ceil(n / self.world_size) * self.world_size
            order = order.repeat(math.ceil(total / n))[:total][self.rank::self.world_size]
        for start in range(skip * self.batch_size, len(order), self.batch_size):
            idx = order[start: start + self.batch_size]
            # index_select, not x[idx]: the same copy, ~20x faster on CPU (benchmarks/data_path.py)
            yield self.x.index_select(0, idx), self.y.index_select(0, idx)


class TensorDataModule(pl.LightningDataModule):
    """A whole dataset held as tensors: loaded once from a source, split (a seeded validation share, or fold `fold`
    of `folds` for K-fold validation), served as device-resident index batches.

    Subclasses declare what they hold (`kind`: image, tokens, multi_hot, tabular, signal, chars; nets declare the
    kinds they take) and how a batch becomes the net's input (`transform`).
    """

    kind = "tensor"

    def __init__(self, source: Callable[[], SourceData], name: str, num_classes: int, batch_size: int = 64,
                 val_fraction: float = 0.1, split_seed: int = 0, folds: int = 0, fold: int = 0, seed: int = 0,
                 val_split: str = "random") -> None:
        super().__init__()
        if val_split not in ("random", "tail"):
            raise ValueError(f"dataset.val_split must be random or tail, got '{val_split}'")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"dataset.val_fraction must be in [0, 1), got {val_fraction}")
        if batch_size < 1:
            raise ValueError(f"dataset.batch_size must be positive, got {batch_size}")
        if folds == 1 or folds < 0 or (folds and not 0 <= fold < folds):
            raise ValueError(f"K-fold needs dataset.folds >= 2 and 0 <= dataset.fold < folds, got folds={folds}, "
                             f"fold={fold}")
        self.source, self.name, self.num_classes = source, name, num_classes
        self.batch_size, self.val_fraction, self.split_seed = batch_size, val_fraction, split_seed
        self.folds, self.fold, self.seed, self.val_split = folds, fold, seed, val_split
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.features_cached = False  # splits hold a frozen prefix's outputs, served untransformed (frozen_cache.py)

    def load(self) -> None:
        """Read the source, check it against the declared shape, split train/val; idempotent (build calls it early
        to fail fast)."""
        if self.splits:
            return
        data = self.source()
        self.check(data)
        train, val = self._split(len(data.train_y))
        self.splits = {
            "train": (data.train_x[train], data.train_y[train]),
            "val": (data.train_x[val], data.train_y[val]),
            "test": (data.test_x, data.test_y),
        }
        self.fit_statistics(self.splits["train"][0])

    def _split(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(train indices, validation indices) of the source's training part."""
        if self.val_split == "tail":  # in order: the validation samples come after every training sample
            order = torch.arange(n)
            return order[: n - int(n * self.val_fraction)], order[n - int(n * self.val_fraction):]
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
        if self.folds:  # K-fold: the validation set is the fold-th of K near-equal parts of one seeded order
            parts = perm.tensor_split(self.folds)
            return torch.cat([q for i, q in enumerate(parts) if i != self.fold]), parts[self.fold]
        n_val = int(n * self.val_fraction)
        return perm[n_val:], perm[:n_val]

    def check(self, data: SourceData) -> None:
        """Refuse data that does not fit the declared shape or number of classes (a ValueError naming the key)."""
        if self.num_classes > 0 and not torch.is_floating_point(data.train_y):
            top = int(max(data.train_y.max(), data.test_y.max()))
            if top >= self.num_classes:
                raise ValueError(f"dataset '{self.name}' has label {top} but num_classes={self.num_classes}")

    def fit_statistics(self, train_x: torch.Tensor) -> None:
        """Learn what the transform needs from the training split only (nothing by default)."""

    def transform(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        """A batch as the net takes it (identity by default)."""
        return x

    def setup(self, stage: str | None = None) -> None:
        self.load()

    def sizes(self) -> dict[str, int]:
        return {k: len(y) for k, (_, y) in self.splits.items()}

    def example_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first n training samples, transformed as the model will see them (for shape checks)."""
        x, y = self.splits["train"]
        return self.transform(x[:n].cpu(), training=False), y[:n].cpu()

    def _device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def _batches(self, split: str, shuffle: bool) -> TensorBatches:
        x, y = self.splits[split]
        device = self._device()
        if x.device != device:  # move each split to the device once; batches are slices of it
            x, y = x.to(device), y.to(device)
            self.splits[split] = (x, y)
        # DDP: training batches are sharded by rank; validation and test run in full on every rank (exact
        # metrics with no gathering, and the same number of batches everywhere)
        ranks = {}
        if split == "train" and self.trainer is not None:
            ranks = {"rank": self.trainer.global_rank, "world_size": self.trainer.world_size}
        return TensorBatches(x, y, self.batch_size, shuffle, self.seed, self._position, **ranks)

    def _position(self) -> tuple[int, int]:
        """(epoch, training batches fully processed in it), as Lightning's fit loop counts them."""
        if self.trainer is None:
            return 0, 0
        return self.trainer.current_epoch, self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def train_dataloader(self) -> TensorBatches:
        return self._batches("train", shuffle=True)

    def val_dataloader(self) -> TensorBatches:
        return self._batches("val" if self.sizes()["val"] else "test", shuffle=False)

    def test_dataloader(self) -> TensorBatches:
        return self._batches("test", shuffle=False)

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int):
        x, y = batch
        if self.features_cached:
            return x, y
        training = self.trainer is not None and self.trainer.training
        return self.transform(x, training), y

    @torch.no_grad()
    def cache_features(self, prefix: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 1024) -> None:
        """Replace each split's images by prefix(normalised images), computed once in batches on the device.

        Later batches are these features, passed on untransformed, in the same order (it depends only on
        seed and epoch). Augmentation must be off: each image is transformed once, not once per epoch.
        """
        if self.features_cached:
            raise RuntimeError("features are already cached")
        device = self._device()
        for split, (x, y) in self.splits.items():
            chunks = [prefix(self.transform(chunk.to(device), training=False)) for chunk in x.split(batch_size)]
            self.splits[split] = (torch.cat(chunks), y.to(device))
        self.features_cached = True


class ImageDataModule(TensorDataModule):
    """Images (N, C, H, W) as uint8 (or float for the PCA points): normalised by the configured mean/std and
    augmented as whole batches on the device."""

    kind = "image"

    def __init__(self, source: Callable[[], SourceData], name: str, channels: int, image_size: int, num_classes: int,
                 mean: list[float], std: list[float], batch_size: int = 64, val_fraction: float = 0.1,
                 split_seed: int = 0, flip: bool = False, translate: int = 0, folds: int = 0, fold: int = 0,
                 seed: int = 0) -> None:
        super().__init__(source, name, num_classes, batch_size, val_fraction, split_seed, folds, fold, seed)
        self.channels, self.image_size = channels, image_size
        self.flip, self.translate = flip, translate
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.memory_format = torch.contiguous_format  # build.py sets channels_last for conv nets where it pays

    def check(self, data: SourceData) -> None:
        shape = tuple(data.train_x.shape[1:])
        if shape != (self.channels, self.image_size, self.image_size):
            raise ValueError(
                f"dataset '{self.name}' holds images of shape {shape} but its config declares "
                f"channels={self.channels}, image_size={self.image_size}"
            )
        super().check(data)

    def transform(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        """uint8 (B, C, H, W) -> normalised float, with the whole-batch augmentations when training."""
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()  # float sources (points) as they are
        if training and self.flip:
            x = random_flip(x)
        if training and self.translate:
            x = random_translate(x, self.translate)
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return x.contiguous(memory_format=self.memory_format) if x.dim() == 4 else x
