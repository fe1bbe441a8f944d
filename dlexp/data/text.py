"""Text classification sources: Keras' word-indexed IMDB and Reuters files, and folders of .txt reviews (aclImdb).

Both give word ids as `tokens` (N, seq_len) int64, 0 = padding, or the notes' `multi_hot` (N, num_words) float32.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import torch

from dlexp.data.encoding import build_vocabulary, encode, load_npz, read_text, to_ids, tokenize
from dlexp.data.sources import SYSTEM_DIRS, SourceData, _not_found

KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
# the hashes Keras checks its downloads against (sha256 for the arrays, md5 for the word indexes)
KERAS_HASHES = {
    "imdb.npz": "69664113be75683a8fe16e3ed0ab59fda8886cb3cd7ada244f7d9544e4676b9f",
    "reuters.npz": "d6586e694ee56d7a4e65172e12b3e987c03096cb01eab99753921ef915959916",
    "imdb_word_index.json": "bfafd718b763782e994055a2d397834f",
    "reuters_word_index.json": "4d44cc38712099c9e383dc6e5f11a921",
}
Sequences = list[list[int]]


class KerasIndexed:
    """IMDB (25,000 train + 25,000 test reviews, 0 negative / 1 positive) or Reuters (11,228 newswires, 46 topics)
    from Keras' own files, with exactly the ids keras.datasets.<name>.load_data gives.

    Each file holds words as frequency ranks (1 = most frequent). As Keras: shuffle with RandomState(seed) (IMDB:
    train then test with one generator; Reuters: all, then the last test_split is test), prepend start_char, add
    index_from to every rank, drop sequences of maxlen or more ids (Keras keeps len < maxlen), then ids >= num_words
    or < skip_top become oov_char (dropped when oov_char is None). Files are looked for in data_dir, Keras' cache
    (~/.keras/datasets) and the system dataset folders, then downloaded from Keras' public bucket if `download`.
    """

    def __init__(self, name: str, data_dir: str = "data", num_words: int | None = 10000, skip_top: int = 0,
                 maxlen: int | None = None, index_from: int = 3, start_char: int | None = 1,
                 oov_char: int | None = 2, seed: int = 113, output: str = "multi_hot", seq_len: int = 500,
                 test_split: float = 0.2, download: bool = False) -> None:
        if name not in ("imdb", "reuters"):
            raise ValueError(f"dataset.source.name must be 'imdb' or 'reuters', got '{name}'")
        if output not in ("tokens", "multi_hot"):
            raise ValueError(f"dataset.source.output must be 'tokens' or 'multi_hot', got '{output}'")
        self.name, self.data_dir, self.download = name, Path(data_dir).expanduser(), download
        self.num_words, self.skip_top, self.maxlen, self.index_from = num_words, skip_top, maxlen, index_from
        self.start_char, self.oov_char, self.seed = start_char, oov_char, seed
        self.output, self.seq_len, self.test_split = output, seq_len, test_split

    def folders(self) -> list[Path]:
        return [self.data_dir, Path("~/.keras/datasets").expanduser()] + [d / "keras" for d in SYSTEM_DIRS]

    def find(self, filename: str) -> Path:
        """The first copy of a Keras file in folders(), else downloaded into data_dir (download=true)."""
        for folder in self.folders():
            if (folder / filename).is_file():
                return folder / filename
        looked = [f / filename for f in self.folders()]
        if not self.download:
            raise _not_found(self.name, looked, f"Put Keras' {filename} ({KERAS_ORIGIN}{filename}) in one of these "
                             "folders, or run with dataset.source.download=true.")
        try:
            return download(KERAS_ORIGIN + filename, self.data_dir / filename, KERAS_HASHES[filename])
        except (OSError, ValueError) as e:
            raise _not_found(self.name, looked, f"The download failed too ({e}).") from None

    def __call__(self) -> SourceData:
        arrays = load_npz(self.find(f"{self.name}.npz"))
        (x_train, y_train), (x_test, y_test) = self.load_data(arrays)
        num_words = self.num_words or 1 + max(max(s, default=0) for s in x_train + x_test)
        return SourceData(encode(x_train, self.output, num_words, self.seq_len), torch.as_tensor(y_train).long(),
                         encode(x_test, self.output, num_words, self.seq_len), torch.as_tensor(y_test).long())

    def load_data(self, arrays: dict[str, np.ndarray]) -> tuple[tuple[Sequences, np.ndarray], ...]:
        """((x_train, y_train), (x_test, y_test)) as keras.datasets.<name>.load_data returns them."""
        rng = np.random.RandomState(self.seed)
        if self.name == "imdb":
            train = _shuffled(rng, arrays["x_train"], arrays["y_train"])
            test = _shuffled(rng, arrays["x_test"], arrays["y_test"])  # the same generator, continued
            train, test = self._filter_long(*self._shift(*train)), self._filter_long(*self._shift(*test))
            if not train[0] or not test[0]:
                raise ValueError(f"no sequence shorter than dataset.source.maxlen={self.maxlen}: increase it")
            xs = self._clip_vocabulary(train[0] + test[0])  # Keras clips both together
            cut = len(train[0])
            return (xs[:cut], train[1]), (xs[cut:], test[1])
        xs, labels = self._filter_long(*self._shift(*_shuffled(rng, arrays["x"], arrays["y"])))
        xs = self._clip_vocabulary(xs)
        cut = int(len(xs) * (1 - self.test_split))
        return (xs[:cut], labels[:cut]), (xs[cut:], labels[cut:])

    def _shift(self, xs: np.ndarray, labels: np.ndarray) -> tuple[Sequences, np.ndarray]:
        start = [] if self.start_char is None else [self.start_char]
        return [start + [int(w) + self.index_from for w in x] for x in xs], labels

    def _filter_long(self, xs: Sequences, labels: np.ndarray) -> tuple[Sequences, np.ndarray]:
        if not self.maxlen:
            return xs, labels
        keep = [i for i, x in enumerate(xs) if len(x) < self.maxlen]  # Keras' remove_long_seq: strictly shorter
        return [xs[i] for i in keep], labels[np.asarray(keep, dtype=np.int64)]

    def _clip_vocabulary(self, xs: Sequences) -> Sequences:
        num_words = self.num_words or max(max(x, default=0) for x in xs)  # Keras' own rule when None
        if self.oov_char is None:
            return [[w for w in x if self.skip_top <= w < num_words] for x in xs]
        return [[w if self.skip_top <= w < num_words else self.oov_char for w in x] for x in xs]

    def word_index(self) -> dict[int, str]:
        """id -> word for decoding (Keras' <name>_word_index.json shifted by index_from), with [START] and [OOV]."""
        with open(self.find(f"{self.name}_word_index.json"), encoding="utf-8") as f:
            index = {rank + self.index_from: word for word, rank in json.load(f).items()}
        index.update({c: tag for c, tag in ((self.start_char, "[START]"), (self.oov_char, "[OOV]")) if c is not None})
        return index

    def words(self, ids: list[int] | torch.Tensor) -> str:
        """A review back as text (padding 0 skipped): needs the word-index JSON (looked for as the .npz is)."""
        index = self.word_index()
        return " ".join(index.get(int(i), "[?]") for i in ids if int(i) != 0)


def _shuffled(rng: np.random.RandomState, xs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    indices = np.arange(len(xs))
    rng.shuffle(indices)
    return xs[indices], np.asarray(labels)[indices]


def download(url: str, dest: Path, digest: str) -> Path:
    """url -> dest through a temporary file, checked against its sha256 (64 hex) or md5 (32 hex), then renamed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as f:
            shutil.copyfileobj(response, f)
        algorithm = hashlib.sha256 if len(digest) == 64 else hashlib.md5
        got = algorithm(part.read_bytes()).hexdigest()
        if got != digest:
            raise ValueError(f"{url} has hash {got}, expected {digest}")
        part.replace(dest)
    finally:
        part.unlink(missing_ok=True)
    return dest


class TextFolder:
    """Reviews as .txt files in class folders, the aclImdb layout: root/{train,test}/<class>/*.txt.

    Classes: `classes`, or the subfolders present in both train and test, sorted (aclImdb: neg 0, pos 1; its
    unlabelled train/unsup is left out). Words: tokenize() (lowercase, `<br />` removed). The vocabulary is built
    on the TRAIN split only: the num_words - 2 most frequent words (ties alphabetical) get ids 2..num_words-1 by
    rank, 0 pads and 1 is every other word (out of vocabulary).
    """

    def __init__(self, root: str, num_words: int = 10000, seq_len: int = 500, output: str = "tokens",
                 classes: list[str] | None = None) -> None:
        if output not in ("tokens", "multi_hot"):
            raise ValueError(f"dataset.source.output must be 'tokens' or 'multi_hot', got '{output}'")
        self.root, self.num_words, self.seq_len, self.output = Path(root).expanduser(), num_words, seq_len, output
        self.classes = list(classes) if classes else None
        self.vocabulary: dict[str, int] = {}  # filled by loading

    def __call__(self) -> SourceData:
        classes = self.classes or self._classes()
        train_docs, train_y = self._read(self.root / "train", classes)
        test_docs, test_y = self._read(self.root / "test", classes)
        self.vocabulary = build_vocabulary(train_docs, self.num_words)
        train = [to_ids(d, self.vocabulary) for d in train_docs]
        test = [to_ids(d, self.vocabulary) for d in test_docs]
        return SourceData(encode(train, self.output, self.num_words, self.seq_len), train_y,
                         encode(test, self.output, self.num_words, self.seq_len), test_y)

    def _classes(self) -> list[str]:
        found = [{p.name for p in (self.root / s).iterdir() if p.is_dir()} if (self.root / s).is_dir() else set()
                 for s in ("train", "test")]
        if not found[0] & found[1]:
            raise _not_found("text_folder", [self.root / "train", self.root / "test"],
                             "Give dataset.source.root=DIR holding train/ and test/, each with one folder of .txt "
                             "files per class (aclImdb_v1.tar.gz unpacked has this layout).")
        return sorted(found[0] & found[1])

    def _read(self, split: Path, classes: list[str]) -> tuple[list[list[str]], torch.Tensor]:
        docs, labels = [], []
        for label, name in enumerate(classes):
            files = sorted((split / name).glob("*.txt"))
            if not files:
                raise _not_found("text_folder", [split / name], "No .txt files in this class folder.")
            docs += [tokenize(read_text(p)) for p in files]
            labels += [label] * len(files)
        return docs, torch.tensor(labels, dtype=torch.long)

    def words(self, ids: list[int] | torch.Tensor) -> str:
        """Ids back as words (after loading): 0 skipped, 1 as [OOV]."""
        index = {i: w for w, i in self.vocabulary.items()} | {1: "[OOV]"}
        return " ".join(index.get(int(i), "[?]") for i in ids if int(i) != 0)
