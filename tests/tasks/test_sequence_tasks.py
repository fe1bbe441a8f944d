"""Binary classification with one logit, RegressionTask, LanguageModelTask and the 1-D GAN, trained on small
in-memory arrays (ArrayDataModule) with a bare Lightning trainer on the CPU."""
from __future__ import annotations

import functools
import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from dlexp.data.arrays import ArrayDataModule
from dlexp.data.sources import SourceData
from dlexp.losses.gan import Minimax, WassersteinGP
from dlexp.losses.regularizers import Regularization
from dlexp.nets.gans import GAN
from dlexp.nets.recurrent import CharLSTM
from dlexp.nets.sequences import DenseNet
from dlexp.nets.signal_gans import SignalCritic, SignalGenerator
from dlexp.tasks.adversarial import AdversarialTask
from dlexp.tasks.classification import ClassificationTask
from dlexp.tasks.language_model import LanguageModelTask
from dlexp.tasks.regression import RegressionTask

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec")


@pytest.fixture(autouse=True)
def seed():
    pl.seed_everything(0, verbose=False)


def arrays(x: torch.Tensor, y: torch.Tensor, kind: str, num_classes: int, vocab_size: int = 0,
           standardize: bool = False, batch_size: int = 32) -> ArrayDataModule:
    """A datamodule over x, y: the last quarter is the test set, 20% of the rest validation."""
    n = len(x) * 3 // 4
    data = SourceData(x[:n], y[:n], x[n:], y[n:])
    return ArrayDataModule(lambda: data, "toy", kind, list(x.shape[1:]), num_classes, vocab_size=vocab_size,
                           standardize=standardize, batch_size=batch_size, val_fraction=0.2)


def trainer(epochs: int) -> pl.Trainer:
    return pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu")


def metric(trainer: pl.Trainer, name: str) -> float:
    return float(trainer.callback_metrics[name])


def adam(lr: float) -> functools.partial:
    return functools.partial(torch.optim.Adam, lr=lr)


def validate_then_fit(task: pl.LightningModule, dm: ArrayDataModule, epochs: int, key: str) -> tuple[float, float]:
    """(val metric before training, after `epochs` epochs)."""
    t = trainer(epochs)
    before = metric(t, key) if t.validate(task, datamodule=dm, verbose=False) else math.nan
    t.fit(task, datamodule=dm)
    return before, metric(t, key)


# ---------------------------------------------------------------- binary classification: one logit

def multi_hot_problem(n: int = 512, features: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-hot rows labelled by a linear rule on three words: separable."""
    x = torch.randint(0, 2, (n, features)).float()
    return x, (x[:, 0] + x[:, 1] - x[:, 2] > 0).long()


def test_binary_task_with_one_logit_learns_a_separable_problem():
    x, y = multi_hot_problem()
    dm = arrays(x, y, "multi_hot", num_classes=2)
    task = ClassificationTask(DenseNet(20, [16, 16], 1), adam(0.01))
    before, after = validate_then_fit(task, dm, 8, "val/acc")
    assert after >= 0.95 and after > before + 0.2
    t = trainer(1)
    t.test(task, datamodule=dm, verbose=False)
    assert metric(t, "test/acc") >= 0.95
    assert task.val_acc_best >= after


def test_binary_step_is_bce_with_logits_and_smoothing_moves_targets_towards_half():
    task = ClassificationTask(DenseNet(3, [], 1), adam(0.01))
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 1, 0, 1, 0])
    logit = task.net(x).squeeze(1)
    loss, correct, n = task.model_step((x, y))
    assert torch.allclose(loss, F.binary_cross_entropy_with_logits(logit, y.float())) and n == 6
    assert int(correct) == int(((logit > 0).long() == y).sum())
    smoothed, _, _ = task.model_step((x, y), smoothing=0.2)
    assert torch.allclose(smoothed, F.binary_cross_entropy_with_logits(logit, y.float() * 0.8 + 0.1))


def test_k_way_step_is_unchanged_cross_entropy():
    task = ClassificationTask(DenseNet(3, [], 2), adam(0.01))
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 1, 0, 1, 0])
    loss, correct, _ = task.model_step((x, y), smoothing=0.1)
    logits = task.net(x)
    assert torch.allclose(loss, F.cross_entropy(logits, y, label_smoothing=0.1))
    assert int(correct) == int((logits.argmax(1) == y).sum())


def test_check_batch_takes_one_logit_for_0_1_labels_only():
    task = ClassificationTask(DenseNet(3, [], 1), adam(0.01))
    task.check_batch(torch.randn(4, 3), torch.tensor([0, 1, 1, 0]))
    with pytest.raises(ValueError, match="labels up to 2"):
        task.check_batch(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))


# ---------------------------------------------------------------- regression

def test_regression_lowers_val_mae_on_a_linear_target():
    """y = w.x + noise on tabular rows (standardised with the training split): val/mae falls several times over;
    val/mae_best is the lowest val/mae; the checkpoint keeps it."""
    x = torch.randn(480, 5) * torch.tensor([1.0, 10.0, 0.1, 3.0, 1.0]) + 5
    y = (x - 5) @ torch.tensor([1.0, 0.2, 10.0, -0.5, 2.0]) + 0.01 * torch.randn(480)
    dm = arrays(x, y, "tabular", num_classes=0, standardize=True)
    task = RegressionTask(DenseNet(5, [16], 1), adam(0.03))
    t = trainer(15)
    t.validate(task, datamodule=dm, verbose=False)
    before = metric(t, "val/mae")
    t.fit(task, datamodule=dm)
    after = metric(t, "val/mae")
    assert after < before / 4
    assert metric(t, "val/mae_best") == pytest.approx(task.val_best) and task.val_best <= after + 1e-6
    assert metric(t, "val/loss") >= 0 and {"train/loss", "train/mae"} <= set(t.callback_metrics)
    checkpoint: dict = {}
    task.on_save_checkpoint(checkpoint)
    fresh = RegressionTask(DenseNet(5, [16], 1), adam(0.03))
    fresh.on_load_checkpoint(checkpoint)
    assert fresh.val_best == task.val_best


def test_regression_check_batch_needs_float_targets_and_one_output():
    task = RegressionTask(DenseNet(5, [], 1), adam(0.01))
    task.check_batch(torch.randn(4, 5), torch.randn(4))
    with pytest.raises(ValueError, match="float targets"):
        task.check_batch(torch.randn(4, 5), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="num_outputs"):
        RegressionTask(DenseNet(5, [], 3), adam(0.01)).check_batch(torch.randn(4, 5), torch.randn(4))
    with pytest.raises(ValueError, match="label_smoothing"):
        RegressionTask(DenseNet(5, [], 1), adam(0.01), regularization=Regularization(label_smoothing=0.1))


def test_regression_step_is_mse_with_mae():
    task = RegressionTask(DenseNet(2, [], 1), adam(0.01))
    x, y = torch.randn(8, 2), torch.randn(8)
    metrics, n = task.step_metrics((x, y))
    predicted = task.net(x).squeeze(1)
    assert n == 8 and torch.allclose(metrics["loss"], ((predicted - y) ** 2).mean())
    assert torch.allclose(metrics["mae"], (predicted - y).abs().mean())


# ---------------------------------------------------------------- language model

def char_windows(text: str, length: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Every window of `length` characters and the same window one character on: (N, T) ids, (N, T), alphabet size."""
    alphabet = sorted(set(text))
    ids = torch.tensor([alphabet.index(c) for c in text])
    starts = torch.arange(len(ids) - length)
    x = ids[starts[:, None] + torch.arange(length)]
    return x, ids[starts[:, None] + torch.arange(1, length + 1)], len(alphabet)


def test_language_model_lowers_bits_per_character_on_a_repetitive_string():
    x, y, vocab = char_windows("the cat sat on the mat. " * 12, 12)
    perm = torch.randperm(len(x))
    dm = arrays(x[perm], y[perm], "chars", num_classes=0, vocab_size=vocab)
    task = LanguageModelTask(CharLSTM(vocab, 8, 32), adam(0.02))
    before, after = validate_then_fit(task, dm, 6, "val/bpc")
    assert before > 2.5 and after < 1.0  # from about log2(13) bits towards the string's few
    t = task.trainer
    assert metric(t, "val/bpc") == pytest.approx(metric(t, "val/loss") / math.log(2), rel=1e-5)
    assert metric(t, "train/bpc") == pytest.approx(metric(t, "train/loss") / math.log(2), rel=1e-5)
    assert metric(t, "val/loss_best") == pytest.approx(task.val_best)
    prompt = x[0]
    assert task.generate(prompt, 5).shape == (5,)


def test_language_model_check_batch_wants_logits_per_position():
    task = LanguageModelTask(CharLSTM(10, 4, 8), adam(0.01))
    x = torch.randint(0, 10, (3, 7))
    task.check_batch(x, torch.randint(0, 10, (3, 7)))
    with pytest.raises(ValueError, match="vocab_size"):
        task.check_batch(x, torch.randint(0, 10, (3, 6)))
    with pytest.raises(ValueError, match="positions"):
        LanguageModelTask(DenseNet(7, [], 10), adam(0.01)).check_batch(x, torch.randint(0, 10, (3, 7)))


# ---------------------------------------------------------------- 1-D GAN on signals

@pytest.mark.parametrize("loss", [Minimax(), WassersteinGP()], ids=["minimax", "wasserstein_gp"])
def test_signal_gan_trains_in_the_adversarial_task(loss):
    """The ECG nets in AdversarialTask (n_critic 2) on noisy sine beats: finite losses, G and D both move."""
    phase = torch.linspace(0, 2 * math.pi, 96)
    x = (torch.sin(phase * torch.rand(128, 1, 1) * 3) * 0.8 + 0.05 * torch.randn(128, 1, 96)).clamp(-1, 1)
    dm = arrays(x, torch.zeros(128, dtype=torch.long), "signal", num_classes=0, batch_size=16)
    gan = GAN(SignalGenerator(8, 1, 96, width=4), SignalCritic(1, 96, width=4))
    task = AdversarialTask(gan, adam(1e-3), loss, n_critic=2, n_samples=4)
    task.check_batch(x[:4], torch.zeros(4, dtype=torch.long))
    g_before = [p.detach().clone() for p in gan.generator.parameters()]
    d_before = [p.detach().clone() for p in gan.discriminator.parameters()]
    t = pl.Trainer(max_epochs=1, limit_train_batches=4, limit_val_batches=0, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    t.fit(task, datamodule=dm)
    assert math.isfinite(metric(t, "train/d_loss")) and math.isfinite(metric(t, "train/g_loss"))
    assert all(not torch.equal(a, b) for a, b in zip(g_before, gan.generator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d_before, gan.discriminator.parameters()))
    assert task.sample_images()[""].shape == (4, 1, 96)
