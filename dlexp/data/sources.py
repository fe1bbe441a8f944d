"""Dataset sources: each loads a whole dataset as uint8 image tensors (N, C, H, W) and int64 labels."""
from __future__ import annotations

import gzip
import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SYSTEM_DIRS = [Path("/usr/share/datasets"), Path("/usr/local/share/datasets")]


class DataNotFound(RuntimeError):
    """Raised when a dataset's files are nowhere to be found; the message says where we looked."""


@dataclass
class SourceData:
    """What a source loads, held in memory: train and test samples with their targets (images: uint8 (N, C, H, W)
    and int64 labels; other kinds: see dlexp/data/arrays.py)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def _not_found(name: str, looked: list[Path], how: str) -> DataNotFound:
    places = "\n".join(f"  - {p}" for p in looked)
    return DataNotFound(
        f"dataset '{name}' not found. Looked for its files in:\n{places}\n{how}\n"
        "Set the data folder with paths.data_dir=DIR or the DLEXP_DATA_DIR environment variable. "
        "For a dataset that needs no files at all, use dataset=digits (bundled with scikit-learn)."
    )


class Digits:
    """scikit-learn's 1,797 8x8 handwritten digits (values 0-16), resized to `image_size` (28 as MNIST)."""

    def __init__(self, image_size: int = 28, test_fraction: float = 0.2) -> None:
        self.image_size, self.test_fraction = image_size, test_fraction

    def __call__(self) -> SourceData:
        x, y = _load_digits()
        x = _resize(torch.from_numpy(x).float().view(-1, 1, 8, 8) * (255.0 / 16.0), self.image_size)
        y = torch.from_numpy(y).long()
        # fixed test split: the same 20% on every machine and every run
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        n_test = int(len(y) * self.test_fraction)
        test, train = perm[:n_test], perm[n_test:]
        return SourceData(x[train], y[train], x[test], y[test])


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Read digits.csv.gz straight from scikit-learn's package (importing sklearn.datasets costs ~1 s)."""
    spec = importlib.util.find_spec("sklearn")
    if spec and spec.submodule_search_locations:
        path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
        if path.exists():
            data = np.loadtxt(path, delimiter=",", dtype=np.float32)
            return data[:, :-1], data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data.astype(np.float32), bunch.target.astype(np.int64)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not, into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # not gzip after all, or cut short
        raise ValueError(f"{path} cannot be read: {e}") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or len(data) < 4 + 4 * data[3]:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
IDX_NAMES = {"mnist": ("MNIST", "mnist"), "fashion_mnist": ("FashionMNIST", "fashion-mnist")}


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) pixel values 0-255 -> uint8 at size x size (bilinear), unchanged if already that size."""
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)
    return x if x.dtype == torch.uint8 else x.round().clamp(0, 255).to(torch.uint8)


class IdxDataset:
    """MNIST or Fashion-MNIST from IDX files: data dir, then system folders, then torchvision's download.

    image_size other than 28 resizes the images once, on loading (e.g. 64 for the 64x64 DCGAN)."""

    def __init__(self, name: str, data_dir: str = "data", download: bool = True, image_size: int = 28) -> None:
        if name not in IDX_NAMES:
            raise ValueError(f"IdxDataset name must be one of {', '.join(IDX_NAMES)}, got '{name}'")
        self.name, self.data_dir, self.download = name, Path(data_dir).expanduser(), download
        self.image_size = image_size

    def candidates(self) -> list[Path]:
        """Folders searched in order: torchvision's layout, a plain folder, then system dataset folders."""
        tv_name, debian_name = IDX_NAMES[self.name]
        names = dict.fromkeys([debian_name, self.name])  # fashion-mnist and fashion_mnist, once each
        return [self.data_dir / tv_name / "raw"] + [self.data_dir / n for n in names] + [d / debian_name for d in SYSTEM_DIRS]

    def __call__(self) -> SourceData:
        for folder in self.candidates():
            files = {k: _find_idx(folder, stem) for k, stem in IDX_FILES.items()}
            if all(files.values()):
                return self._load(files)
        if self.download:
            self._download()
            return self()  # torchvision wrote data_dir/<Name>/raw, the first candidate
        how = (
            f"Put the four IDX files ({', '.join(IDX_FILES.values())}, optionally .gz) in one of these folders, "
            "or run with dataset.source.download=true to let torchvision fetch them"
            + (" (on Debian/Ubuntu: apt-get install dataset-fashion-mnist)." if self.name == "fashion_mnist" else ".")
        )
        raise _not_found(self.name, self.candidates(), how)

    def _load(self, files: dict[str, Path]) -> SourceData:
        arrays = {k: torch.from_numpy(read_idx(p).copy()) for k, p in files.items()}
        return SourceData(_resize(arrays["train_x"].unsqueeze(1), self.image_size), arrays["train_y"].long(),
                         _resize(arrays["test_x"].unsqueeze(1), self.image_size), arrays["test_y"].long())

    def _download(self) -> None:
        import torchvision

        cls = torchvision.datasets.MNIST if self.name == "mnist" else torchvision.datasets.FashionMNIST
        try:
            for train in (True, False):
                cls(str(self.data_dir), train=train, download=True)
        except Exception as e:  # no network, server down, disk full: say where we looked
            raise _not_found(self.name, self.candidates(), f"torchvision's download failed too ({e}).") from None


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


class Cifar10:
    """CIFAR-10 from torchvision's python pickles (data_dir/cifar-10-batches-py), downloaded if allowed."""

    def __init__(self, data_dir: str = "data", download: bool = True) -> None:
        self.data_dir, self.download = Path(data_dir).expanduser(), download

    def __call__(self) -> SourceData:
        folder = self.data_dir / "cifar-10-batches-py"
        if not (folder / "test_batch").is_file():
            if not self.download:
                raise _not_found("cifar10", [folder], "Unpack cifar-10-python.tar.gz into the data folder.")
            import torchvision

            try:
                torchvision.datasets.CIFAR10(str(self.data_dir), train=True, download=True)
            except Exception as e:
                raise _not_found("cifar10", [folder], f"torchvision's download failed ({e}).") from None
        train = [_unpickle(folder / f"data_batch_{i}") for i in range(1, 6)]
        test = _unpickle(folder / "test_batch")
        to_x = lambda d: torch.from_numpy(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        to_y = lambda d: torch.tensor(d[b"labels"], dtype=torch.long)
        return SourceData(torch.cat([to_x(d) for d in train]), torch.cat([to_y(d) for d in train]), to_x(test), to_y(test))


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")  # the dataset's own format, as torchvision reads it


class ImageFolder:
    """Images in class subfolders (root/<class>/*.png), or root/train and root/test holding such folders."""

    EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

    def __init__(self, root: str, channels: int = 3, image_size: int = 32, test_fraction: float = 0.2,
                 split_seed: int = 0) -> None:
        self.root, self.channels, self.image_size = Path(root).expanduser(), channels, image_size
        self.test_fraction, self.split_seed = test_fraction, split_seed

    def __call__(self) -> SourceData:
        if (self.root / "train").is_dir() and (self.root / "test").is_dir():
            classes = self._classes(self.root / "train")
            return SourceData(*self._load(self.root / "train", classes), *self._load(self.root / "test", classes))
        x, y = self._load(self.root, self._classes(self.root))
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.split_seed))
        n_test = int(len(y) * self.test_fraction)
        return SourceData(x[perm[n_test:]], y[perm[n_test:]], x[perm[:n_test]], y[perm[:n_test]])

    def _classes(self, folder: Path) -> list[str]:
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        if not classes:
            raise _not_found("image_folder", [folder], "Give dataset.source.root=DIR holding one subfolder of images per class.")
        return classes

    def _load(self, folder: Path, classes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        mode = {1: "L", 3: "RGB"}[self.channels]
        images, labels = [], []
        for label, name in enumerate(classes):
            for path in sorted((folder / name).iterdir()):
                if path.suffix.lower() in self.EXTENSIONS:
                    with Image.open(path) as img:
                        img = img.convert(mode).resize((self.image_size, self.image_size), Image.BILINEAR)
                        images.append(torch.from_numpy(np.array(img, dtype=np.uint8)).view(self.image_size, self.image_size, -1))
                    labels.append(label)
        if not images:
            raise _not_found("image_folder", [folder / c for c in classes], "No image files found in the class folders.")
        return torch.stack(images).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


class Fake:
    """Random uint8 images of any shape with random labels: for tests and for trying a config quickly."""

    def __init__(self, channels: int = 1, image_size: int = 28, num_classes: int = 10, n_train: int = 512,
                 n_test: int = 128, seed: int = 0) -> None:
        self.shape, self.num_classes = (channels, image_size, image_size), num_classes
        self.n_train, self.n_test, self.seed = n_train, n_test, seed

    def __call__(self) -> SourceData:
        g = torch.Generator().manual_seed(self.seed)
        n = self.n_train + self.n_test
        x = torch.randint(0, 256, (n, *self.shape), generator=g, dtype=torch.uint8)
        y = torch.randint(0, self.num_classes, (n,), generator=g)
        return SourceData(x[: self.n_train], y[: self.n_train], x[self.n_train:], y[self.n_train:])


class Points3D:
    """The notes' PCA example: m noisy 3-D points near a plane, standardised; first half train, rest test.

    Held as float (N, 3, 1, 1) "images", so any flat model (linear_ae) takes them as it takes pixels.
    """

    def __init__(self, m: int = 200, noise: float = 0.1, seed: int = 4) -> None:
        self.m, self.noise, self.seed = m, noise, seed

    def __call__(self) -> SourceData:
        rng = np.random.RandomState(self.seed)  # the notes: np.random.seed(4)
        m, w1, w2 = self.m, 0.1, 0.3
        angles = rng.rand(m) * 3 * np.pi / 2 - 0.5
        data = np.empty((m, 3))
        data[:, 0] = np.cos(angles) + np.sin(angles) / 2 + self.noise * rng.randn(m) / 2
        data[:, 1] = np.sin(angles) * 0.7 + self.noise * rng.randn(m) / 2
        data[:, 2] = data[:, 0] * w1 + data[:, 1] * w2 + self.noise * rng.randn(m)
        half = m // 2
        mean, std = data[:half].mean(axis=0), data[:half].std(axis=0)  # StandardScaler fit on the train half
        x = torch.from_numpy((data - mean) / std).float().view(m, 3, 1, 1)
        y = torch.zeros(m, dtype=torch.long)
        return SourceData(x[:half], y[:half], x[half:], y[half:])
