"""The model files for text, sequences, tables and signals: each composes, selects its task and monitored metric,
builds its net from the dataset's shape keys and passes its task's batch check; a model is refused on data of
another kind before anything runs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from dlexp.config.checks import _check_input_kind, _check_monitor, check_overrides
from dlexp.config.compose import compose, conf_dir
from dlexp.engine.instantiate import net_from_config
from dlexp.errors import ConfigError
from dlexp.tasks.classification import (
    ClassificationTask,  # imported here: Lightning's import is slow
)

B = 4
# kind -> (dataset keys the model files read, a batch (x, y))
TOKENS = ({"kind": "tokens", "vocab_size": 40, "shape": [24], "num_classes": 2},
          lambda: (torch.randint(0, 40, (B, 24)), torch.tensor([0, 1, 1, 0])))
MULTI_HOT = ({"kind": "multi_hot", "vocab_size": 0, "shape": [30], "num_classes": 2},
             lambda: (torch.randint(0, 2, (B, 30)).float(), torch.tensor([0, 1, 1, 0])))
TOPICS = ({"kind": "multi_hot", "vocab_size": 0, "shape": [30], "num_classes": 46},
          lambda: (torch.randint(0, 2, (B, 30)).float(), torch.tensor([0, 45, 3, 7])))
TABULAR = ({"kind": "tabular", "vocab_size": 0, "shape": [13], "num_classes": 0},
           lambda: (torch.randn(B, 13), torch.randn(B)))
CHARS = ({"kind": "chars", "vocab_size": 20, "shape": [16], "num_classes": 0},
         lambda: (torch.randint(0, 20, (B, 16)), torch.randint(0, 20, (B, 16))))
SIGNAL = ({"kind": "signal", "vocab_size": 0, "shape": [1, 187], "num_classes": 0},
          lambda: (torch.rand(B, 1, 187) * 2 - 1, torch.zeros(B, dtype=torch.long)))

CLASSIFICATION = f"{ClassificationTask.__module__}.{ClassificationTask.__name__}"
CASES = {
    "imdb_dense": (MULTI_HOT, CLASSIFICATION, "val/acc", "max"),
    "reuters_dense": (TOPICS, CLASSIFICATION, "val/acc", "max"),
    "reuters_bottleneck": (TOPICS, CLASSIFICATION, "val/acc", "max"),
    "embedding": (TOKENS, CLASSIFICATION, "val/acc", "max"),
    "simple_rnn": (TOKENS, CLASSIFICATION, "val/acc", "max"),
    "lstm": (TOKENS, CLASSIFICATION, "val/acc", "max"),
    "gru": (TOKENS, CLASSIFICATION, "val/acc", "max"),
    "bidirectional_lstm": (TOKENS, CLASSIFICATION, "val/acc", "max"),
    "conv1d": (TOKENS, CLASSIFICATION, "val/acc", "max"),
    "conv1d_gru": (TOKENS, CLASSIFICATION, "val/acc", "max"),
    "boston_regressor": (TABULAR, "dlexp.tasks.regression.RegressionTask", "val/mae", "min"),
    "char_lstm": (CHARS, "dlexp.tasks.language_model.LanguageModelTask", "val/loss", "min"),
    "ecg_gan": (SIGNAL, "dlexp.tasks.adversarial.AdversarialTask", None, "min"),
    "ecg_wgan": (SIGNAL, "dlexp.tasks.adversarial.AdversarialTask", None, "min"),
    "ecg_wgan_gp": (SIGNAL, "dlexp.tasks.adversarial.AdversarialTask", None, "min"),
}


def with_dataset(model: str, keys: dict):
    """The model file composed as `dlexp train model=...` does, its dataset node replaced by an array dataset's."""
    cfg = compose([f"model={model}", "callbacks=none", "logger=none"])
    cfg.dataset = OmegaConf.create({"_target_": "dlexp.data.arrays.ArrayDataModule", "name": "toy", **keys,
                                    "batch_size": 8})
    return cfg


def build_task(cfg):
    """Net and task as the engine builds them (dlexp/engine/build.py), without a datamodule."""
    net = net_from_config(OmegaConf.to_container(cfg.model, resolve=True))
    extra = {"loss": instantiate(cfg.gan_loss)} if cfg.get("gan_loss") is not None else {}
    make_task = instantiate(cfg.task, _partial_=True)
    return make_task(net=net, optimizer=instantiate(cfg.optimizer), scheduler=None,
                     regularization=instantiate(cfg.regularizer), on_nan="stop", **extra)


@pytest.mark.parametrize("model", list(CASES))
def test_model_file_builds_for_its_kind_of_data(model):
    (keys, batch), task_target, monitor, mode = CASES[model]
    cfg = with_dataset(model, keys)
    assert cfg.task._target_ == task_target and cfg.monitor == monitor and cfg.monitor_mode == mode
    _check_input_kind(cfg)
    _check_monitor(cfg)
    task = build_task(cfg)
    x, y = batch()
    with torch.no_grad():
        task.eval().check_batch(x, y)


def test_first_comment_line_describes_each_file():
    for name in [*CASES, "../task/regression", "../task/language_model", "../task/adversarial_signal"]:
        lines = (conf_dir() / "model" / f"{name}.yaml").read_text().splitlines()
        first = next(line for line in lines if not line.startswith("# @package"))
        assert first.startswith("# ") and len(first) > 20, name


def test_signal_gan_files_use_the_notes_losses_optimizers_and_critics():
    picks = {m: with_dataset(m, SIGNAL[0]) for m in ("ecg_gan", "ecg_wgan", "ecg_wgan_gp")}
    assert [picks[m].gan_loss._target_.rsplit(".", 1)[1] for m in picks] == ["Minimax", "Wasserstein", "WassersteinGP"]
    assert [picks[m].optimizer._target_.rsplit(".", 1)[1] for m in picks] == ["Adam", "RMSprop", "Adam"]
    assert [picks[m].optimizer.lr for m in picks] == [2e-4, 5e-5, 1e-4]
    assert [picks[m].task.n_critic for m in picks] == [1, 5, 5]
    assert [picks[m].model.discriminator.batch_norm for m in picks] == [True, True, False]
    # signal datasets are in [-1, 1] already: the signal task turns the image task's pixel normalisation off
    for model in picks:
        dataset = compose([f"model={model}", "dataset=ecg"]).dataset
        assert dataset.mean is None and dataset.std is None


def test_bidirectional_lstm_is_the_lstm_file_with_both_directions():
    lstm, bi = (with_dataset(m, TOKENS[0]) for m in ("lstm", "bidirectional_lstm"))
    assert bi.model.bidirectional and not lstm.model.bidirectional
    assert {k: v for k, v in bi.model.items() if k != "bidirectional"} == \
        {k: v for k, v in lstm.model.items() if k != "bidirectional"}


def test_sequence_model_on_image_data_is_refused_naming_dataset_kind():
    """The default dataset (digits) has no kind key: its datamodule class declares image."""
    with pytest.raises(ConfigError, match=r"RecurrentClassifier takes tokens data.*image data \(dataset.kind\)"):
        check_overrides(["model=lstm"])
    with pytest.raises(ConfigError, match="dataset.kind"):
        check_overrides(["model=ecg_wgan_gp"])


def test_image_model_on_signal_data_is_refused():
    cfg = with_dataset("convnet", SIGNAL[0])
    with pytest.raises(ConfigError, match=r"ConvNet takes image data; dataset 'toy' is signal data \(dataset.kind\)"):
        _check_input_kind(cfg)


@pytest.mark.skipif(not (Path(conf_dir()) / "dataset" / "ecg.yaml").is_file(), reason="conf/dataset/ecg.yaml not yet")
def test_image_model_on_the_ecg_dataset_is_refused():
    with pytest.raises(ConfigError, match="signal data"):
        check_overrides(["dataset=ecg", "model=convnet"])
