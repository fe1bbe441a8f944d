"""1-D signal sources: a real ECG recording cut into heartbeats or windows, each scaled to [-1, 1]."""
from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import numpy as np
import scipy.ndimage
import scipy.signal
import torch

from dlexp.data.sources import SourceData, _not_found
from dlexp.data.wfdb import read_wfdb

SCIPY_ECG_FS = 360.0  # scipy's ecg.dat: MIT-BIH record 208, lead MLII, 360 Hz, 300 s
DEBIAN_SCIPY = Path("/usr/lib/python3/dist-packages/scipy")  # apt-get install python3-scipy (Debian 12: 1.10)
QRS_BAND = (5.0, 15.0)  # Hz: Pan & Tompkins (1985) keep the QRS energy, drop baseline wander, P and T waves
REFRACTORY = 0.25  # s between two beats at least (240 beats per minute)


def scipy_ecg_files() -> list[Path]:
    """Where scipy 1.10-1.14 ships ecg.dat: the installed scipy (found without importing it again), then Debian's."""
    spec = importlib.util.find_spec("scipy")
    installed = [Path(p) / "misc" / "ecg.dat" for p in (spec.submodule_search_locations or [])] if spec else []
    return installed + [DEBIAN_SCIPY / "misc" / "ecg.dat"]


def read_scipy_ecg(path: Path) -> np.ndarray:
    """scipy's ecg.dat (an .npz holding "ecg", uint16 ADC values) in mV: (raw - 1024) / 200. -> (T, 1) float32."""
    try:
        with np.load(path, allow_pickle=False) as f:
            raw = f["ecg"].astype(np.int64)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is not scipy's ecg.dat (an .npz with an 'ecg' array): {e}") from None
    return ((raw - 1024) / 200.0).astype(np.float32)[:, None]


def detect_r_peaks(ecg: np.ndarray, fs: float) -> np.ndarray:
    """R-peak sample indices of a 1-D ECG (mV), a simplified Pan-Tompkins detector:

    1. band-pass 5-15 Hz (2nd-order Butterworth, run forward and back: no delay) keeps the QRS complexes;
    2. the squared band, averaged over 150 ms, is the QRS energy;
    3. its peaks at least REFRACTORY (250 ms) apart and above 20% of the energy's maximum within +-1 s (an adaptive
       threshold: tall PVCs do not hide the normal beats near them) and 5% of its 99th percentile are the beats;
    4. each beat's R peak is the largest |deviation from the local baseline| within 75 ms (PVCs may point down).
    """
    if len(ecg) < fs:  # under a second: no beat to find (and too short for the filters)
        return np.empty(0, dtype=np.int64)
    b, a = scipy.signal.butter(2, QRS_BAND, btype="bandpass", fs=fs)
    band = scipy.signal.filtfilt(b, a, ecg)
    width = max(1, int(0.15 * fs))
    energy = np.convolve(band**2, np.ones(width) / width, mode="same")
    beats, _ = scipy.signal.find_peaks(energy, distance=int(REFRACTORY * fs))
    threshold = np.maximum(0.2 * scipy.ndimage.maximum_filter1d(energy, size=int(2 * fs) + 1),
                           0.05 * np.percentile(energy, 99))
    beats = beats[energy[beats] > threshold[beats]]
    b, a = scipy.signal.butter(2, 0.5, btype="highpass", fs=fs)
    level = np.abs(scipy.signal.filtfilt(b, a, ecg))  # baseline wander removed
    reach = max(1, int(0.075 * fs))
    peaks = [max(0, p - reach) + int(np.argmax(level[max(0, p - reach): p + reach + 1])) for p in beats]
    return np.unique(np.array(peaks, dtype=np.int64))  # sorted, each once


def scale_segments(segments: np.ndarray) -> np.ndarray:
    """Each row min-max scaled to [-1, 1] on its own (a flat row becomes 0): the tanh range of a GAN generator."""
    low, high = segments.min(axis=1, keepdims=True), segments.max(axis=1, keepdims=True)
    span = np.where(high > low, high - low, 1.0)
    return np.where(high > low, 2.0 * (segments - low) / span - 1.0, 0.0).astype(np.float32)


def beat_segments(ecg: np.ndarray, fs: float, length: int) -> np.ndarray:
    """(N, length) windows centred on each R peak (sample r - length // 2 to r + length - length // 2); beats too
    near either end are left out."""
    starts = detect_r_peaks(ecg, fs) - length // 2
    starts = starts[(starts >= 0) & (starts + length <= len(ecg))]
    return ecg[starts[:, None] + np.arange(length)] if len(starts) else np.empty((0, length), np.float32)


def window_segments(ecg: np.ndarray, length: int) -> np.ndarray:
    """(N, length) consecutive non-overlapping windows; the remainder at the end is left out."""
    n = len(ecg) // length
    return ecg[: n * length].reshape(n, length)


class ECG:
    """A real electrocardiogram cut into heartbeats ('beats', centred on detect_r_peaks' R peaks) or consecutive
    'windows' of `length` samples, each min-max scaled to [-1, 1]: x (N, 1, length) float32, y zeros (unlabelled).

    Recording: `path` (a WFDB record DIR/100 -> DIR/100.hea + .dat in format 212 or 16, a folder of records, or an
    ecg.dat), else data_dir/ecg.dat, the WFDB records data_dir/ecg/*.hea, then scipy's bundled ecg.dat: 300 s of
    MIT-BIH Arrhythmia record 208, lead MLII, 360 Hz (many PVCs and some noise; data ODC-BY 1.0, PhysioNet). It
    ships with scipy 1.10-1.14 and Debian's python3-scipy, not with scipy >= 1.15. On that file the detector finds
    497 R peaks (three artefact stretches of 2.6-5.3 s have none), giving 496 beats of 256 samples (0.71 s at
    360 Hz: P wave, QRS and T wave) or 421 windows. Beats are split train/test by a seeded
    permutation; a beat's 0.71 s overlaps its neighbours' (a typical RR interval there is 0.58 s), so train
    and test beats share the samples at their edges.
    """

    def __init__(self, path: str | None = None, data_dir: str = "data", segment: str = "beats", length: int = 256,
                 lead: int = 0, test_fraction: float = 0.2, seed: int = 0) -> None:
        if segment not in ("beats", "windows"):
            raise ValueError(f"dataset.source.segment must be 'beats' or 'windows', got '{segment}'")
        if length < 2 or not 0 < test_fraction < 1:
            raise ValueError(f"dataset.source.length must be >= 2 and test_fraction in (0, 1), got {length} and "
                             f"{test_fraction}")
        self.path, self.data_dir = (Path(path).expanduser() if path else None), Path(data_dir).expanduser()
        self.segment, self.length, self.lead = segment, length, lead
        self.test_fraction, self.seed = test_fraction, seed

    def candidates(self) -> list[Path]:
        return [self.data_dir / "ecg.dat", self.data_dir / "ecg" / "*.hea"] + scipy_ecg_files()

    def recordings(self) -> list[tuple[np.ndarray, float]]:
        """(signals (T, n_signals) in mV, fs) of every recording found, the first place that has one."""
        if self.path is not None:
            return _read_path(self.path, "dataset.source.path")
        if (self.data_dir / "ecg.dat").is_file():
            return [(read_scipy_ecg(self.data_dir / "ecg.dat"), SCIPY_ECG_FS)]
        if (self.data_dir / "ecg").is_dir() and any((self.data_dir / "ecg").glob("*.hea")):
            return _read_path(self.data_dir / "ecg", str(self.data_dir / "ecg"))
        for file in scipy_ecg_files():
            if file.is_file():
                return [(read_scipy_ecg(file), SCIPY_ECG_FS)]
        raise _not_found("ecg", self.candidates(),
                         "scipy >= 1.15 no longer ships ecg.dat: apt-get install python3-scipy (Debian/Ubuntu), copy "
                         "scipy/misc/ecg.dat of scipy 1.14 into the data folder, or give dataset.source.path=DIR/100 "
                         "(a PhysioNet MIT-BIH record: 100.hea and 100.dat).")

    def segments(self) -> np.ndarray:
        """(N, length) scaled segments of every recording's `lead`."""
        parts = []
        for signals, fs in self.recordings():
            if not 0 <= self.lead < signals.shape[1]:
                raise ValueError(f"dataset.source.lead={self.lead} but the recording has {signals.shape[1]} signals")
            ecg = signals[:, self.lead].astype(np.float64)
            cut = beat_segments(ecg, fs, self.length) if self.segment == "beats" else window_segments(ecg, self.length)
            parts.append(cut)
        segments = np.concatenate(parts) if parts else np.empty((0, self.length))
        if len(segments) < 2:
            raise ValueError(f"the ECG gives {len(segments)} {self.segment} of dataset.source.length={self.length} "
                             "samples: too few to split")
        return scale_segments(segments)

    def __call__(self) -> SourceData:
        x = torch.from_numpy(self.segments()).unsqueeze(1)  # (N, 1, length)
        y = torch.zeros(len(x), dtype=torch.long)
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
        n_test = max(1, int(len(x) * self.test_fraction))
        test, train = perm[:n_test], perm[n_test:]
        return SourceData(x[train], y[train], x[test], y[test])


def _read_path(path: Path, key: str) -> list[tuple[np.ndarray, float]]:
    """A WFDB record (with or without .hea), a folder of WFDB records, or a scipy-format ecg.dat."""
    if path.is_dir():
        records = sorted(path.glob("*.hea"))
        if not records:
            raise ValueError(f"{key}: {path} holds no WFDB records (*.hea)")
        return [read_wfdb(r) for r in records]
    if path.suffix == ".hea" or path.with_name(path.name + ".hea").is_file():
        return [read_wfdb(path)]
    if path.is_file():
        return [(read_scipy_ecg(path), SCIPY_ECG_FS)]
    raise ValueError(f"{key}: {path} is neither a WFDB record (no {path.name}.hea) nor a file")
