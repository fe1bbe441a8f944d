"""Data path: dlexp's tensor-resident batches vs torchvision's DataLoader + PIL transforms, with augmentation.

    python benchmarks/data_path.py            # Fashion-MNIST (digits when absent), ~1 min
    python benchmarks/data_path.py --quick    # digits: checks the script works

Both sides serve one training epoch of the same images (all training images, dlexp's
dataset.val_fraction=0) in batches of the dataset's batch size, augmented with a random horizontal
flip and a random 2-pixel translation, normalised, as float (B, 1, 28, 28) on the CPU:
- dlexp: the datamodule `dlexp train` builds (dataset=... dataset.flip=true dataset.translate=2),
  its TensorBatches (index slices of one uint8 tensor) and its whole-batch transform;
- torchvision: datasets.FashionMNIST (MNIST for digits) over IDX files written from the same tensors,
  DataLoader(shuffle=True) and RandomHorizontalFlip + RandomCrop(28, padding=2) + ToTensor + Normalize,
  per sample through PIL; num_workers=0, the notes' setting (full mode adds 2 workers as information).
Epochs alternate between the sides in one process (A B A B); medians of batches/s are compared.
"""
from __future__ import annotations

import struct
import sys
import tempfile
import time
from pathlib import Path

from common import fashion_available, machine, median, parser, table, verdict

TARGET = 20.0  # issue 7: dlexp's batches/s >= 20x torchvision's


def write_idx(path: Path, array) -> None:
    """A uint8 array as an (uncompressed) IDX file, the format torchvision's MNIST classes read."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + array.tobytes())


def dlexp_side(dataset: str):
    """dlexp's datamodule for `dataset`, as `dlexp train` composes and builds it; one epoch per call."""
    from hydra.utils import instantiate

    from dlexp.config.compose import compose

    cfg = compose([f"dataset={dataset}", "dataset.flip=true", "dataset.translate=2", "dataset.val_fraction=0"])
    dm = instantiate(cfg.dataset, seed=cfg.seed)
    dm.load()
    loader = dm.train_dataloader()

    def epoch():
        for x, y in loader:
            yield dm.transform(x, training=True), y  # what on_after_batch_transfer does in training

    return dm, epoch


def torchvision_side(dm, root: Path, workers: int):
    """torchvision's dataset class over IDX files holding dm's training images; one epoch per call."""
    import torch
    from torchvision import datasets, transforms

    cls = datasets.FashionMNIST if dm.name == "fashion_mnist" else datasets.MNIST
    x, y = dm.splits["train"]  # (N, 1, 28, 28) uint8, all training images (val_fraction=0)
    raw = root / cls.__name__ / "raw"
    for prefix in ("train", "t10k"):  # the class wants both splits present; the benchmark reads train
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x[:, 0].numpy())
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y.to(torch.uint8).numpy())
    augment = transforms.Compose([
        transforms.RandomHorizontalFlip(),
        transforms.RandomCrop(dm.image_size, padding=2),
        transforms.ToTensor(),
        transforms.Normalize(dm.mean.flatten().tolist(), dm.std.flatten().tolist()),
    ])
    data = cls(str(root), train=True, download=False, transform=augment)
    loader = torch.utils.data.DataLoader(data, batch_size=dm.batch_size, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0)
    return lambda: iter(loader)


def one_thread(epoch):
    """The same epoch with one intra-op thread: on a machine whose cores are busy with other work, waiting
    for a second thread that is not running costs more than the whole-batch ops themselves."""
    import torch

    def run():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield from epoch()
        finally:
            torch.set_num_threads(threads)

    return run


def timed_epoch(epoch) -> tuple[float, int, tuple]:
    """(seconds, batches, shape of the first batch) of one pass over an epoch's batches."""
    start, n, shape = time.perf_counter(), 0, None
    for x, _ in epoch():
        shape = shape or (tuple(x.shape), x.dtype)
        n += 1
    return time.perf_counter() - start, n, shape


def main() -> None:
    args = parser(__doc__.splitlines()[0], repeats=3).parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    dataset = "digits" if args.quick or not fashion_available() else "fashion_mnist"
    dm, dlexp_epoch = dlexp_side(dataset)
    with tempfile.TemporaryDirectory(prefix="dlexp-bench-") as tmp:
        sides = {"dlexp TensorBatches": dlexp_epoch, "torchvision DataLoader": torchvision_side(dm, Path(tmp), 0)}
        if not args.quick:  # for reading the numbers: intra-op threads on a busy machine; worker processes
            sides["dlexp TensorBatches, 1 thread"] = one_thread(dlexp_epoch)
            sides["torchvision, 2 workers"] = torchvision_side(dm, Path(tmp), 2)
        for epoch in sides.values():
            timed_epoch(epoch)  # warm-up: first-call allocations, worker start-up
        times: dict[str, list[float]] = {name: [] for name in sides}
        batches, shapes = {}, {}
        for i in range(repeats):
            for name, epoch in sides.items():
                seconds, batches[name], shapes[name] = timed_epoch(epoch)
                times[name].append(seconds)
                print(f"  {name} #{i + 1}: {seconds:.3f} s", file=sys.stderr, flush=True)
    if len(set(shapes.values())) != 1 or len(set(batches.values())) != 1:
        raise SystemExit(f"the sides serve different batches: {shapes} {batches}")
    rate = {name: batches[name] / median(t) for name, t in times.items()}
    reference = rate["torchvision DataLoader"]
    rows = [[name, dataset, batches[name], f"{median(times[name]):.3f}", f"{rate[name]:.0f}",
             f"{rate[name] * dm.batch_size:.0f}", f"{rate[name] / reference:.1f}"] for name in sides]
    ratio = rate["dlexp TensorBatches"] / reference
    print(f"data path: one augmented training epoch, batch {dm.batch_size}, {shapes[next(iter(shapes))][0]} "
          f"({machine()}; medians of {repeats})")
    print(table(["side", "dataset", "batches", "epoch s", "batches/s", "images/s", "x torchvision"], rows))
    print(f"ratio data_path: {ratio:.1f} (target >= {TARGET:.0f}) {verdict(ratio, TARGET, at_most=False)}")
    if "dlexp TensorBatches, 1 thread" in rate:
        print(f"(with one intra-op thread: {rate['dlexp TensorBatches, 1 thread'] / reference:.1f}x torchvision)")


if __name__ == "__main__":
    main()
