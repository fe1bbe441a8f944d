"""Boston housing (Keras' split, train-only standardisation), character windows, WFDB records and ECG beats: the
sources' semantics on small files written here, the real files where installed, and their dataset YAMLs."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import torch

from conftest import build_dataset as build

from dlexp.config.compose import compose
from dlexp.data import signals, tabular
from dlexp.data.arrays import ArrayDataModule
from dlexp.data.chars import ASCII_ALPHABET, CharCorpus
from dlexp.data.signals import ECG, beat_segments, detect_r_peaks, scipy_ecg_files
from dlexp.data.sources import DataNotFound
from dlexp.data.tabular import BostonHousing
from dlexp.data.wfdb import read_wfdb

REAL_ECG = next((p for p in scipy_ecg_files() if p.is_file()), None)
needs_real_ecg = pytest.mark.skipif(REAL_ECG is None, reason="no scipy ecg.dat: scipy >= 1.15 dropped it; "
                                    "apt-get install python3-scipy")
needs_mlxtend = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None,
                                   reason="mlxtend absent: pip install 'dlexp[tabular]'")


# ---------------------------------------------------------------- Boston housing

def boston_table(n: int = 30) -> np.ndarray:
    rng = np.random.default_rng(0)
    table = rng.normal(size=(n, 14)) * np.arange(1, 15) + np.arange(14) * 10
    table[:, 13] = np.arange(n)  # the target is the row number: the split can be followed
    return table


def test_boston_splits_as_keras(tmp_path):
    """A 14-column CSV: shuffled with RandomState(113), the first int(n * 0.8) rows train, the rest test."""
    table = boston_table()
    np.savetxt(tmp_path / "boston_housing.csv", table, delimiter=",")
    data = BostonHousing(str(tmp_path))()
    order = np.arange(30)
    np.random.RandomState(113).shuffle(order)
    assert data.train_y.tolist() == order[:24].tolist() and data.test_y.tolist() == order[24:].tolist()
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.float32
    torch.testing.assert_close(data.train_x, torch.from_numpy(table[order[:24], :13]).float())


def test_boston_reads_keras_npz_and_a_csv_header(tmp_path):
    table = boston_table(10)
    np.savez(tmp_path / "boston_housing.npz", x=table[:, :13], y=table[:, 13])
    assert BostonHousing(str(tmp_path))().train_x.shape == (8, 13)
    other = tmp_path / "csv"
    other.mkdir()
    np.savetxt(other / "boston_housing.csv", table, delimiter=",", header=",".join(tabular.BOSTON_COLUMNS),
               comments="")
    assert sorted(BostonHousing(str(other))().test_y.tolist()) == sorted(BostonHousing(str(tmp_path))().test_y.tolist())
    np.savetxt(other / "boston_housing.csv", table[:, :5], delimiter=",")
    with pytest.raises(ValueError, match="boston_housing.csv has 5 columns"):
        BostonHousing(str(other))()


def test_boston_standardises_with_the_train_split_only(tmp_path):
    """The datamodule's mean/std are those of its train split: not of validation, test, or the whole table."""
    np.savetxt(tmp_path / "boston_housing.csv", boston_table(40), delimiter=",")
    dm = ArrayDataModule(BostonHousing(str(tmp_path)), "boston_housing", "tabular", [13], num_classes=0,
                         standardize=True, val_fraction=0.25)
    dm.load()
    train_x = dm.splits["train"][0]
    assert dm.sizes() == {"train": 24, "val": 8, "test": 8}
    torch.testing.assert_close(dm.mean, train_x.mean(0, keepdim=True))
    torch.testing.assert_close(dm.std, train_x.std(0, keepdim=True))
    everything = torch.cat([train_x, dm.splits["val"][0]])
    assert not torch.allclose(dm.mean, everything.mean(0, keepdim=True))
    torch.testing.assert_close(dm.transform(train_x, training=False).mean(0), torch.zeros(13), atol=1e-5, rtol=0)


def test_boston_missing_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setattr(tabular, "mlxtend_csv", lambda: None)
    with pytest.raises(DataNotFound, match=r"pip install 'dlexp\[tabular\]'") as e:
        BostonHousing(str(tmp_path))()
    assert str(tmp_path / "boston_housing.csv") in str(e.value)


@needs_mlxtend
def test_real_boston_matches_keras():
    """mlxtend's MASS table in Keras' split: 404 + 102 rows, the first training rows as Keras gives them."""
    data = BostonHousing("/nonexistent")()
    assert data.train_x.shape == (404, 13) and data.test_x.shape == (102, 13)
    assert data.train_y[:3].tolist() == pytest.approx([15.2, 42.3, 50.0])
    assert data.train_x[0, 0].item() == pytest.approx(1.23247) and data.train_x[0, 12].item() == pytest.approx(18.72)


@needs_mlxtend
def test_boston_yaml_builds():
    _, dm = build(["dataset=boston_housing", "paths.data_dir=/nonexistent"])
    assert dm.kind == "tabular" and dm.mean is not None and dm.splits["train"][0].shape[1:] == (13,)
    assert dm.sizes() == {"train": 324, "val": 80, "test": 102}


# ---------------------------------------------------------------- characters

def test_char_windows_shift_by_one(tmp_path):
    text = "".join(chr(ord("a") + i % 7) for i in range(100))
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    source = CharCorpus(str(tmp_path / "t.txt"), seq_len=4, step=2, test_fraction=0.2)
    data = source()
    assert source.chars == "abcdefg" and data.train_x.dtype == torch.int64
    assert source.decode(data.train_x[0]) == text[0:4] and source.decode(data.train_y[0]) == text[1:5]
    assert source.decode(data.train_x[1]) == text[2:6]
    assert torch.equal(data.train_y[:, :-1], data.train_x[:, 1:])
    assert len(data.train_x) == (80 - 5) // 2 + 1  # windows of 5 chars every 2 within the first 80
    assert source.decode(data.test_x[0]) == text[80:84] and source.decode(data.test_y[-1]) == text[95:99]


def test_chars_vocab_size_must_match(tmp_path):
    (tmp_path / "a.txt").write_text("abc" * 20, encoding="utf-8")
    (tmp_path / "b.txt").write_text("xyz" * 20, encoding="utf-8")
    assert CharCorpus(str(tmp_path), seq_len=5, vocab_size=6)().train_x.max() < 6  # a folder: both files
    with pytest.raises(ValueError, match="dataset.vocab_size=96: set dataset.vocab_size=3"):
        CharCorpus([str(tmp_path / "a.txt")], seq_len=5, vocab_size=96)()


@pytest.mark.parametrize("content", [b"", b"\xff\xfe broken"])
def test_chars_refuse_empty_or_non_utf8(tmp_path, content):
    (tmp_path / "bad.txt").write_bytes(content)
    with pytest.raises(ValueError, match="bad.txt"):
        CharCorpus(str(tmp_path / "bad.txt"))()


def test_default_corpus_is_pythons_help_text():
    """pydoc_data.topics, folded to the fixed 96-symbol ASCII alphabet that text.yaml declares."""
    source = CharCorpus(vocab_size=96, seq_len=60, step=3)
    data = source()
    assert source.chars == ASCII_ALPHABET and len(source.chars) == 96
    assert len(data.train_x) + len(data.test_x) > 140_000 and int(data.train_x.max()) < 96
    assert "statement" in source.decode(data.train_x[: 50].flatten())


def test_text_yaml_builds():
    cfg, dm = build(["dataset=text", "dataset.source.max_chars=3000"])
    x, y = dm.splits["train"]
    assert x.shape[1:] == (60,) and torch.equal(y[:, :-1], x[:, 1:])
    sizes = dm.sizes()  # validation: the windows just before the test tail, in order (val_split tail)
    assert sizes["val"] == int((sizes["train"] + sizes["val"]) * 0.1) and dm.val_split == "tail"
    assert cfg.dataset.vocab_size == 96 == cfg.dataset.num_classes


# ---------------------------------------------------------------- WFDB and ECG

def pack_212(digital: np.ndarray) -> bytes:
    """Samples (T, S) as format 212: frames interleaved, two 12-bit values in three bytes."""
    flat = (digital.reshape(-1).astype(np.int64) & 0xFFF)
    a, b = flat[0::2], flat[1::2]
    packed = np.stack([a & 0xFF, ((a >> 8) & 0x0F) | ((b >> 8) << 4), b & 0xFF], axis=1)
    return packed.astype(np.uint8).tobytes()


def write_record(folder: Path, name: str, digital: np.ndarray, fmt: str, fs: float = 360.0,
                 gains=(200.0, 100.0), baselines=(1024, -5)) -> Path:
    """A WFDB record, every signal in one .dat file (the MIT-BIH layout), with its .hea header."""
    data = pack_212(digital) if fmt == "212" else digital.astype("<i2").tobytes()
    (folder / f"{name}.dat").write_bytes(data)
    lines = ["# written by the tests", f"{name} {digital.shape[1]} {fs:g} {len(digital)}"]
    lines += [f"{name}.dat {fmt} {gains[i]:g}({baselines[i]})/mV 12 0 0 0 0 sig{i}" for i in range(digital.shape[1])]
    (folder / f"{name}.hea").write_text("\n".join(lines) + "\n")
    return folder / name


@pytest.mark.parametrize("fmt", ["212", "16"])
def test_wfdb_round_trip(tmp_path, fmt):
    rng = np.random.default_rng(1)
    digital = rng.integers(-2048, 2048, size=(50, 2))
    physical, fs = read_wfdb(write_record(tmp_path, "100", digital, fmt))
    expected = (digital - np.array([1024, -5])) / np.array([200.0, 100.0])
    assert fs == 360.0 and physical.dtype == np.float32 and physical.shape == (50, 2)
    np.testing.assert_allclose(physical, expected, rtol=0, atol=1e-6)


def test_wfdb_header_defaults(tmp_path):
    """A gain field without a baseline takes adc_zero; fields left out take WFDB's defaults (gain 200)."""
    (tmp_path / "r.dat").write_bytes(np.array([400, 0, -200], dtype="<i2").tobytes())
    (tmp_path / "r.hea").write_text("r 1 250\nr.dat 16 100/mV 16 10\n")
    physical, fs = read_wfdb(tmp_path / "r.hea")
    assert fs == 250.0 and physical[:, 0].tolist() == pytest.approx([3.9, -0.1, -2.1])
    (tmp_path / "r.hea").write_text("r 1 250 3\nr.dat 16\n")
    assert read_wfdb(tmp_path / "r")[0][:, 0].tolist() == pytest.approx([2.0, 0.0, -1.0])
    (tmp_path / "r.hea").write_text("r 1 250 3\nr.dat 311 200 10 0\n")
    with pytest.raises(ValueError, match="format 311"):
        read_wfdb(tmp_path / "r")


def synthetic_ecg(fs: float = 360.0, seconds: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """(mV signal, R-peak samples): Gaussian P, QRS and T waves at irregular intervals, baseline wander, noise."""
    rng = np.random.default_rng(2)
    t = np.arange(int(seconds * fs)) / fs
    peaks, now = [], 0.4
    while now < seconds - 0.4:
        peaks.append(round(now * fs))
        now += rng.uniform(0.5, 1.1)  # 55-120 beats per minute
    wave = lambda centre, width, height: height * np.exp(-0.5 * ((t - centre) / width) ** 2)
    ecg = 0.3 * np.sin(2 * np.pi * 0.3 * t) + 0.02 * rng.normal(size=t.size)
    for p in np.array(peaks) / fs:
        ecg += wave(p - 0.18, 0.025, 0.15) + wave(p - 0.03, 0.01, -0.2) + wave(p, 0.008, 1.5)
        ecg += wave(p + 0.03, 0.01, -0.3) + wave(p + 0.25, 0.04, 0.35)
    return ecg, np.array(peaks)


def test_r_peaks_of_a_synthetic_ecg():
    ecg, truth = synthetic_ecg()
    found = detect_r_peaks(ecg, 360.0)
    assert len(found) == len(truth) and np.abs(found - truth).max() <= 2
    segments = beat_segments(ecg, 360.0, 128)
    assert len(segments) == len(truth)  # the first peak is at 0.4 s, more than 64 samples in
    assert np.abs(segments.argmax(axis=1) - 64).max() <= 2  # each R peak at the centre


def test_ecg_from_a_wfdb_record(tmp_path):
    """Beats of lead 1 of a two-lead record: (N, 1, length) float32 scaled to [-1, 1] per beat, y 0, seeded split."""
    ecg, truth = synthetic_ecg()
    digital = np.stack([np.zeros_like(ecg), ecg * 200 + 1024], axis=1).round().astype(np.int64)
    record = write_record(tmp_path, "208", digital, "212", gains=(200.0, 200.0), baselines=(0, 1024))
    data = ECG(str(record), lead=1, length=128, test_fraction=0.25, seed=3)()
    x = torch.cat([data.train_x, data.test_x])
    assert x.shape == (len(truth), 1, 128) and x.dtype == torch.float32 and len(data.test_x) == len(truth) // 4
    torch.testing.assert_close(x.amax(dim=2), torch.ones(len(x), 1))
    torch.testing.assert_close(x.amin(dim=2), -torch.ones(len(x), 1))
    assert data.train_y.unique().tolist() == [0] and data.train_y.dtype == torch.int64
    again = ECG(str(record), lead=1, length=128, test_fraction=0.25, seed=3)()
    assert torch.equal(again.test_x, data.test_x)
    windows = ECG(str(tmp_path), segment="windows", lead=1, length=100)()  # a folder of records
    assert len(windows.train_x) + len(windows.test_x) == len(ecg) // 100
    with pytest.raises(ValueError, match="dataset.source.lead=2"):
        ECG(str(record), lead=2)()


def test_ecg_looks_in_the_data_dir_first(tmp_path, monkeypatch):
    """data_dir/ecg/*.hea records before scipy's file; nothing anywhere: DataNotFound naming the places."""
    monkeypatch.setattr(signals, "scipy_ecg_files", lambda: [tmp_path / "scipy" / "ecg.dat"])
    with pytest.raises(DataNotFound, match="python3-scipy") as e:
        ECG(data_dir=str(tmp_path))()
    assert str(tmp_path / "ecg.dat") in str(e.value)
    (tmp_path / "ecg").mkdir()
    ecg, truth = synthetic_ecg()
    write_record(tmp_path / "ecg", "100", (ecg[:, None] * 200 + 1024).round().astype(np.int64), "16")
    data = ECG(data_dir=str(tmp_path), length=128)()
    assert len(data.train_x) + len(data.test_x) == len(truth)


def test_ecg_yaml_builds_from_a_record(tmp_path):
    ecg, truth = synthetic_ecg(seconds=40.0)
    write_record(tmp_path, "100", (ecg[:, None] * 200 + 1024).round().astype(np.int64), "16")
    _, dm = build(["dataset=ecg", f"dataset.source.path={tmp_path / '100'}"])
    assert dm.kind == "signal" and dm.splits["train"][0].shape[1:] == (1, 256)
    assert sum(dm.sizes().values()) == len(truth)  # every beat is at least 0.4 s (144 samples) from either end


@needs_real_ecg
def test_real_ecg_beats():
    """scipy's ecg.dat (MIT-BIH 208, 300 s at 360 Hz): 496 beats of 256 samples, 421 windows."""
    data = ECG(data_dir="/nonexistent")()
    assert len(data.train_x) + len(data.test_x) == 496 and data.train_x.shape[1:] == (1, 256)
    windows = ECG(data_dir="/nonexistent", segment="windows")()
    assert len(windows.train_x) + len(windows.test_x) == 108_000 // 256
