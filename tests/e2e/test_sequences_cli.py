"""Text, sequences, tabular data and 1-D signals the way a user runs them: the installed `dlexp` trains, samples
and evaluates IMDB-format reviews, Boston K-fold, a character language model and an ECG GAN, and refuses bad
input in one line (exit 2) before a run directory is made."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from conftest import needs_ecg, run_dir_of, write_keras_text

# a tiny corpus with a rhythm a 1-epoch LSTM can learn: its alphabet is what dataset.vocab_size must say
CORPUS = "the cat sat on the mat. the dog sat on the log. " * 120


@pytest.fixture
def data(tmp_path):
    write_keras_text(tmp_path / "data")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    return corpus


def metrics(run_dir) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_imdb_dense_learns_the_word_that_decides(run_dlexp, data):
    """experiment=imdb_dense on Keras-format reviews whose label is carried by one word: test accuracy well above
    chance after a few epochs; the multi-hot binary classifier reports through dlexp eval's confusion matrix."""
    result = run_dlexp("train", "experiment=imdb_dense", "dataset.batch_size=32", "trainer.max_epochs=6",
                       "optimizer.lr=0.003", "logger=none")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = run_dir_of(result)
    assert metrics(run_dir)["test/acc"] > 0.8
    report = run_dlexp("eval", str(run_dir))
    assert report.returncode == 0, report.stderr[-2000:]
    assert (run_dir / "eval" / "confusion.md").read_text().count("\n") == 4  # header, rule, 2 classes


@pytest.mark.slow
def test_boston_kfold_runs_every_fold_and_reports_mean_and_std(run_dlexp, tmp_path):
    """experiment=boston_kfold: one command, four folds on the real MASS table; the summary gives the mean and std
    of val/mae; dlexp eval of a fold reports MAE/RMSE and draws the predicted-vs-true scatter."""
    result = run_dlexp("train", "experiment=boston_kfold", "trainer.max_epochs=30", "logger=none", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / result.stdout.strip().splitlines()[-1].removeprefix("multirun_dir: ")
    summary = (sweep / "summary.md").read_text()
    assert sorted(re.findall(r"dataset\.fold=(\d)", summary)) == ["0", "1", "2", "3"]
    spread = re.search(r"val/mae \(best of each run\): mean ([\d.]+), std ([\d.]+) over 4 completed runs", summary)
    assert spread and 1.0 < float(spread[1]) < 6.0 and float(spread[2]) > 0  # $1000s; predicting the mean: ~6.5
    report = run_dlexp("eval", str(sweep / "0"))
    assert report.returncode == 0, report.stderr[-2000:]
    scores = metrics(sweep / "0")
    assert scores["eval/rmse"] >= scores["eval/mae"] > 0 and (sweep / "0" / "eval" / "scatter.png").is_file()


@pytest.mark.slow
def test_char_lm_trains_samples_at_temperatures_and_evaluates(run_dlexp, data):
    """experiment=char_lm on a user's text file: bits per character fall below the uniform log2(V); dlexp sample
    continues a prompt greedily and at temperature 1; dlexp eval reports test bits per character."""
    vocab = len(set(CORPUS))
    result = run_dlexp("train", "experiment=char_lm", f"dataset.source.path={data}", f"dataset.vocab_size={vocab}",
                       "trainer.max_epochs=2", "logger=none", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = run_dir_of(result)
    assert metrics(run_dir)["test/bpc"] < math.log2(vocab) - 1
    sample = run_dlexp("sample", str(run_dir), "prompt=the cat", "temperature=0,1.0", "length=40")
    assert sample.returncode == 0, sample.stderr[-2000:]
    assert "temperature 0 (greedy)" in sample.stdout and "temperature 1" in sample.stdout
    greedy = (run_dir / "samples" / "text_t0_seed0.txt").read_text()
    assert greedy.startswith("the cat") and len(greedy.strip()) == len("the cat") + 40
    report = run_dlexp("eval", str(run_dir))
    assert report.returncode == 0, report.stderr[-2000:]
    assert metrics(run_dir)["eval/bpc"] == pytest.approx(metrics(run_dir)["eval/loss"] / math.log(2))


@needs_ecg
@pytest.mark.slow
def test_ecg_wgan_gp_writes_plots_samples_and_distances(run_dlexp):
    """model=ecg_wgan_gp on the real ECG beats: line-plot sample grids while training, dlexp sample writes a plot
    and a .npy of (n, 1, 256) signals, dlexp eval the MMD and nearest-neighbour distances with their floor."""
    result = run_dlexp("train", "model=ecg_wgan_gp", "dataset=ecg", "trainer.max_epochs=2",
                       "trainer.limit_train_batches=4", "callbacks.samples.every_n_epochs=1", "logger=none")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = run_dir_of(result)
    assert (run_dir / "samples" / "epoch_0001.png").is_file() and (run_dir / "samples" / "epoch_0002.png").is_file()
    sample = run_dlexp("sample", str(run_dir), "n=8")
    assert sample.returncode == 0, sample.stderr[-2000:]
    signals = np.load(run_dir / "samples" / "sample_grid_n8_seed0.npy")
    assert signals.shape == (8, 1, 256) and np.abs(signals).max() <= 1.0
    report = run_dlexp("eval", str(run_dir), "n_real=60", "n_fake=60")
    assert report.returncode == 0, report.stderr[-2000:]
    scores = metrics(run_dir)
    assert scores["eval/mmd_floor"] < scores["eval/mmd"]  # two training steps: far from real beats
    assert scores["eval/nn_fake_to_real"] > 0 and scores["eval/n_real"] == 60


@pytest.mark.parametrize("args,message", [
    (["model=lstm"], "dataset.kind"),                                    # a sequence model on images
    (["model=convnet", "dataset=text"], "dataset.kind"),                 # an image model on text
    (["model=boston_regressor", "dataset=boston_housing", "monitor=val/acc"], "monitor 'val/acc'"),
    (["model=embedding", "dataset=imdb_seq", "model.vocab_size=5000"], "dataset.vocab_size=10000"),
    (["model=char_lstm", "dataset=text", "dataset.vocab_size=50"], "dataset.vocab_size"),  # pydoc's text: 96
])
def test_bad_combinations_are_one_line_exit_2(run_dlexp, data, tmp_path, args, message):
    result = run_dlexp("train", *args, "logger=none")
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr
    assert not list((tmp_path / "outputs").glob("runs/*")), "a run directory was left behind"


@pytest.mark.parametrize("content,message", [(b"", "empty"), (b"caf\xe9 au lait", "UTF-8")])
def test_unreadable_text_files_are_refused_naming_the_file(run_dlexp, tmp_path, content, message):
    corpus = tmp_path / "bad.txt"
    corpus.write_bytes(content)
    result = run_dlexp("train", "model=char_lstm", "dataset=text", f"dataset.source.path={corpus}", "logger=none")
    assert result.returncode == 2 and message in result.stderr and str(corpus) in result.stderr, result.stderr
    assert not list((tmp_path / "outputs").glob("runs/*"))
