"""A plain-numpy reader of PhysioNet WFDB records in the MIT-BIH formats 212 and 16 (no `wfdb` package: that one
pulls in pandas, matplotlib and aiohttp)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_GAIN, DEFAULT_FS = 200.0, 250.0  # the WFDB defaults when a header leaves them out
# one signal line: file format[xN][:skew][+offset] gain[(baseline)][/units] resolution adc_zero ...
GAIN = re.compile(r"^(?P<gain>[-+0-9.eE]+)?(?:\((?P<baseline>-?\d+)\))?(?:/(?P<units>\S+))?$")


@dataclass
class Signal:
    """One signal line of a .hea header."""

    file: str
    fmt: str
    offset: int
    gain: float
    baseline: int
    units: str
    name: str


def _signal(line: str, where: str) -> Signal:
    fields = line.split()
    if len(fields) < 2:
        raise ValueError(f"{where}: a signal line needs at least a file name and a format: '{line}'")
    fmt, _, offset = fields[1].partition("+")
    if not fmt.isdigit():  # 212x2 (several samples per frame) or 212:3 (skew)
        raise ValueError(f"{where}: format '{fields[1]}' (samples per frame or skew) is not supported")
    match = GAIN.match(fields[2]) if len(fields) > 2 else None
    if len(fields) > 2 and not match:
        raise ValueError(f"{where}: cannot read the gain field '{fields[2]}'")
    adc_zero = int(fields[4]) if len(fields) > 4 else 0
    gain = float(match["gain"]) if match and match["gain"] else 0.0
    baseline = int(match["baseline"]) if match and match["baseline"] else adc_zero
    return Signal(fields[0], fmt, int(offset or 0), gain or DEFAULT_GAIN, baseline,
                  (match["units"] if match else None) or "mV", " ".join(fields[8:]))


def read_header(path: Path) -> tuple[float, int | None, list[Signal]]:
    """(fs, n_samples or None, signals) from a .hea file: the record line, then one line per signal."""
    lines = [ln.strip() for ln in path.read_text(encoding="latin-1").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise ValueError(f"{path} is an empty WFDB header")
    record = lines[0].split()
    if len(record) < 2 or "/" in record[0]:
        raise ValueError(f"{path}: '{lines[0]}' is not a single-segment record line (name n_signals fs n_samples)")
    n_signals = int(record[1])
    fs = float(record[2].split("/")[0].split("(")[0]) if len(record) > 2 else DEFAULT_FS
    n_samples = (int(record[3]) or None) if len(record) > 3 else None  # 0: not stated
    if len(lines) < 1 + n_signals:
        raise ValueError(f"{path} declares {n_signals} signals but has {len(lines) - 1} signal lines")
    return fs, n_samples, [_signal(ln, str(path)) for ln in lines[1: 1 + n_signals]]


def unpack_212(data: bytes) -> np.ndarray:
    """Format 212: two 12-bit two's-complement samples in three bytes, the second's high nibble in byte 1's top."""
    raw = np.frombuffer(data[: len(data) // 3 * 3], dtype=np.uint8).reshape(-1, 3).astype(np.int32)
    first = raw[:, 0] | ((raw[:, 1] & 0x0F) << 8)
    second = raw[:, 2] | ((raw[:, 1] & 0xF0) << 4)
    out = np.stack([first, second], axis=1).reshape(-1)
    return np.where(out >= 2048, out - 4096, out)


def _digital(path: Path, fmt: str, offset: int) -> np.ndarray:
    data = path.read_bytes()[offset:]
    if fmt == "16":
        return np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.int32)
    if fmt == "212":
        return unpack_212(data)
    raise ValueError(f"{path}: WFDB format {fmt} is not supported (only 212 and 16, the MIT-BIH formats)")


def read_wfdb(record: str | Path) -> tuple[np.ndarray, float]:
    """A WFDB record (`DIR/100` -> DIR/100.hea + its .dat files) as (float32 physical units (n_samples, n_signals),
    fs in Hz): (digital - baseline) / gain, as wfdb.rdrecord's p_signal. Signals sharing a .dat are interleaved."""
    record = Path(record)
    header = record if record.suffix == ".hea" else record.with_name(record.name + ".hea")
    if not header.is_file():
        raise ValueError(f"WFDB header {header} not found")
    fs, n_samples, signals = read_header(header)
    columns: dict[int, np.ndarray] = {}  # signal index -> digital samples
    for file in dict.fromkeys(s.file for s in signals):  # each .dat once, in order of appearance
        group = [i for i, s in enumerate(signals) if s.file == file]
        if len({(signals[i].fmt, signals[i].offset) for i in group}) > 1:
            raise ValueError(f"{header}: the signals in {file} differ in format or byte offset")
        samples = _digital(header.parent / file, signals[group[0]].fmt, signals[group[0]].offset)
        frames = samples[: len(samples) // len(group) * len(group)].reshape(-1, len(group))  # (T, signals in file)
        columns.update({i: frames[:, j] for j, i in enumerate(group)})
    n = min(len(c) for c in columns.values()) if n_samples is None else n_samples
    if any(len(c) < n for c in columns.values()):
        raise ValueError(f"{header} declares {n} samples but its .dat files hold fewer")
    physical = [(columns[i][:n] - s.baseline) / s.gain for i, s in enumerate(signals)]
    return np.stack(physical, axis=1).astype(np.float32), fs
