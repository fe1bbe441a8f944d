"""Data sources, the tensor-resident datamodule and the whole-batch augmentations, on files the tests write."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_cifar, write_idx
from dlexp.data import sources
from dlexp.data.augment import random_flip, random_translate
from dlexp.data.datamodule import ImageDataModule, TensorBatches
from dlexp.data.sources import (
    Cifar10,
    DataNotFound,
    Digits,
    Fake,
    IdxDataset,
    SourceData,
    ImageFolder,
    read_idx,
)

IDX_STEMS = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def idx_arrays(seed: int, n_train: int = 12, n_test: int = 5) -> dict[str, np.ndarray]:
    """Known MNIST-shaped arrays: (N, 28, 28) uint8 images and (N,) uint8 labels."""
    rng = np.random.default_rng(seed)
    return {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_idx_set(folder: Path, arrays: dict[str, np.ndarray], gz: bool) -> None:
    for key, stem in IDX_STEMS.items():
        write_idx(folder / (stem + (".gz" if gz else "")), arrays[key])


def assert_idx_data(data: SourceData, arrays: dict[str, np.ndarray]) -> None:
    """The loaded data holds exactly the written pixels and labels, as (N, 1, 28, 28) uint8 and int64."""
    for part in ("train", "test"):
        x, y = getattr(data, f"{part}_x"), getattr(data, f"{part}_y")
        n = len(arrays[f"{part}_y"])
        assert x.shape == (n, 1, 28, 28) and x.dtype == torch.uint8
        assert y.shape == (n,) and y.dtype == torch.int64
        assert np.array_equal(x[:, 0].numpy(), arrays[f"{part}_x"])
        assert np.array_equal(y.numpy(), arrays[f"{part}_y"].astype(np.int64))


def gray_data(n_train: int = 300, n_test: int = 20, size: int = 4, channels: int = 1, classes: int = 10) -> SourceData:
    """Images whose first two pixels encode their index (i // 256, i % 256), so splits can be told apart."""
    x = torch.zeros(n_train + n_test, channels, size, size, dtype=torch.uint8)
    idx = torch.arange(n_train + n_test)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = (idx // 256).to(torch.uint8), (idx % 256).to(torch.uint8)
    y = idx % classes
    return SourceData(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def sample_ids(x: torch.Tensor) -> list[int]:
    return (x[:, 0, 0, 0].long() * 256 + x[:, 0, 0, 1].long()).tolist()


def datamodule(data: SourceData, **kwargs) -> ImageDataModule:
    c, s = data.train_x.shape[1], data.train_x.shape[2]
    args = dict(source=lambda: data, name="toy", channels=c, image_size=s, num_classes=10,
                mean=[0.5] * c, std=[0.5] * c, batch_size=16)
    return ImageDataModule(**{**args, **kwargs})


# ---------------------------------------------------------------- read_idx

@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_read_idx_round_trips_images(tmp_path, name):
    """A 3-d uint8 array written as IDX (plain or gzipped) reads back identical in shape and content."""
    array = np.random.default_rng(1).integers(0, 256, (7, 28, 5), dtype=np.uint8)
    write_idx(tmp_path / name, array)
    back = read_idx(tmp_path / name)
    assert back.dtype == np.uint8 and back.shape == (7, 28, 5)
    assert np.array_equal(back, array)


@pytest.mark.parametrize("name", ["labels-idx1-ubyte", "labels-idx1-ubyte.gz"])
def test_read_idx_round_trips_labels(tmp_path, name):
    """A 1-d label vector round-trips too (ndim comes from the header)."""
    labels = np.arange(300, dtype=np.int64) % 10
    write_idx(tmp_path / name, labels.astype(np.uint8))
    assert np.array_equal(read_idx(tmp_path / name), labels)


def test_read_idx_gz_is_really_decompressed(tmp_path):
    """The .gz file on disk is compressed (not the raw IDX bytes) and still reads back."""
    array = np.zeros((3, 4), dtype=np.uint8)
    write_idx(tmp_path / "a.gz", array)
    raw = (tmp_path / "a.gz").read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert np.array_equal(read_idx(tmp_path / "a.gz"), array)


@pytest.mark.parametrize("content,name", [
    (b"this is not an idx file at all", "notes-idx3-ubyte"),
    (struct.pack(">BBBB", 0, 0, 0x0D, 1) + struct.pack(">I", 2) + b"\0" * 8, "floats-idx1"),  # float IDX
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 32, "image.png"),
])
def test_read_idx_rejects_non_idx(tmp_path, content, name):
    """A file that is not an unsigned-byte IDX file raises ValueError naming the file."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=name):
        read_idx(path)


def test_read_idx_rejects_gzipped_non_idx(tmp_path):
    """A valid gzip holding something other than IDX raises ValueError too."""
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"<html>404 not found</html>")
    with pytest.raises(ValueError):
        read_idx(path)


@pytest.mark.parametrize("content", [b"", b"\x00\x00", b"\x00\x00\x08"], ids=["empty", "2-bytes", "3-bytes"])
def test_read_idx_rejects_empty_or_truncated_file(tmp_path, content):
    """An empty or truncated file (an interrupted download) is 'not an IDX file': ValueError, not IndexError."""
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(ValueError):
        read_idx(path)


# ---------------------------------------------------------------- IdxDataset (MNIST, Fashion-MNIST)

@pytest.mark.parametrize("name,folder,gz", [
    ("mnist", "MNIST/raw", True),
    ("mnist", "MNIST/raw", False),
    ("fashion_mnist", "FashionMNIST/raw", False),
    ("fashion_mnist", "FashionMNIST/raw", True),
])
def test_idx_dataset_reads_torchvision_layout(tmp_path, name, folder, gz):
    """IDX files in <data_dir>/<Name>/raw (torchvision's layout) load with the exact pixels and labels."""
    arrays = idx_arrays(seed=3)
    write_idx_set(tmp_path / "data" / folder, arrays, gz)
    assert_idx_data(IdxDataset(name, str(tmp_path / "data"), download=False)(), arrays)


@pytest.mark.parametrize("name,folder", [
    ("fashion_mnist", "fashion-mnist"),
    ("fashion_mnist", "fashion_mnist"),
    ("mnist", "mnist"),
])
def test_idx_dataset_reads_plain_folder(tmp_path, name, folder):
    """IDX files in a plain <data_dir>/<name>/ folder load too (gz and plain mixed in one folder)."""
    arrays = idx_arrays(seed=4)
    target = tmp_path / "data" / folder
    write_idx_set(target, arrays, gz=False)
    (target / "train-images-idx3-ubyte").unlink()  # train images only as .gz, the rest plain
    write_idx(target / "train-images-idx3-ubyte.gz", arrays["train_x"])
    assert_idx_data(IdxDataset(name, str(tmp_path / "data"), download=False)(), arrays)


def test_idx_dataset_with_idx_dir_fixture(idx_dir):
    """conftest's idx_dir (MNIST gzipped, Fashion-MNIST plain) loads 200 train and 50 test images of each."""
    for name in ("mnist", "fashion_mnist"):
        data = IdxDataset(name, str(idx_dir), download=False)()
        assert data.train_x.shape == (200, 1, 28, 28) and data.test_x.shape == (50, 1, 28, 28)
        assert data.train_x.dtype == torch.uint8
        assert data.train_y.shape == (200,) and int(data.train_y.max()) <= 9 and int(data.train_y.min()) >= 0


def test_idx_dataset_resizes_on_loading(idx_dir):
    """image_size=64 (the 64x64 DCGAN): uint8 images resized once; a constant image stays that constant."""
    plain = IdxDataset("mnist", str(idx_dir), download=False)()
    big = IdxDataset("mnist", str(idx_dir), download=False, image_size=64)()
    assert big.train_x.shape == (200, 1, 64, 64) and big.train_x.dtype == torch.uint8
    assert torch.equal(big.train_y, plain.train_y)
    flat = sources._resize(torch.full((1, 1, 28, 28), 200, dtype=torch.uint8), 64)
    assert flat.shape == (1, 1, 64, 64) and bool((flat == 200).all())
    mean = lambda x: x.float().mean().item()
    assert abs(mean(big.train_x) - mean(plain.train_x)) < 1.0  # bilinear keeps the brightness


def test_idx_dataset_prefers_torchvision_layout(tmp_path):
    """With both <Name>/raw and a plain folder present, the torchvision layout (searched first) wins."""
    first, second = idx_arrays(seed=5), idx_arrays(seed=6)
    write_idx_set(tmp_path / "FashionMNIST" / "raw", first, gz=False)
    write_idx_set(tmp_path / "fashion-mnist", second, gz=False)
    assert_idx_data(IdxDataset("fashion_mnist", str(tmp_path), download=False)(), first)


def test_idx_dataset_falls_back_to_system_folder(tmp_path, monkeypatch):
    """With nothing in data_dir, a system dataset folder (<system>/<debian name>/) is used."""
    arrays = idx_arrays(seed=7)
    write_idx_set(tmp_path / "system" / "mnist", arrays, gz=True)
    monkeypatch.setattr(sources, "SYSTEM_DIRS", [tmp_path / "nowhere", tmp_path / "system"])
    (tmp_path / "empty").mkdir()
    assert_idx_data(IdxDataset("mnist", str(tmp_path / "empty"), download=False)(), arrays)


def test_idx_dataset_missing_raises_data_not_found(tmp_path, monkeypatch):
    """Empty data dir and download=false: DataNotFound listing every folder searched and suggesting dataset=digits."""
    monkeypatch.setattr(IdxDataset, "_download", lambda self: pytest.fail("download attempted with download=false"))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    source = IdxDataset("mnist", str(data_dir), download=False)
    with pytest.raises(DataNotFound) as info:
        source()
    message = str(info.value)
    assert "mnist" in message
    for folder in [data_dir / "MNIST" / "raw", data_dir / "mnist"] + [d / "mnist" for d in sources.SYSTEM_DIRS]:
        assert str(folder) in message
    assert "dataset=digits" in message
    assert "download=true" in message
    assert list(data_dir.iterdir()) == []  # nothing was fetched or written


def test_fashion_missing_lists_folders(tmp_path, monkeypatch):
    """Fashion-MNIST not found (system folders patched away) names both spellings and the apt package."""
    monkeypatch.setattr(sources, "SYSTEM_DIRS", [tmp_path / "sys"])
    with pytest.raises(DataNotFound) as info:
        IdxDataset("fashion_mnist", str(tmp_path), download=False)()
    message = str(info.value)
    for folder in ("FashionMNIST/raw", "fashion-mnist", "fashion_mnist", str(tmp_path / "sys" / "fashion-mnist")):
        assert folder in message
    assert "dataset=digits" in message and "apt-get install dataset-fashion-mnist" in message


def test_idx_dataset_incomplete_set_is_not_found(tmp_path, monkeypatch):
    """Three of the four files are not enough: the folder is skipped and DataNotFound raised."""
    monkeypatch.setattr(sources, "SYSTEM_DIRS", [])
    arrays = idx_arrays(seed=8)
    write_idx_set(tmp_path / "MNIST" / "raw", arrays, gz=False)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataNotFound):
        IdxDataset("mnist", str(tmp_path), download=False)()


def test_idx_dataset_rejects_unknown_name():
    """Only mnist and fashion_mnist are IDX datasets."""
    with pytest.raises(ValueError, match="kmnist"):
        IdxDataset("kmnist")


# ---------------------------------------------------------------- Digits

def test_digits_shape_classes_and_fixed_split():
    """Digits: 28x28 uint8 images spanning 0..255, 10 classes, the same 20% test split on every call."""
    a, b = Digits()(), Digits()()
    assert a.train_x.shape[1:] == (1, 28, 28) and a.train_x.dtype == torch.uint8
    assert a.test_x.shape[1:] == (1, 28, 28) and a.test_x.dtype == torch.uint8
    assert len(a.train_y) + len(a.test_y) == 1797
    assert len(a.test_y) == int(1797 * 0.2)
    assert set(a.train_y.tolist()) == set(range(10)) and set(a.test_y.tolist()) == set(range(10))
    assert a.train_y.dtype == torch.int64
    assert int(a.train_x.max()) == 255 and int(a.train_x.min()) == 0
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.test_y, b.test_y)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)


def test_digits_image_size():
    """image_size resizes the 8x8 digits."""
    data = Digits(image_size=16, test_fraction=0.5)()
    assert data.train_x.shape[1:] == (1, 16, 16)
    assert len(data.test_y) == int(1797 * 0.5)


# ---------------------------------------------------------------- CIFAR-10

def test_cifar10_reads_python_pickles(tmp_path):
    """Cifar10 concatenates the five batches in order and reshapes rows (R,G,B planes) to (N, 3, 32, 32)."""
    written = write_cifar(tmp_path, n=4, n_test=3)
    data = Cifar10(str(tmp_path), download=False)()
    assert data.train_x.shape == (20, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (3, 3, 32, 32)
    assert data.train_y.dtype == torch.int64
    assert np.array_equal(data.train_y.numpy(), written["train_y"])
    assert np.array_equal(data.test_y.numpy(), written["test_y"])
    assert np.array_equal(data.train_x.numpy(), written["train_x"].reshape(-1, 3, 32, 32))
    assert np.array_equal(data.test_x.numpy(), written["test_x"].reshape(-1, 3, 32, 32))
    # pixel (row 5, col 7) of the green plane of image 9 is byte 1024 + 5*32 + 7 of its row
    assert int(data.train_x[9, 1, 5, 7]) == int(written["train_x"][9, 1024 + 5 * 32 + 7])


def test_cifar10_missing_raises_data_not_found(tmp_path):
    """No pickles and download=false: DataNotFound naming the folder looked in."""
    with pytest.raises(DataNotFound) as info:
        Cifar10(str(tmp_path), download=False)()
    assert str(tmp_path / "cifar-10-batches-py") in str(info.value)
    assert "dataset=digits" in str(info.value)


# ---------------------------------------------------------------- ImageFolder

COLOURS = {"cat": (200, 30, 10), "dog": (10, 220, 40), "emu": (5, 15, 250)}
GREYS = {"cat": 40, "dog": 130, "emu": 250}


def write_pngs(folder: Path, per_class: int, grey: bool = False) -> None:
    """Solid-colour PNGs of odd sizes, one colour per class, plus a non-image file to be ignored."""
    for name in COLOURS:
        (folder / name).mkdir(parents=True)
        colour = (GREYS[name],) * 3 if grey else COLOURS[name]
        for i in range(per_class):
            Image.new("RGB", (9 + i, 13), colour).save(folder / name / f"{i}.png")
        (folder / name / "README.txt").write_text("not an image")


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_class_subfolders(tmp_path, channels):
    """root/<class>/*.png: resized to image_size, sorted class names as labels, seeded test split."""
    write_pngs(tmp_path / "imgs", per_class=5, grey=channels == 1)
    source = ImageFolder(str(tmp_path / "imgs"), channels=channels, image_size=8, test_fraction=0.2, split_seed=0)
    data = source()
    assert data.train_x.shape == (12, channels, 8, 8) and data.test_x.shape == (3, channels, 8, 8)
    assert data.train_x.dtype == torch.uint8
    x, y = torch.cat([data.train_x, data.test_x]), torch.cat([data.train_y, data.test_y])
    assert sorted(y.tolist()) == [0] * 5 + [1] * 5 + [2] * 5
    for image, label in zip(x, y.tolist()):
        name = sorted(COLOURS)[label]
        expected = torch.tensor([GREYS[name]] if channels == 1 else COLOURS[name], dtype=torch.uint8)
        assert torch.equal(image, expected.view(-1, 1, 1).expand(channels, 8, 8))
    again = source()
    assert torch.equal(again.test_x, data.test_x) and torch.equal(again.test_y, data.test_y)


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_train_test_layout(tmp_path, channels):
    """root/train/<class> and root/test/<class>: the given split is kept, grey PNGs give 3 equal channels."""
    write_pngs(tmp_path / "imgs" / "train", per_class=4, grey=True)
    write_pngs(tmp_path / "imgs" / "test", per_class=2, grey=True)
    data = ImageFolder(str(tmp_path / "imgs"), channels=channels, image_size=16)()
    assert data.train_x.shape == (12, channels, 16, 16) and data.test_x.shape == (6, channels, 16, 16)
    assert data.train_y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert data.test_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.all(data.test_x[2:4] == GREYS["dog"])


def test_image_folder_without_classes_raises(tmp_path):
    """An empty root is DataNotFound, naming the folder."""
    (tmp_path / "imgs").mkdir()
    with pytest.raises(DataNotFound, match="imgs"):
        ImageFolder(str(tmp_path / "imgs"))()


# ---------------------------------------------------------------- Fake

def test_fake_shape_classes_and_seed():
    """Fake gives the asked shape, counts and labels in [0, num_classes); same seed same data, other seed other."""
    data = Fake(channels=3, image_size=12, num_classes=4, n_train=200, n_test=30, seed=1)()
    assert data.train_x.shape == (200, 3, 12, 12) and data.test_x.shape == (30, 3, 12, 12)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    assert set(data.train_y.tolist()) == {0, 1, 2, 3}
    assert int(data.test_y.max()) < 4
    same = Fake(channels=3, image_size=12, num_classes=4, n_train=200, n_test=30, seed=1)()
    other = Fake(channels=3, image_size=12, num_classes=4, n_train=200, n_test=30, seed=2)()
    assert torch.equal(same.train_x, data.train_x) and torch.equal(same.test_y, data.test_y)
    assert not torch.equal(other.train_x, data.train_x)


# ---------------------------------------------------------------- ImageDataModule and TensorBatches

def test_datamodule_val_split_size_disjoint_and_seeded():
    """val has int(n * val_fraction) samples, disjoint from train, together all of train; split_seed fixes it."""
    data = gray_data(n_train=300)
    dm = datamodule(data, val_fraction=0.15, split_seed=3)
    dm.setup("fit")
    assert dm.sizes() == {"train": 300 - 45, "val": 45, "test": 20}
    train, val = sample_ids(dm.splits["train"][0]), sample_ids(dm.splits["val"][0])
    assert not set(train) & set(val)
    assert sorted(train + val) == list(range(300))
    assert dm.splits["val"][1].tolist() == [i % 10 for i in val]  # labels follow their images
    assert sample_ids(dm.splits["test"][0]) == list(range(300, 320))
    same = datamodule(data, val_fraction=0.15, split_seed=3)
    same.load()
    assert sample_ids(same.splits["val"][0]) == val
    other = datamodule(data, val_fraction=0.15, split_seed=4)
    other.load()
    assert set(sample_ids(other.splits["val"][0])) != set(val)


def test_datamodule_load_is_idempotent():
    """load() reads the source once."""
    calls = []
    data = gray_data()
    dm = datamodule(data)
    dm.source = lambda: calls.append(1) or data
    dm.load()
    dm.setup("fit")
    dm.load()
    assert calls == [1]


def test_datamodule_without_val_validates_on_test():
    """val_fraction=0: no val samples, the val loader serves the test split."""
    dm = datamodule(gray_data(n_train=50), val_fraction=0.0, batch_size=100)
    dm.setup("fit")
    assert dm.sizes()["val"] == 0
    (x, _), = list(dm.val_dataloader())
    assert sample_ids(x) == list(range(50, 70))


@pytest.mark.parametrize("kwargs,match", [({"val_fraction": 1.0}, "val_fraction"), ({"val_fraction": -0.1}, "val_fraction"),
                                          ({"batch_size": 0}, "batch_size")])
def test_datamodule_rejects_bad_arguments(kwargs, match):
    """Out-of-range val_fraction or batch_size is a ValueError naming the key."""
    with pytest.raises(ValueError, match=match):
        datamodule(gray_data(), **kwargs)


@pytest.mark.parametrize("kwargs,words", [
    ({"channels": 3}, ["(1, 4, 4)", "channels=3"]),
    ({"image_size": 28}, ["(1, 4, 4)", "image_size=28"]),
    ({"num_classes": 5}, ["label 9", "num_classes=5"]),
])
def test_datamodule_rejects_wrong_declared_shape_or_classes(kwargs, words):
    """Declared channels/image_size not matching the images, or too few classes: ValueError saying which."""
    dm = datamodule(gray_data(), **kwargs)
    with pytest.raises(ValueError) as info:
        dm.load()
    for word in words + ["toy"]:
        assert word in str(info.value)


def test_datamodule_label_only_in_test_counts():
    """A label beyond num_classes in the test split alone is caught as well."""
    data = gray_data(classes=5)
    data.test_y[3] = 7
    with pytest.raises(ValueError, match="label 7"):
        datamodule(data, num_classes=5).load()


def test_tensor_batches_every_index_once_and_seeded():
    """Each epoch yields every index exactly once; same seed+epoch same order, another epoch another order."""
    n = 50
    x, y = torch.arange(n).view(n, 1, 1, 1), torch.arange(n)
    epoch = [0]
    batches = TensorBatches(x, y, batch_size=7, shuffle=True, seed=11, position_fn=lambda: (epoch[0], 0))
    assert len(batches) == 8
    orders = {}
    for e in (0, 1, 0):
        epoch[0] = e
        seen = list(batches)
        assert [len(b[1]) for b in seen] == [7] * 7 + [1]
        order = torch.cat([b[1] for b in seen])
        assert torch.equal(torch.cat([b[0] for b in seen]).flatten(), order)  # images stay with labels
        assert sorted(order.tolist()) == list(range(n))
        orders.setdefault(e, []).append(order.tolist())
    assert orders[0][0] == orders[0][1]
    assert orders[0][0] != orders[1][0]
    assert orders[0][0] != list(range(n))
    fresh = TensorBatches(x, y, batch_size=7, shuffle=True, seed=11, position_fn=lambda: (1, 0))
    assert torch.cat([b[1] for b in fresh]).tolist() == orders[1][0]  # whatever ran before
    other_seed = TensorBatches(x, y, batch_size=7, shuffle=True, seed=12, position_fn=lambda: (0, 0))
    assert torch.cat([b[1] for b in other_seed]).tolist() != orders[0][0]


def test_tensor_batches_resume_mid_epoch():
    """A loaded state (epoch, batches done) continues that epoch's order where it stopped, then starts afresh."""
    n = 50
    x, y = torch.arange(n).view(n, 1, 1, 1), torch.arange(n)
    full = torch.cat([b[1] for b in TensorBatches(x, y, 7, True, seed=3, position_fn=lambda: (2, 0))])
    position = [(2, 3)]
    batches = TensorBatches(x, y, 7, True, seed=3, position_fn=lambda: position[0])
    assert batches.state_dict() == {"epoch": 2, "batches_done": 3}
    batches.load_state_dict({"epoch": 2, "batches_done": 3})
    rest = torch.cat([b[1] for b in batches])
    assert rest.tolist() == full[21:].tolist()
    assert torch.cat([b[1] for b in batches]).tolist() == full.tolist()  # the next pass is a whole epoch again


def test_tensor_batches_unshuffled_in_order():
    """shuffle=False serves the data in order."""
    y = torch.arange(10)
    batches = TensorBatches(y.view(10, 1, 1, 1), y, batch_size=4, shuffle=False)
    assert [b[1].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_datamodule_train_loader_covers_train_split():
    """The train loader (no trainer: epoch 0) serves exactly the train split, shuffled, in batch_size pieces."""
    dm = datamodule(gray_data(n_train=100), batch_size=32, val_fraction=0.2)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert [len(y) for _, y in batches] == [32, 32, 16]
    ids = [i for x, _ in batches for i in sample_ids(x)]
    assert sorted(ids) == sorted(sample_ids(dm.splits["train"][0]))
    assert ids != sample_ids(dm.splits["train"][0])


def test_transform_normalises_per_channel():
    """transform: uint8 -> (x / 255 - mean) / std per channel, float32, no augmentation out of training."""
    x = torch.randint(0, 256, (6, 3, 5, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.25, 0.5]
    dm = datamodule(gray_data(channels=3), mean=mean, std=std, flip=True, translate=2)
    out = dm.transform(x, training=False)
    expected = (x.double() / 255 - torch.tensor(mean).double().view(1, 3, 1, 1)) / torch.tensor(std).double().view(1, 3, 1, 1)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-6)
    # uint8 0 and 255 map to the ends of the range
    ends = dm.transform(torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 1, 1), training=False)
    torch.testing.assert_close(ends[0].flatten(), ((0 - torch.tensor(mean)) / torch.tensor(std)))
    torch.testing.assert_close(ends[1].flatten(), ((1 - torch.tensor(mean)) / torch.tensor(std)))


def test_transform_augments_only_when_training():
    """With flip and translate on, training batches are augmented (shifted/flipped copies); eval ones are not."""
    torch.manual_seed(0)
    x = torch.randint(1, 256, (32, 1, 8, 8), dtype=torch.uint8)
    plain = datamodule(gray_data(size=8))
    aug = datamodule(gray_data(size=8), flip=True, translate=2)
    normalised = plain.transform(x, training=False)
    assert torch.equal(aug.transform(x, training=False), normalised)
    assert torch.equal(plain.transform(x, training=True), normalised)  # nothing on: training changes nothing
    trained = aug.transform(x, training=True)
    changed = [not torch.equal(a, b) for a, b in zip(trained, normalised)]
    assert sum(changed) >= 16
    # zero fill happens before normalisation: filled pixels are (0 - mean) / std = -1
    assert (trained == -1.0).any() and not (normalised == -1.0).any()
    # on_after_batch_transfer without a trainer (not training) does not augment either
    out, labels = aug.on_after_batch_transfer((x, torch.zeros(32, dtype=torch.long)), 0)
    assert torch.equal(out, normalised) and labels.shape == (32,)


def test_flip_only_augmentation_is_flip():
    """With flip alone, each training image is its normalised self or its exact mirror."""
    torch.manual_seed(1)
    x = torch.randint(0, 256, (64, 2, 6, 6), dtype=torch.uint8)
    dm = datamodule(gray_data(size=6, channels=2), flip=True)
    base, out = dm.transform(x, training=False), dm.transform(x, training=True)
    flipped = [torch.equal(o, b.flip(2)) for o, b in zip(out, base)]
    kept = [torch.equal(o, b) for o, b in zip(out, base)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 0 < sum(flipped) < 64


# ---------------------------------------------------------------- augment

def test_random_flip_each_image_kept_or_mirrored():
    """random_flip: every image (all channels together) is unchanged or exactly left-right flipped; ~half flip."""
    torch.manual_seed(0)
    x = torch.rand(4000, 3, 5, 7)
    out = random_flip(x)
    assert out.shape == x.shape
    kept = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(3)).flatten(1).all(1)
    assert bool((kept ^ flipped).all())  # asymmetric random images: exactly one of the two
    assert 0.46 < flipped.float().mean().item() < 0.54
    assert not torch.equal(out, x)


def test_random_flip_probability_extremes():
    """p=0 keeps every image, p=1 flips every image."""
    x = torch.rand(50, 1, 4, 4)
    assert torch.equal(random_flip(x, p=0.0), x)
    assert torch.equal(random_flip(x, p=1.0), x.flip(3))


def shift(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """image (C, H, W) moved down by dy and right by dx, zero fill."""
    c, h, w = image.shape
    out = torch.zeros_like(image)
    out[:, max(0, dy): h + min(0, dy), max(0, dx): w + min(0, dx)] = \
        image[:, max(0, -dy): h - max(0, dy), max(0, -dx): w - max(0, dx)]
    return out


def test_random_translate_moves_a_bright_pixel_within_max_shift():
    """A single bright pixel moves by at most max_shift per axis, keeps its value, the rest stays zero."""
    torch.manual_seed(0)
    b, s, size, r0, c0 = 2000, 3, 15, 7, 6
    x = torch.zeros(b, 2, size, size)
    x[:, 0, r0, c0], x[:, 1, r0, c0] = 1.0, 0.5
    out = random_translate(x, s)
    assert out.shape == x.shape
    nonzero = out[:, 0].flatten(1).ne(0).sum(1)
    assert bool((nonzero == 1).all())  # one pixel, nothing cropped (it is far enough from the edges)
    flat = out[:, 0].flatten(1).argmax(1)
    dy, dx = flat // size - r0, flat % size - c0
    assert int(dy.abs().max()) <= s and int(dx.abs().max()) <= s
    assert torch.equal(out[:, 0].flatten(1).max(1).values, torch.ones(b))
    rows, cols = torch.arange(b), flat
    assert torch.equal(out[:, 1].flatten(1)[rows, cols], torch.full((b,), 0.5))  # same shift on every channel
    assert int(out[:, 1].flatten(1).ne(0).sum()) == b
    shifts = set(zip(dy.tolist(), dx.tolist()))
    assert shifts == {(i, j) for i in range(-s, s + 1) for j in range(-s, s + 1)}  # shifts vary across the batch


def test_random_translate_outputs_zero_filled_shifted_copies():
    """Each output image equals its input shifted by some (dy, dx) within max_shift, with zero fill."""
    torch.manual_seed(1)
    s = 2
    x = torch.rand(40, 3, 6, 9) + 0.1  # no zeros in the input: zeros in the output are fill
    out = random_translate(x, s)
    found = []
    for image, result in zip(x, out):
        matches = [(dy, dx) for dy in range(-s, s + 1) for dx in range(-s, s + 1) if torch.equal(result, shift(image, dy, dx))]
        assert len(matches) == 1
        found.append(matches[0])
    assert len(set(found)) > 5


def test_random_translate_zero_shift_is_identity():
    """max_shift=0 leaves the batch unchanged."""
    x = torch.rand(5, 3, 4, 4)
    assert torch.equal(random_translate(x, 0), x)
