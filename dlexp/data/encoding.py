"""Word sequences as tensors: Keras' pad_sequences defaults, the notes' multi-hot vectors, a plain tokenizer, a
frequency vocabulary, a UTF-8 reader that names the bad file, and a pickle-safe reader of Keras' ragged .npz files."""
from __future__ import annotations

import io
import pickle
import re
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

PAD, OOV = 0, 1  # TextFolder's reserved ids; its words start at 2
FIRST_WORD = 2
TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*")  # letters/digits, apostrophes only inside a word (don't, o'clock)


def pad_sequences(seqs: list[list[int]], seq_len: int, value: int = 0) -> torch.Tensor:
    """Keras' pad_sequences defaults: keep each sequence's LAST seq_len ids (truncating='pre'), fill on the left
    (padding='pre') with `value`. -> (N, seq_len) int64."""
    if seq_len < 1:
        raise ValueError(f"dataset.source.seq_len must be >= 1, got {seq_len}")
    out = np.full((len(seqs), seq_len), value, dtype=np.int64)
    for i, seq in enumerate(seqs):
        tail = list(seq)[-seq_len:]
        if tail:
            out[i, seq_len - len(tail):] = tail
    return torch.from_numpy(out)


def multi_hot(seqs: list[list[int]], num_words: int) -> torch.Tensor:
    """The notes' vectorize_sequences: row i has 1 at every id present in sequence i. -> (N, num_words) uint8 (a
    quarter of float32's memory; ArrayDataModule.transform makes float batches)."""
    out = np.zeros((len(seqs), num_words), dtype=np.uint8)
    lengths = [len(s) for s in seqs]
    if sum(lengths):
        rows = np.repeat(np.arange(len(seqs)), lengths)
        out[rows, np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs if len(s)])] = 1
    return torch.from_numpy(out)


def encode(seqs: list[list[int]], output: str, num_words: int, seq_len: int) -> torch.Tensor:
    """Sequences of ids < num_words as `output`: 'tokens' (N, seq_len) int64 or 'multi_hot' (N, num_words) float32."""
    if output == "tokens":
        return pad_sequences(seqs, seq_len)
    if output == "multi_hot":
        return multi_hot(seqs, num_words)
    raise ValueError(f"dataset.source.output must be 'tokens' or 'multi_hot', got '{output}'")


def read_text(path: Path) -> str:
    """A whole UTF-8 file; an empty or non-UTF-8 file is a ValueError naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text:
        raise ValueError(f"{path} is empty")
    return text


def tokenize(text: str) -> list[str]:
    """Lowercase words: aclImdb's `<br />` line breaks removed, split on anything but letters, digits and
    apostrophes inside a word."""
    return TOKEN.findall(text.lower().replace("<br />", " "))


def build_vocabulary(documents: list[list[str]], num_words: int) -> dict[str, int]:
    """word -> id for the num_words - 2 most frequent words (ties alphabetical), ids 2.. by rank; 0 pads, 1 is OOV."""
    if num_words <= FIRST_WORD:
        raise ValueError(f"dataset.source.num_words must be > {FIRST_WORD} (0 pads, 1 is out-of-vocabulary), "
                         f"got {num_words}")
    counts = Counter(word for doc in documents for word in doc)
    ranked = sorted(counts, key=lambda w: (-counts[w], w))[: num_words - FIRST_WORD]
    return {word: FIRST_WORD + rank for rank, word in enumerate(ranked)}


def to_ids(words: list[str], vocabulary: dict[str, int]) -> list[int]:
    return [vocabulary.get(w, OOV) for w in words]


# The globals a pickled numpy object array needs (numpy < 2 and >= 2 spellings) and nothing else: a tampered .npz
# cannot run code through a pickle __reduce__ (Keras 3 reads its datasets the same way).
ALLOWED_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                   ("numpy._core.multiarray", "_reconstruct")}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _read_npy(raw: io.BytesIO) -> np.ndarray:
    """One .npy member: numeric arrays without pickle, object arrays through the restricted unpickler."""
    try:
        return np.lib.format.read_array(raw, allow_pickle=False)
    except ValueError:  # an object array: numpy stores it as a pickle after the header
        raw.seek(0)
        major, _ = np.lib.format.read_magic(raw)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        read_header(raw)
        return _ArrayUnpickler(raw).load()


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file (ragged object arrays included) without np.load(allow_pickle=True)."""
    arrays = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if member.endswith(".npy"):
                    arrays[member[:-4]] = _read_npy(io.BytesIO(archive.read(member)))
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, OSError) as e:
        raise ValueError(f"{path} is not a readable .npz file: {e}") from None
    return arrays
