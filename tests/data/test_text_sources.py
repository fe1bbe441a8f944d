"""Text sources: Keras' imdb.npz / reuters.npz read with exactly Keras' semantics, aclImdb-style folders with a
train-only vocabulary, the tokens / multi-hot encodings, and the dataset YAMLs built on tiny files."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

import torch

from conftest import build_dataset as build

from dlexp.config.compose import compose
from dlexp.data import text
from dlexp.data.encoding import build_vocabulary, load_npz, multi_hot, pad_sequences, tokenize
from dlexp.data.sources import DataNotFound
from dlexp.data.text import KerasIndexed, TextFolder


def ragged(seqs: list[list[int]]) -> np.ndarray:
    """An object array of python int lists, as Keras' files hold them (np.array would make a 2-D array of equal
    lengths)."""
    out = np.empty(len(seqs), dtype=object)
    for i, s in enumerate(seqs):
        out[i] = list(s)
    return out


# word ranks as in imdb.npz (1 = most frequent); each label is the sequence's own index, to follow the shuffle
TRAIN = [[1, 5, 9996, 9997, 20], [2, 2, 3], [7], [4, 4, 4, 4, 4, 4], [9, 8]]
TEST = [[6, 1], [9997, 1, 2, 3, 4, 5, 6, 7], [3]]


def write_imdb(folder: Path, train: list[list[int]] = TRAIN, test: list[list[int]] = TEST, classes: int = 0) -> Path:
    """imdb.npz; labels are the sequences' indices, or index % classes when classes is set."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = [np.arange(len(s)) % classes if classes else np.arange(len(s)) for s in (train, test)]
    np.savez(folder / "imdb.npz", x_train=ragged(train), y_train=labels[0], x_test=ragged(test), y_test=labels[1])
    return folder


def keras_order(*sizes: int, seed: int = 113) -> list[np.ndarray]:
    """The orders Keras' load_data shuffles into: one RandomState, one shuffle per split in turn."""
    rng, orders = np.random.RandomState(seed), []
    for n in sizes:
        idx = np.arange(n)
        rng.shuffle(idx)
        orders.append(idx)
    return orders


def rows(x: torch.Tensor, y: torch.Tensor) -> dict[int, list[int]]:
    """label (= original index) -> the row's ids without the 'pre' padding."""
    return {int(label): [int(v) for v in row if v != 0] for row, label in zip(x, y)}


def test_imdb_ids_follow_keras_shift_start_and_oov(tmp_path):
    """start_char 1 first, every rank + index_from 3, ids >= num_words -> oov 2; train and test shuffled with one
    RandomState(113), train first."""
    data = KerasIndexed("imdb", write_imdb(tmp_path), num_words=10000, output="tokens", seq_len=10)()
    order_train, order_test = keras_order(len(TRAIN), len(TEST))
    assert data.train_y.tolist() == order_train.tolist() and data.test_y.tolist() == order_test.tolist()
    train = rows(data.train_x, data.train_y)
    assert train[0] == [1, 4, 8, 9999, 2, 23]  # 9996 + 3 = 9999 stays, 9997 + 3 = 10000 is out of vocabulary
    assert train[1] == [1, 5, 5, 6] and train[2] == [1, 10]
    assert rows(data.test_x, data.test_y)[1] == [1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert data.train_x.dtype == torch.int64 and data.train_x.shape == (5, 10) and data.test_x.shape == (3, 10)


def test_imdb_skip_top_and_dropped_oov(tmp_path):
    """skip_top turns ids below it into oov (start_char 1 included, as in Keras); oov_char None drops them."""
    write_imdb(tmp_path)
    skipped = KerasIndexed("imdb", tmp_path, num_words=12, skip_top=5, output="tokens", seq_len=10)()
    assert rows(skipped.train_x, skipped.train_y)[0] == [2, 2, 8, 2, 2, 2]
    dropped = KerasIndexed("imdb", tmp_path, num_words=12, skip_top=5, oov_char=None, output="tokens", seq_len=10)()
    assert rows(dropped.train_x, dropped.train_y)[0] == [8]
    assert rows(dropped.train_x, dropped.train_y)[1] == [5, 5, 6]


def test_imdb_maxlen_keeps_only_shorter_sequences(tmp_path):
    """Keras' remove_long_seq keeps len(start + words) < maxlen, in each split."""
    data = KerasIndexed("imdb", write_imdb(tmp_path), maxlen=4, output="tokens", seq_len=3)()
    assert sorted(data.train_y.tolist()) == [2, 4] and sorted(data.test_y.tolist()) == [0, 2]  # lengths 2-3
    with pytest.raises(ValueError, match="maxlen=2"):
        KerasIndexed("imdb", tmp_path, maxlen=2)()


def test_tokens_are_padded_and_truncated_pre():
    """pad_sequences defaults: zeros in front, the last seq_len ids kept."""
    assert pad_sequences([[1, 2, 3, 4, 5], [7], []], 3).tolist() == [[3, 4, 5], [0, 0, 7], [0, 0, 0]]
    data_x = pad_sequences([[1, 4, 8, 9999, 2, 23]], 4)
    assert data_x.tolist() == [[8, 9999, 2, 23]] and data_x.dtype == torch.int64


def test_multi_hot_marks_every_id_present(tmp_path):
    x = multi_hot([[1, 3, 3], [], [0, 4]], 5)
    assert x.dtype == torch.uint8 and x.tolist() == [[0, 1, 0, 1, 0], [0] * 5, [1, 0, 0, 0, 1]]
    data = KerasIndexed("imdb", write_imdb(tmp_path), num_words=30, output="multi_hot")()
    first = data.train_x[data.train_y.tolist().index(0)]
    assert first.shape == (30,) and first.nonzero().flatten().tolist() == [1, 2, 4, 8, 23]


def test_reuters_is_shuffled_whole_then_split(tmp_path):
    """reuters.npz (x, y): one shuffle of everything with RandomState(113), the last test_split is test."""
    seqs = [[i + 1, i + 2] for i in range(10)]
    np.savez(tmp_path / "reuters.npz", x=ragged(seqs), y=np.arange(10))
    data = KerasIndexed("reuters", tmp_path, num_words=100, output="tokens", seq_len=3, test_split=0.2)()
    (order,) = keras_order(10)
    assert data.train_y.tolist() == order[:8].tolist() and data.test_y.tolist() == order[8:].tolist()
    assert rows(data.train_x, data.train_y)[4] == [1, 8, 9]


def test_words_decode_with_the_word_index(tmp_path):
    write_imdb(tmp_path)
    (tmp_path / "imdb_word_index.json").write_text(json.dumps({"the": 1, "movie": 2, "good": 3}))
    source = KerasIndexed("imdb", tmp_path)
    assert source.words([0, 0, 1, 4, 5, 2, 6]) == "[START] the movie [OOV] good"


def test_missing_file_names_the_folders_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.keras/datasets copy
    with pytest.raises(DataNotFound, match="download=true") as e:
        KerasIndexed("reuters", tmp_path / "empty")()
    assert str(tmp_path / "empty" / "reuters.npz") in str(e.value)


def test_download_checks_the_hash_and_leaves_no_half_file(tmp_path, monkeypatch):
    """download=true fetches into data_dir (here from a file:// origin, never the network) and checks Keras' hash."""
    write_imdb(tmp_path / "origin")
    digest = hashlib.sha256((tmp_path / "origin" / "imdb.npz").read_bytes()).hexdigest()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(text, "KERAS_ORIGIN", (tmp_path / "origin").as_uri() + "/")
    monkeypatch.setitem(text.KERAS_HASHES, "imdb.npz", "0" * 64)
    with pytest.raises(DataNotFound, match="has hash"):
        KerasIndexed("imdb", tmp_path / "data", download=True)()
    assert not list((tmp_path / "data").iterdir())
    monkeypatch.setitem(text.KERAS_HASHES, "imdb.npz", digest)
    assert len(KerasIndexed("imdb", tmp_path / "data", download=True)().train_y) == len(TRAIN)
    assert (tmp_path / "data" / "imdb.npz").is_file()


class Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_a_pickled_payload_is_refused(tmp_path):
    """Only numpy array reconstruction is unpickled: an .npz holding another object is a ValueError, not run."""
    np.savez(tmp_path / "imdb.npz", x_train=ragged([[1]]), y_train=np.zeros(1))
    assert load_npz(tmp_path / "imdb.npz")["x_train"][0] == [1]
    bad = np.empty(1, dtype=object)
    bad[0] = Payload()
    np.savez(tmp_path / "bad.npz", x=bad)
    with pytest.raises(ValueError, match="getcwd"):
        load_npz(tmp_path / "bad.npz")


def test_tokenizer():
    assert tokenize("Don't <br />STOP—it's 'quoted' well_done 42!") == ["don't", "stop", "it's", "quoted", "well",
                                                                        "done", "42"]


def write_acl(root: Path) -> Path:
    files = {"train/pos/1.txt": "Great movie<br />great fun", "train/pos/0.txt": "movie", "train/neg/0.txt":
             "Bad movie. Bad!", "train/unsup/0.txt": "unlabelled", "test/pos/0.txt": "great zebra zebra zebra",
             "test/neg/0.txt": "bad"}
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content, encoding="utf-8")
    return root


def test_text_folder_vocabulary_comes_from_train_only(tmp_path):
    """Counts in train: movie 3, bad 2, great 2, fun 1: ids by frequency then alphabet from 2; zebra (test only,
    frequent there) is out of vocabulary (1); train/unsup (no test/unsup) is not a class."""
    source = TextFolder(str(write_acl(tmp_path)), num_words=5, seq_len=4, output="tokens")
    data = source()
    assert source.vocabulary == {"movie": 2, "bad": 3, "great": 4}
    assert data.train_y.tolist() == [0, 1, 1]  # neg/0, pos/0, pos/1
    assert data.train_x.tolist() == [[0, 3, 2, 3], [0, 0, 0, 2], [4, 2, 4, 1]]
    assert data.test_x.tolist() == [[0, 0, 0, 3], [4, 1, 1, 1]] and data.test_y.tolist() == [0, 1]
    assert source.words(data.test_x[1]) == "great [OOV] [OOV] [OOV]"
    hot = TextFolder(str(tmp_path), num_words=5, output="multi_hot")()
    assert hot.train_x.shape == (3, 5) and hot.train_x[2].tolist() == [0, 1, 1, 0, 1]


def test_vocabulary_ties_are_alphabetical():
    assert build_vocabulary([["b", "a", "c", "c"]], 10) == {"c": 2, "a": 3, "b": 4}


@pytest.mark.parametrize("content", [b"", b"caf\xe9 latin-1"])
def test_text_folder_refuses_empty_or_non_utf8_files(tmp_path, content):
    write_acl(tmp_path)
    (tmp_path / "train" / "neg" / "bad.txt").write_bytes(content)
    with pytest.raises(ValueError, match="bad.txt"):
        TextFolder(str(tmp_path), num_words=5, seq_len=4)()


def test_text_folder_without_folders_says_what_layout(tmp_path):
    with pytest.raises(DataNotFound, match="train/ and test/"):
        TextFolder(str(tmp_path), num_words=5, seq_len=4)()


@pytest.mark.parametrize("name,kind", [("imdb", "multi_hot"), ("imdb_seq", "tokens")])
def test_imdb_yamls_build(tmp_path, name, kind):
    write_imdb(tmp_path, TRAIN * 4, TEST, classes=2)
    cfg, dm = build([f"dataset={name}", f"paths.data_dir={tmp_path}", "dataset.source.download=false"])
    x = dm.splits["train"][0]
    assert dm.kind == kind and tuple(x.shape[1:]) == tuple(cfg.dataset.shape)
    assert dm.sizes() == {"train": 20 - int(20 * cfg.dataset.val_fraction), "val": int(20 * cfg.dataset.val_fraction),
                          "test": 3}
    assert x.dtype == (torch.uint8 if kind == "multi_hot" else torch.int64)
    assert dm.transform(x[:2], training=False).dtype == (torch.float32 if kind == "multi_hot" else torch.int64)


def test_reuters_yaml_builds(tmp_path):
    np.savez(tmp_path / "reuters.npz", x=ragged([[i % 7 + 1, 30] for i in range(50)]), y=np.arange(50) % 46)
    cfg, dm = build(["dataset=reuters", f"paths.data_dir={tmp_path}", "dataset.source.download=false"])
    assert cfg.dataset.num_classes == 46 and dm.splits["test"][0].shape == (10, 10000)


def test_aclimdb_yaml_builds(tmp_path):
    write_acl(tmp_path / "acl")
    _, dm = build(["dataset=aclimdb", f"dataset.source.root={tmp_path / 'acl'}", "dataset.val_fraction=0"])
    assert dm.splits["train"][0].shape == (3, 500) and dm.splits["test"][1].tolist() == [0, 1]
