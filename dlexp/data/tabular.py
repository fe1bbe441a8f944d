"""Table sources: rows of float features with a float regression target."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from dlexp.data.sources import SYSTEM_DIRS, SourceData, _not_found

BOSTON_COLUMNS = ("CRIM", "ZN", "INDUS", "CHAS", "NOX", "RM", "AGE", "DIS", "RAD", "TAX", "PTRATIO", "B", "LSTAT",
                  "MEDV")  # MASS::Boston order; MEDV (median home value, $1000s) is the target


def mlxtend_csv() -> Path | None:
    """mlxtend's bundled MASS Boston CSV, found without importing mlxtend (its __init__ pulls in heavy packages)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "data" / "data" / "boston_housing.csv"


class BostonHousing:
    """The Boston house prices (Harrison & Rubinfeld 1978, MASS::Boston): 506 suburbs, 13 features, target MEDV.

    Read from data_dir/boston_housing.npz (Keras' file: x (506, 13), y (506,)), data_dir/boston_housing.csv
    (14 columns, the target last, an optional header line), the system dataset folders, or mlxtend's bundled CSV.
    Split as keras.datasets.boston_housing.load_data: rows shuffled with RandomState(seed), the first
    int(506 * (1 - test_fraction)) = 404 train, the last 102 test. x float32 (N, 13) raw (standardise in the
    datamodule, with the training split's statistics only); y float32 (N,) in $1000s.
    The `B` column encodes a racial proportion: the dataset is kept for the notes' regression example only.
    """

    def __init__(self, data_dir: str = "data", test_fraction: float = 0.2, seed: int = 113) -> None:
        if not 0 < test_fraction < 1:
            raise ValueError(f"dataset.source.test_fraction must be in (0, 1), got {test_fraction}")
        self.data_dir, self.test_fraction, self.seed = Path(data_dir).expanduser(), test_fraction, seed

    def candidates(self) -> list[Path]:
        folders = [self.data_dir] + [d / "boston_housing" for d in SYSTEM_DIRS]
        found = [f / name for f in folders for name in ("boston_housing.npz", "boston_housing.csv")]
        return found + [p for p in [mlxtend_csv()] if p is not None]

    def __call__(self) -> SourceData:
        path = next((p for p in self.candidates() if p.is_file()), None)
        if path is None:
            raise _not_found("boston_housing", self.candidates(),
                             "Install mlxtend, which ships the table: pip install 'dlexp[tabular]' (or put Keras' "
                             "boston_housing.npz or a 14-column boston_housing.csv in the data folder).")
        x, y = read_table(path)
        indices = np.arange(len(x))
        np.random.RandomState(self.seed).shuffle(indices)  # Keras' split: seed 113, the last 20% test
        x, y = torch.from_numpy(x[indices]), torch.from_numpy(y[indices])
        cut = int(len(indices) * (1 - self.test_fraction))
        return SourceData(x[:cut], y[:cut], x[cut:], y[cut:])


def read_table(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(x (N, 13) float32, y (N,) float32) from Keras' .npz or a 14-column CSV (target last)."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            x, y = np.asarray(f["x"], dtype=np.float32), np.asarray(f["y"], dtype=np.float32).reshape(-1)
    else:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
        header = any(c.isalpha() and c not in "eE" for c in first)  # a name line, not numbers like 6.32e-03
        try:
            table = np.loadtxt(path, delimiter=",", dtype=np.float64, skiprows=int(header), ndmin=2)
        except ValueError as e:
            raise ValueError(f"{path} is not a comma-separated table of numbers: {e}") from None
        if table.shape[1] != len(BOSTON_COLUMNS):
            raise ValueError(f"{path} has {table.shape[1]} columns, expected {len(BOSTON_COLUMNS)} "
                             f"({', '.join(BOSTON_COLUMNS)})")
        x, y = table[:, :-1].astype(np.float32), table[:, -1].astype(np.float32)
    if x.ndim != 2 or x.shape[1] != len(BOSTON_COLUMNS) - 1 or len(x) != len(y):
        raise ValueError(f"{path} holds x {x.shape} and y {y.shape}, expected (N, 13) and (N,)")
    return x, y
