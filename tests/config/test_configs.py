"""Every YAML in conf/{model,dataset,optimizer,scheduler,regularizer,gan_loss} composes, builds as train.py does
and trains.

Files are discovered at collection time, so a new config file is covered without touching this module.
"""
from __future__ import annotations

import functools
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from hydra._internal.utils import _locate
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from dlexp.config.compose import compose, conf_dir
from dlexp.errors import ConfigError
from dlexp.engine.build import build

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec")  # Lightning's own deprecation, as train.py does

CONF = conf_dir()


def names(group: str) -> list[str]:
    """The choices of a config group: the stems of conf/<group>/*.yaml."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


# a small, fast dataset for every test whose subject is not the dataset
FAST = ["dataset=fake", "dataset.source.n_train=64", "dataset.source.n_test=16", "dataset.batch_size=8"]


class Recorder(pl.Callback):
    """Records, for every training batch, the step, the lr in use and the batch as the model sees it."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.lrs: list[float] = []
        self.epochs: list[int] = []
        self.batches: list[tuple[torch.dtype, tuple[int, ...]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.steps.append(trainer.global_step)
        self.epochs.append(trainer.current_epoch)
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
        self.batches.append((batch[0].dtype, tuple(batch[0].shape)))


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def unchanged(module: nn.Module, before: dict[str, torch.Tensor]) -> list[str]:
    """Names of parameters equal to their snapshot."""
    return [n for n, p in module.named_parameters() if torch.equal(p.detach(), before[n])]


def fit(parts: dict) -> Recorder:
    """trainer.fit with a Recorder attached; returns it."""
    recorder = Recorder()
    parts.trainer.callbacks.append(recorder)
    parts.trainer.fit(parts.task, datamodule=parts.datamodule)
    return recorder


def finite_metric(trainer: pl.Trainer, key: str) -> float:
    assert key in trainer.callback_metrics, f"{key} not logged: {sorted(trainer.callback_metrics)}"
    value = float(trainer.callback_metrics[key])
    assert math.isfinite(value), f"{key} = {value}"
    return value


# ---------------------------------------------------------------- models

CLASSIFICATION = "dlexp.tasks.classification.ClassificationTask"
ADVERSARIAL = "dlexp.tasks.adversarial.AdversarialTask"
AUTOENCODING = "dlexp.tasks.autoencoding.AutoencodingTask"


@functools.lru_cache(maxsize=None)
def model_info(model: str) -> dict:
    """What a model file composes to: its task's _target_, its generator's _target_ (GANs), n_critic, and the
    data kinds its net declares."""
    cfg = compose([f"model={model}"])
    generator = cfg.model.get("generator")
    net = _locate((generator or cfg.model)._target_)
    return {"task": cfg.task._target_, "generator": generator._target_ if generator is not None else None,
            "n_critic": int(cfg.task.get("n_critic", 1)), "input_kinds": net.input_kinds}


# image models here; the models of other data kinds: tests/config/test_sequence_configs.py
IMAGE_MODELS = [m for m in names("model") if "image" in model_info(m)["input_kinds"]]
CLASSIFIERS = [m for m in IMAGE_MODELS if model_info(m)["task"] == CLASSIFICATION]
GENERATIVE = [m for m in IMAGE_MODELS if model_info(m)["task"] != CLASSIFICATION]

SHAPES = {
    "1x28x28": [],
    "3x32x32": ["dataset.channels=3", "dataset.image_size=32", "dataset.num_classes=5"],
}


def bn_untouched(module: nn.Module) -> None:
    """Building (a dry run to size a head, a shape check) must not have touched batch-norm running statistics."""
    for bn in (m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        assert int(bn.num_batches_tracked) == 0
        assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))


def test_model_files_are_split_by_task():
    """Every model file composes to one of the three tasks, and both kinds exist (the lists below are not empty)."""
    assert CLASSIFIERS and GENERATIVE
    assert {model_info(m)["task"] for m in GENERATIVE} <= {ADVERSARIAL, AUTOENCODING}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("model", CLASSIFIERS)
def test_model_config_trains_one_step(make_cfg, model, shape):
    """Each model builds for 1x28x28 and 3x32x32 data with untouched BatchNorm statistics, gives (B, classes)
    logits and a finite loss, and every parameter moves in one optimizer step."""
    cfg = make_cfg(f"model={model}", *FAST, *SHAPES[shape])
    parts = build(cfg, model)
    dm, task = parts.datamodule, parts.task
    assert type(task.net).__name__ == cfg.model._target_.rsplit(".", 1)[1]
    x, y = next(iter(dm.train_dataloader()))
    x = dm.transform(x, training=True)
    assert x.shape == (8, cfg.dataset.channels, cfg.dataset.image_size, cfg.dataset.image_size)
    bn_untouched(task.net)
    optimizer = task.optimizer_factory(params=task.parameters())
    before = snapshot(task.net)
    task.train()
    logits = task(x)
    assert logits.shape == (8, cfg.dataset.num_classes)
    loss, correct, n = task.model_step((x, y))
    assert torch.isfinite(loss) and n == 8 and 0 <= int(correct) <= 8
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert not unchanged(task.net, before), "parameters that got no update (unused by forward?)"
    task.eval()
    assert torch.isfinite(task(x)).all()


# generative models: the digits as shipped, and DCGAN-style nets also at 3x32x32 and 3x64x64
# 96 images: 86 train after the validation split, 6 batches of 16 (wgan and wgan_gp need n_critic=5 for one G step)
SMALL_FAKE = ["dataset=fake", "dataset.source.n_train=96", "dataset.source.n_test=16", "dataset.channels=3"]
GEN_SHAPES = {
    "digits": ["dataset=digits"],
    "3x32x32": [*SMALL_FAKE, "dataset.image_size=32"],
    "3x64x64": [*SMALL_FAKE, "dataset.image_size=64"],
}


def generative_cases() -> list:
    cases = []
    for model in GENERATIVE:
        cases.append(pytest.param(model, "digits", id=f"{model}-digits"))
        if (model_info(model)["generator"] or "").endswith(".DCGANGenerator"):
            cases += [pytest.param(model, shape, id=f"{model}-{shape}") for shape in ("3x32x32", "3x64x64")]
    return cases


def short_name(target: str) -> str:
    return target.rsplit(".", 1)[1]


def critic_unchanged(task, before: dict[str, torch.Tensor]) -> list[str]:
    """D's parameters equal to their snapshot, less the score's bias under a Wasserstein loss: a constant added
    to every critic value cancels in E[D(x)] - E[D(G(z))] (and leaves the penalty's gradient alone), so its
    gradient is exactly zero."""
    D = task.net.discriminator
    exempt = {[n for n, _ in D.named_parameters()][-1]} if task.loss.wasserstein else set()
    assert all(n.endswith("bias") for n in exempt)
    return [n for n in unchanged(D, before) if n not in exempt]


@pytest.mark.parametrize("model, shape", generative_cases())
def test_generative_model_config_fits(make_cfg, model, shape):
    """Each GAN / autoencoder file builds its task with untouched BatchNorm statistics and fits a debug epoch
    (at least n_critic batches, so G steps too): finite losses, every parameter of G and D (or of the
    autoencoder, decoder included) moved, outputs of the data's shape and the end-of-run sample grid written."""
    info = model_info(model)
    batches = max(3, info["n_critic"])
    cfg = make_cfg(f"model={model}", *GEN_SHAPES[shape], "dataset.batch_size=16",
                   f"trainer.limit_train_batches={batches}")
    parts = build(cfg, model)
    task, trainer = parts.task, parts.trainer
    c, s = cfg.dataset.channels, cfg.dataset.image_size
    assert type(task).__name__ == short_name(info["task"])
    assert type(task.net).__name__ == short_name(cfg.model._target_)
    bn_untouched(task.net)

    if info["task"] == ADVERSARIAL:
        G, D = task.net.generator, task.net.discriminator
        assert type(G).__name__ == short_name(cfg.model.generator._target_)
        assert type(task.loss).__name__ == short_name(cfg.gan_loss._target_)
        before_g, before_d = snapshot(G), snapshot(D)
        recorder = fit(parts)
        finite_metric(trainer, "train/d_loss")
        finite_metric(trainer, "train/g_loss")
        assert not unchanged(G, before_g), "generator parameters that got no update"
        assert not critic_unchanged(task, before_d), "discriminator parameters that got no update"
        task.eval()
        labels = task.fixed_labels[:4] if task.net.num_classes else None
        images = task(task.fixed_noise[:4], labels)
        assert images.shape == (4, c, s, s) and float(images.abs().max()) <= 1  # tanh range, like the data
    else:
        decoder = snapshot(task.net.decoder)
        before = snapshot(task.net)
        recorder = fit(parts)
        finite_metric(trainer, "train/loss")
        finite_metric(trainer, "val/loss")
        if task.variational:
            assert finite_metric(trainer, "train/kl") >= 0
        else:
            assert "train/kl" not in trainer.callback_metrics
        assert not unchanged(task.net.decoder, decoder), "decoder parameters that got no update"
        assert not unchanged(task.net, before)
        task.eval()
        x = parts.datamodule.example_batch(4)[0]
        assert task(x).shape == x.shape
    assert recorder.batches[0] == (torch.float32, (16, c, s, s)) and len(recorder.batches) == batches
    assert (Path(cfg.run_dir) / "samples" / "epoch_0001.png").is_file()


@pytest.mark.parametrize("gan_loss", names("gan_loss"))
def test_gan_loss_config_trains_dcgan(make_cfg, gan_loss):
    """Each gan_loss file gives its loss class with its file's values to a DCGAN, which fits a debug epoch with
    finite D and G losses and d_real / d_fake, both nets moving, clipped critic weights for WGAN, a logged penalty
    for WGAN-GP and a Wasserstein estimate for both critics."""
    cfg = make_cfg("model=dcgan", f"gan_loss={gan_loss}", "dataset.batch_size=16")
    parts = build(cfg, "dcgan")
    task, trainer = parts.task, parts.trainer
    loss = task.loss
    assert type(loss).__name__ == short_name(cfg.gan_loss._target_)
    for key, value in OmegaConf.to_container(cfg.gan_loss, resolve=True).items():
        if not key.startswith("_"):
            assert getattr(loss, key) == value, key
    G, D = task.net.generator, task.net.discriminator
    before_g, before_d = snapshot(G), snapshot(D)
    fit(parts)
    finite_metric(trainer, "train/d_loss")
    finite_metric(trainer, "train/g_loss")
    assert not unchanged(G, before_g) and not critic_unchanged(task, before_d)
    if loss.clip_value:
        assert all(float(p.abs().max()) <= loss.clip_value for p in D.parameters())
    if loss.gp_weight:
        assert finite_metric(trainer, "train/gp") >= 0
    else:
        assert "train/gp" not in trainer.callback_metrics
    if loss.wasserstein:
        finite_metric(trainer, "train/wasserstein")
    else:
        assert "train/wasserstein" not in trainer.callback_metrics
    finite_metric(trainer, "train/d_real")  # what they report per loss: test_generative.py
    finite_metric(trainer, "train/d_fake")


# ---------------------------------------------------------------- datasets

def write_cifar(data_dir: Path, n: int = 8, n_test: int = 8) -> None:
    """cifar-10-batches-py: data_batch_1..5 and test_batch, b'data' (N, 3072) uint8 and b'labels'."""
    rng = np.random.default_rng(0)
    folder = data_dir / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        size = n_test if name == "test_batch" else n
        batch = {b"data": rng.integers(0, 256, (size, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, size).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)


def write_image_folder(root: Path, classes: int = 3, per_class: int = 12) -> None:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")


def dataset_overrides(name: str, tmp_path: Path, idx_dir: Path) -> list[str]:
    """Files and overrides a dataset needs to load offline from tmp_path."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    if name in ("mnist", "fashion_mnist"):
        return [f"paths.data_dir={idx_dir}", "dataset.source.download=false"]
    if name == "cifar10":
        write_cifar(data)
        return [f"paths.data_dir={data}", "dataset.source.download=false"]
    if name == "image_folder":
        write_image_folder(tmp_path / "images")
        return [f"paths.data_dir={data}", f"dataset.source.root={tmp_path / 'images'}", "dataset.num_classes=3",
                "dataset.image_size=16"]
    if name == "fake":
        return FAST[1:] + [f"paths.data_dir={data}"]
    return [f"paths.data_dir={data}"]  # digits and anything new that needs no files


def dataset_model(name: str) -> str:
    """The model a dataset is checked with: softmax regression on labelled data, else (a single class, like the
    3-D points of the PCA example) the linear autoencoder."""
    node = OmegaConf.load(CONF / "dataset" / f"{name}.yaml")
    classes = None if OmegaConf.is_missing(node, "num_classes") else node.get("num_classes")
    return "linear_ae" if classes is not None and int(classes) < 2 else "softmax"


def test_points3d_is_checked_with_the_linear_autoencoder():
    """The per-dataset test below runs points3d (one class, nothing to classify) through model=linear_ae."""
    assert dataset_model("points3d") == "linear_ae" and dataset_model("digits") == "softmax"


IMAGE_DATASETS = [d for d in names("dataset")
                  if OmegaConf.load(CONF / "dataset" / f"{d}.yaml")._target_.endswith(".ImageDataModule")]


@pytest.mark.parametrize("dataset", IMAGE_DATASETS)  # other kinds: tests/data/
def test_dataset_config_fits(make_cfg, tmp_path, idx_dir, dataset):
    """Each dataset loads offline with the declared shape (uint8 pixels, or float values such as the 3-D points),
    feeds normalised float batches and trains one debug epoch with finite losses; the test split evaluates too."""
    model = dataset_model(dataset)
    cfg = make_cfg(f"dataset={dataset}", f"model={model}", "dataset.batch_size=8",
                   *dataset_overrides(dataset, tmp_path, idx_dir))
    parts = build(cfg, model)
    dm, task, trainer = parts.datamodule, parts.task, parts.trainer
    c, s = cfg.dataset.channels, cfg.dataset.image_size
    x_train = dm.splits["train"][0]
    assert x_train.shape[1:] == (c, s, s) and x_train.dtype in (torch.uint8, torch.float32)
    scale = 255.0 if x_train.dtype == torch.uint8 else 1.0  # float sources are taken as they are
    expected = (x_train[:8].float() / scale - dm.mean) / dm.std
    torch.testing.assert_close(dm.transform(x_train[:8], training=False), expected)
    sizes = dm.sizes()
    assert sizes["train"] > 0 and sizes["test"] > 0
    assert sizes["val"] == int((sizes["train"] + sizes["val"]) * cfg.dataset.val_fraction)
    before = snapshot(task.net)
    recorder = fit(parts)
    assert recorder.batches[0] == (torch.float32, (8, c, s, s))
    assert trainer.global_step == 3
    finite_metric(trainer, "train/loss")
    finite_metric(trainer, "val/loss")
    assert not unchanged(task.net, before)
    test = trainer.test(task, datamodule=dm, verbose=False)[0]
    assert math.isfinite(test["test/loss"])
    if model == "softmax":
        assert 0 <= test["test/acc"] <= 1
    elif s < 4:  # not images: the autoencoder's sample callback draws no grid of 1x1 "pictures"
        assert not list((Path(cfg.run_dir) / "samples").glob("*.png"))


def test_image_folder_without_root_is_refused(make_cfg):
    """dataset=image_folder leaves root and num_classes at ???: instantiating says which key is missing."""
    cfg = make_cfg("dataset=image_folder")
    with pytest.raises(ConfigError, match=r"dataset\.source\.root"):
        build(cfg, "convnet")


# ---------------------------------------------------------------- optimizers

@pytest.mark.parametrize("optimizer", names("optimizer"))
def test_optimizer_config_descends(make_cfg, optimizer):
    """Each optimizer is the class its file names with its file's hyperparameters, and ten steps on one batch
    lower a finite loss and move the weights."""
    cfg = make_cfg(f"optimizer={optimizer}", "model=softmax", *FAST)
    parts = build(cfg, "softmax")
    dm, task = parts.datamodule, parts.task
    opt = task.optimizer_factory(params=task.parameters())
    assert type(opt).__name__ == cfg.optimizer._target_.rsplit(".", 1)[1]
    group = opt.param_groups[0]
    for key, value in OmegaConf.to_container(cfg.optimizer, resolve=True).items():
        if not key.startswith("_"):
            assert group[key] == (tuple(value) if isinstance(value, list) else value), key
    x, y = next(iter(dm.train_dataloader()))
    x = dm.transform(x, training=True)
    before = snapshot(task.net)
    losses = []
    for _ in range(10):
        loss, _, _ = task.model_step((x, y))
        assert torch.isfinite(loss)
        losses.append(float(loss))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0]
    assert not unchanged(task.net, before)


# ---------------------------------------------------------------- schedulers

SCHEDULE_RUN = ["model=softmax", *FAST, "trainer.max_epochs=2", "trainer.limit_train_batches=4",
                "trainer.limit_val_batches=1"]
TOTAL, PER_EPOCH = 8, 4  # optimizer steps in SCHEDULE_RUN, and per epoch


def onecycle_reference(lr: float, max_lr: float, pct_start: float, total: int) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total, pct_start=pct_start)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


# per scheduler: overrides making the schedule visible in a few steps, and lr expected at step s
SCHEDULES = {
    "none": ([], lambda lr, s, c: lr),
    "exponential": (["scheduler.decay_rate=0.5", "scheduler.decay_steps=3"],
                    lambda lr, s, c: lr * c.decay_rate ** (s / c.decay_steps)),
    "step": (["scheduler.step_size=1", "scheduler.gamma=0.5"],
             lambda lr, s, c: lr * c.gamma ** (s // (c.step_size * PER_EPOCH))),
    "cosine": (["scheduler.min_factor=0.1"],
               lambda lr, s, c: lr * (c.min_factor + (1 - c.min_factor) * 0.5 * (1 + math.cos(math.pi * s / TOTAL)))),
    "onecycle": ([], lambda lr, s, c: onecycle_reference(lr, c.max_lr, c.pct_start, TOTAL)[s]),
    # val/acc_best never decreases, so in mode=min it never improves: with patience 0 the lr halves after
    # every epoch but the first (the first sets the best)
    "plateau": (["trainer.max_epochs=3", "scheduler.monitor=val/acc_best", "scheduler.mode=min",
                 "scheduler.patience=0", "scheduler.factor=0.5"],
                lambda lr, s, c: lr * c.factor ** max(0, s // PER_EPOCH - 1)),
}


@pytest.mark.parametrize("scheduler", names("scheduler"))
def test_scheduler_config_follows_schedule(make_cfg, scheduler):
    """Under trainer.fit the lr at every optimizer step is the schedule's formula (new files without a
    formula here must at least train with a positive, finite lr)."""
    extra, formula = SCHEDULES.get(scheduler, ([], None))
    cfg = make_cfg(f"scheduler={scheduler}", *SCHEDULE_RUN, *extra)
    parts = build(cfg, "softmax")
    recorder = fit(parts)
    finite_metric(parts.trainer, "train/loss")
    lr0 = cfg.optimizer.lr
    assert recorder.steps == list(range(len(recorder.steps))) and len(recorder.steps) >= TOTAL
    assert all(0 < lr < math.inf for lr in recorder.lrs)
    if formula is None:
        return
    expected = [formula(lr0, s, cfg.scheduler) for s in recorder.steps]
    assert recorder.lrs == pytest.approx(expected, rel=1e-6, abs=1e-12)
    if scheduler != "none":
        assert len(set(np.round(recorder.lrs, 12))) > 1  # the schedule did change the lr
    if scheduler == "onecycle":
        assert max(recorder.lrs) == pytest.approx(cfg.scheduler.max_lr) and cfg.scheduler.max_lr == lr0


WARMUP = [n for n in names("scheduler") if "warmup_steps" in OmegaConf.load(CONF / "scheduler" / f"{n}.yaml")]


@pytest.mark.parametrize("scheduler", WARMUP)
def test_scheduler_warmup_is_linear(make_cfg, scheduler):
    """warmup_steps=W multiplies the schedule by min(1, (s + 1) / W)."""
    extra, formula = SCHEDULES.get(scheduler, ([], lambda lr, s, c: lr))
    cfg = make_cfg(f"scheduler={scheduler}", *SCHEDULE_RUN, *extra, "scheduler.warmup_steps=4")
    parts = build(cfg, "softmax")
    recorder = fit(parts)
    lr0 = cfg.optimizer.lr
    expected = [min(1.0, (s + 1) / 4) * formula(lr0, s, cfg.scheduler) for s in recorder.steps]
    assert recorder.lrs == pytest.approx(expected, rel=1e-6)
    assert recorder.lrs[0] == pytest.approx(expected[0]) and recorder.lrs[0] < recorder.lrs[3]


def test_plateau_defaults_reduce_after_patience(make_cfg):
    """plateau as shipped: monitors val/loss (which the task logs: a fit does not fail), and multiplies the lr by
    factor once val/loss has not improved for more than patience epochs."""
    cfg = make_cfg("scheduler=plateau", *SCHEDULE_RUN, "trainer.max_epochs=1")
    parts = build(cfg, "softmax")
    fit(parts)
    finite_metric(parts.trainer, cfg.scheduler.monitor)
    assert cfg.scheduler.monitor == "val/loss" and cfg.scheduler.mode == "min"
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.optimizer.lr)
    spec = parts.task.scheduler_factory(opt, TOTAL, PER_EPOCH)
    assert spec["interval"] == "epoch" and spec["monitor"] == "val/loss"
    lrs = []
    for _ in range(cfg.scheduler.patience + 2):
        spec["scheduler"].step(1.0)  # val/loss stuck at 1.0
        lrs.append(opt.param_groups[0]["lr"])
    lr0, patience = cfg.optimizer.lr, cfg.scheduler.patience
    assert lrs[:patience + 1] == [lr0] * (patience + 1)
    assert lrs[patience + 1] == pytest.approx(lr0 * cfg.scheduler.factor)


# ---------------------------------------------------------------- regularizers

REG_MODEL = ["model=mlp", "model.hidden=[32,16]"]


@pytest.mark.parametrize("regularizer", names("regularizer"))
def test_regularizer_config_trains(make_cfg, regularizer):
    """Each regularizer reaches the task as configured: the training loss is cross-entropy (with its label
    smoothing) plus l1*sum|w| + l2*sum w^2 over weights, dropout sits in the model, max-norm holds after
    training, and a debug fit gives finite losses."""
    cfg = make_cfg(f"regularizer={regularizer}", *REG_MODEL, *FAST)
    parts = build(cfg, "mlp")
    dm, task, trainer = parts.datamodule, parts.task, parts.trainer
    reg = task.reg
    for key in ("l1", "l2", "max_norm", "dropout", "label_smoothing"):
        assert getattr(reg, key) == cfg.regularizer[key], key
    rates = [m.p for m in task.net.modules() if isinstance(m, nn.Dropout)]
    assert rates == ([reg.dropout] * 2 if reg.dropout > 0 else [])

    # the loss training_step returns (no trainer attached: its self.log calls are no-ops)
    x, y = next(iter(dm.train_dataloader()))
    x = dm.transform(x, training=True)
    task.eval()  # dropout off, so the reference below sees the same logits
    loss = task.training_step((x, y), 0)
    weights = [p for p in task.net.parameters() if p.ndim >= 2]
    assert len(weights) == 3
    expected = F.cross_entropy(task.net(x), y, label_smoothing=reg.label_smoothing)
    expected = expected + sum(reg.l1 * w.abs().sum() + reg.l2 * w.pow(2).sum() for w in weights)
    torch.testing.assert_close(loss, expected)
    task.train()

    norms_before = max(float(w.norm(dim=1).max()) for w in weights)
    before = snapshot(task.net)
    fit(parts)
    finite_metric(trainer, "train/loss")
    assert not unchanged(task.net, before)
    if reg.has_penalty:
        assert finite_metric(trainer, "train/reg_loss") > 0
    else:
        assert "train/reg_loss" not in trainer.callback_metrics
    if reg.max_norm is not None:
        assert norms_before > reg.max_norm  # He init exceeds it: the constraint had work to do
        for w in (p for p in task.net.parameters() if p.ndim >= 2):
            assert float(w.norm(dim=1).max()) <= reg.max_norm * (1 + 1e-5)


def test_dropout_regularizer_needs_a_model_with_dropout(make_cfg):
    """regularizer=dropout on a model without a dropout option is refused before training."""
    cfg = make_cfg("regularizer=dropout", "model=resnet", *FAST)
    with pytest.raises(ConfigError, match="resnet"):
        build(cfg, "resnet")
