"""Character corpora for language models: windows of text as character ids, the target shifted by one."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dlexp.data.encoding import read_text
from dlexp.data.sources import SourceData

# The default corpus's fixed alphabet: newline and printable ASCII (96 symbols), so dataset.vocab_size is the same
# on every Python version (pydoc's topics change between releases, and with them the characters they use).
ASCII_ALPHABET = "\n" + "".join(chr(c) for c in range(32, 127))
TYPOGRAPHY = str.maketrans({"‘": "'", "’": "'", "“": '"', "”": '"', "–": "-", "—": "--", "…": "...", "ß": "ss",
                            "°": " degrees", "\t": "    "})


def pydoc_corpus() -> str:
    """Python's own help topics (stdlib pydoc_data.topics, ~465,000 characters of English prose and code on 3.11),
    folded to ASCII_ALPHABET: typographic quotes and dashes as ASCII, any other character dropped."""
    import pydoc_data.topics  # deferred: a 0.5 MB module, needed only for the default corpus

    text = "\n".join(pydoc_data.topics.topics.values()).translate(TYPOGRAPHY)
    return "".join(c for c in text if c in ASCII_ALPHABET)


def text_files(path: str | list[str]) -> list[Path]:
    """A file, a folder's *.txt files (sorted), or a list of either, in order."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    files: list[Path] = []
    for p in (Path(q).expanduser() for q in paths):
        if p.is_dir():
            found = sorted(p.glob("*.txt"))
            if not found:
                raise ValueError(f"dataset.source.path: {p} holds no .txt files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise ValueError(f"dataset.source.path: {p} does not exist")
    return files


def char_ids(text: str, alphabet: str) -> np.ndarray:
    """(T,) int64 index of each character of text in the sorted alphabet (by code point, vectorised)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    table = np.frombuffer(alphabet.encode("utf-32-le"), dtype=np.uint32)
    return np.searchsorted(table, codes).astype(np.int64)


class CharCorpus:
    """Characters of UTF-8 text files (`path`: a file, a folder of *.txt, or a list), or by default Python's own
    help topics (pydoc_data, stdlib: nothing to download), as next-character windows.

    Ids index a sorted alphabet (`chars`, set on loading): the characters of the whole text for your own files, the
    fixed 96-symbol ASCII_ALPHABET for the default corpus. A declared vocab_size (dataset.vocab_size) must equal
    its size: a ValueError says the right value.

    Split BY POSITION, not by window: the first 1 - test_fraction of the text is train, the rest is the held-out
    test part; windows never cross the cut. Windows of seq_len + 1 characters start every `step` characters:
    x = window[:-1], y = window[1:] (N, seq_len) int64. Neighbouring windows share seq_len - step characters, so a
    random validation share of the train windows would hold text the model trains on: conf/dataset/text.yaml takes
    validation by position too (val_split tail: the last windows of the training part, in order).
    """

    def __init__(self, path: str | list[str] | None = None, seq_len: int = 60, step: int = 3,
                 test_fraction: float = 0.1, max_chars: int | None = None, vocab_size: int | None = None) -> None:
        if seq_len < 1 or step < 1:
            raise ValueError(f"dataset.source.seq_len and step must be >= 1, got {seq_len} and {step}")
        if not 0 < test_fraction < 1:
            raise ValueError(f"dataset.source.test_fraction must be in (0, 1), got {test_fraction}")
        self.path, self.seq_len, self.step, self.test_fraction = path, seq_len, step, test_fraction
        self.max_chars, self.vocab_size = max_chars, vocab_size
        self.chars = ""  # the alphabet, id i is chars[i] (set on loading)

    def text(self) -> str:
        """The whole corpus (cut to max_chars when set)."""
        text = pydoc_corpus() if self.path is None else "".join(read_text(p) for p in text_files(self.path))
        return text[: self.max_chars] if self.max_chars else text

    def alphabet(self, text: str) -> str:
        """Sorted distinct characters of the text; the fixed ASCII_ALPHABET for the default corpus."""
        return ASCII_ALPHABET if self.path is None else "".join(sorted(set(text)))

    def vocabulary(self) -> str:
        """The alphabet (id i is character i), reading the text if not loaded yet."""
        if not self.chars:
            self.chars = self.alphabet(self.text())
        return self.chars

    def __call__(self) -> SourceData:
        text = self.text()
        self.chars = self.alphabet(text)
        if self.vocab_size and self.vocab_size != len(self.chars):
            raise ValueError(f"the corpus has {len(self.chars)} distinct characters but dataset.vocab_size="
                             f"{self.vocab_size}: set dataset.vocab_size={len(self.chars)}")
        ids = torch.from_numpy(char_ids(text, self.chars))  # (T,)
        cut = int(len(ids) * (1 - self.test_fraction))
        train_x, train_y = self._windows(ids[:cut], "train")
        test_x, test_y = self._windows(ids[cut:], "test")
        return SourceData(train_x, train_y, test_x, test_y)

    def _windows(self, ids: torch.Tensor, part: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) (N, seq_len) int64: windows of seq_len + 1 ids every `step`, y = x shifted left by one."""
        if len(ids) < self.seq_len + 1:
            raise ValueError(f"the {part} part holds {len(ids)} characters, fewer than dataset.source.seq_len + 1 = "
                             f"{self.seq_len + 1}: use more text, or a shorter seq_len or test_fraction")
        windows = ids.unfold(0, self.seq_len + 1, self.step)  # (N, seq_len + 1), a view
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Ids back as text."""
        chars = self.vocabulary()
        return "".join(chars[int(i)] for i in ids)
