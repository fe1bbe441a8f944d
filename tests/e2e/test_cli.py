"""End-to-end: the installed `dlexp` command, run the way a user runs it."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import dlexp_bin, needs_fashion, run_dir_of

from dlexp.commands.train import gpu_present
from dlexp.config.compose import conf_dir

RUN_DIR_RE = re.compile(r"outputs/runs/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_[0-9a-f]{6}$")


def test_help_and_list_import_no_torch():
    """--help, train --help and list answer without importing torch, Lightning or Hydra."""
    code = (
        "import sys, io, contextlib\n"
        "from dlexp.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    codes = [main(['--help']), main(['train', '--help']), main(['list'])]\n"
        "print(codes, sorted(m for m in ('torch', 'pytorch_lightning', 'hydra') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[0, 0, 0] []"


def test_help_texts():
    """dlexp --help names the subcommands; train --help lists the groups with their defaults."""
    top = subprocess.run([dlexp_bin(), "--help"], capture_output=True, text=True)
    assert top.returncode == 0 and "train" in top.stdout and "list" in top.stdout
    train = subprocess.run([dlexp_bin(), "train", "--help"], capture_output=True, text=True)
    assert train.returncode == 0
    assert re.search(r"model\s+convnet\s+.*resnet", train.stdout)
    assert re.search(r"dataset\s+digits\s+.*fashion_mnist", train.stdout)


def test_list_every_choice_has_a_description():
    """dlexp list shows every config file of every group with its one-line description."""
    out = subprocess.run([dlexp_bin(), "list"], capture_output=True, text=True, check=True).stdout
    for group in ("model", "dataset", "optimizer", "scheduler", "regularizer", "trainer", "callbacks", "logger"):
        assert f"{group}:" in out
        for path in sorted((conf_dir() / group).glob("*.yaml")):
            assert re.search(rf"^  {path.stem}\s+\S.+$", out, re.M), f"{group}/{path.name} has no description"
    one = subprocess.run([dlexp_bin(), "list", "optimizer"], capture_output=True, text=True, check=True).stdout
    assert "nesterov" in one and "model:" not in one


def test_list_unknown_group():
    result = subprocess.run([dlexp_bin(), "list", "modle"], capture_output=True, text=True)
    assert result.returncode == 2 and "did you mean 'model'" in result.stderr


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["model=resnt"], "unknown model 'resnt' (did you mean 'resnet'?)"),
        (["optimizer.lrr=0.1"], "unknown key 'optimizer.lrr' (did you mean 'optimizer.lr'?)"),
        (["trainer.max_epochs=abc"], "trainer.max_epochs expects an integer, got 'abc'"),
        (["-m", "optimizer=sgd,adamm"], "unknown optimizer 'adamm'"),
        (["+model.dropout_rate=0.5"], "'dropout_rate' is not a parameter of dlexp.nets.classifiers.ConvNet"),
        (["+trainer.max_epoch=5"], "(did you mean 'max_epochs'?)"),
        (["+modle=mlp"], "unknown key or group 'modle' (did you mean 'model'?)"),
        (["model=wgan", "gan_loss.clip_value=null"], "must be kept Lipschitz"),
        (["model=resnet", "regularizer=dropout"], "has no dropout"),
        (["dataset=image_folder", "dataset.num_classes=2"], "dataset.source.root"),
        (["scheduler.decay_steps=0"], "unknown key"),
        (["scheduler=exponential", "scheduler.decay_steps=0"], "scheduler: ValueError: scheduler.decay_steps must be positive"),
        (["optimizer.lr=-1"], "optimizer: ValueError: Invalid learning rate"),
    ],
)
def test_bad_overrides_exit_2_with_one_line(run_dlexp, tmp_path, overrides, expected):
    """A config mistake: exit 2, one plain line naming it, no traceback, no run directory."""
    result = run_dlexp("train", "trainer=debug", *overrides)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    err = result.stderr.strip()
    assert expected in err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert not list((tmp_path / "outputs").glob("*/*")), "a run directory was left behind"


def test_missing_dataset_explains_where_it_looked(run_dlexp, tmp_path):
    """Missing MNIST files: exit 2 with a paragraph naming the folders searched and the offline choice."""
    result = run_dlexp("train", "dataset=mnist", "dataset.source.download=false")
    assert result.returncode == 2
    assert str(tmp_path / "data" / "MNIST" / "raw") in result.stderr
    assert "dataset=digits" in result.stderr and "Traceback" not in result.stderr
    assert not list((tmp_path / "outputs").glob("*/*"))


@pytest.mark.slow
def test_default_train_on_digits(run_dlexp):
    """The Quick start's `dlexp train`: digits, convnet, >= 0.95 test accuracy, every file of docs/contracts.md C2."""
    result = run_dlexp("train")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = run_dir_of(result)
    assert RUN_DIR_RE.search(run_dir.as_posix()), run_dir
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["test/acc"] >= 0.95, metrics
    assert metrics["val/acc_best"] >= metrics["val/acc"] - 1e-9
    assert metrics["epochs"] == 10 and metrics["global_step"] > 0 and metrics["wall_s"] > 0
    for key in ("test/loss", "train/loss", "params"):
        assert key in metrics

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert "${" not in (run_dir / "config.yaml").read_text(), "config.yaml is not fully resolved"
    assert config["model"]["_target_"].endswith("ConvNet") and config["dataset"]["name"] == "digits"
    chosen = ["trainer=gpu"] if gpu_present() else []  # the CLI's choice, recorded so a resume makes the same
    assert yaml.safe_load((run_dir / "overrides.yaml").read_text()) == chosen
    assert "== summary ==" in (run_dir / "train.log").read_text()

    # docs/contracts.md C4: checkpoints load with weights_only=True and carry the resolved config as plain data
    for name in ("last.ckpt", "best.ckpt"):
        ckpt = torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert ckpt["dlexp_config"]["seed"] == 42 and "net.fc.weight" in ckpt["state_dict"]


@pytest.mark.slow
def test_tensorboard_events_hold_expected_tags(run_dlexp):
    """TensorBoard's own reader finds loss, accuracy, lr, regularisation and hparams in tb/."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    result = run_dlexp("train", "model=mlp", "regularizer=l2", "trainer.max_epochs=2",
                       "trainer.limit_train_batches=5")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = run_dir_of(result)
    mux = EventMultiplexer().AddRunsFromDirectory(str(run_dir / "tb"))
    mux.Reload()
    scalars = {tag for run in mux.Runs().values() for tag in run.get("scalars", [])}
    for tag in ("train/loss_step", "train/loss_epoch", "train/acc", "train/reg_loss_step", "val/loss", "val/acc",
                "val/acc_best", "test/loss", "test/acc", "lr-Adam"):
        assert tag in scalars, f"{tag} missing from {sorted(scalars)}"
    hparams = {run: mux.PluginRunToTagToContent("hparams").get(run) for run in mux.Runs()}
    assert any(hparams.values()), "no hparams summary written"


@pytest.mark.slow
def test_same_seed_same_result(run_dlexp):
    """Two CPU runs with one seed end with the same metrics; another seed differs. (Identical bits on a quiet
    machine; on 16 cores busy with other tests the BLAS summed in another order: a 1.3e-6 relative difference.)"""
    args = ("train", "trainer=debug", "model=mlp", "logger=none")
    runs = [run_dlexp(*args, f"seed={s}") for s in (7, 7, 8)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-2000:]
    losses = [json.loads((run_dir_of(r) / "metrics.json").read_text())["test/loss"] for r in runs]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=0) and losses[2] != pytest.approx(losses[0], rel=1e-3)
    assert len({run_dir_of(r) for r in runs}) == 3, "two runs shared a run directory"


@pytest.mark.slow
def test_multirun_writes_one_run_dir_per_job(run_dlexp, tmp_path):
    """-m optimizer=sgd,adam: two jobs, each a full run directory under one sweep directory."""
    result = run_dlexp("train", "-m", "trainer=debug", "logger=none", "optimizer=sgd,adam")
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("multirun_dir: ")
    sweep = tmp_path / last.removeprefix("multirun_dir: ")
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    targets = [yaml.safe_load((sweep / j / "config.yaml").read_text())["optimizer"]["_target_"] for j in jobs]
    assert targets == ["torch.optim.SGD", "torch.optim.Adam"]
    assert all(json.loads((sweep / j / "metrics.json").read_text())["status"] == "completed" for j in jobs)


@pytest.mark.slow
def test_init_from_reuses_layer1_in_deeper_net(run_dlexp):
    """The notes' reuse: train a 1-hidden-layer MLP, load its layer1 into a deeper MLP and freeze it."""
    first = run_dlexp("train", "model=mlp", "model.hidden=[64]", "trainer.max_epochs=2", "logger=none")
    assert first.returncode == 0, first.stderr[-2000:]
    source = run_dir_of(first)
    second = run_dlexp("train", "model=mlp", "model.hidden=[64,32]", f"model.init_from={source}",
                       "model.init_include=[layer1]", "callbacks=[default,freeze]", "trainer.max_epochs=1",
                       "logger=none")
    assert second.returncode == 0, second.stderr[-2000:]
    log = (run_dir_of(second) / "train.log").read_text()
    assert "loaded 2 tensors (layer1.0.weight, layer1.0.bias)" in log
    assert "froze 2 parameter tensors" in log
    src = torch.load(source / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    dst = torch.load(run_dir_of(second) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(src["net.layer1.0.weight"], dst["net.layer1.0.weight"])  # frozen: unchanged


@pytest.mark.slow
def test_mnist_loader_through_cli(run_dlexp, idx_dir):
    """dataset=mnist reads IDX files placed where torchvision expects them (no download)."""
    result = run_dlexp("train", "dataset=mnist", "dataset.source.download=false", "trainer=debug", "logger=none",
                       env={"DLEXP_DATA_DIR": str(idx_dir)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "dataset mnist: train 180, val 20, test 50" in (run_dir_of(result) / "train.log").read_text()


@needs_fashion
@pytest.mark.slow
def test_fashion_mnist_real_data(run_dlexp):
    """Real Fashion-MNIST from the system folder: a few hundred steps of the notes' CNN learn well above chance."""
    result = run_dlexp("train", "dataset=fashion_mnist", "trainer.max_epochs=1", "trainer.limit_train_batches=200",
                       "trainer.limit_val_batches=10", "trainer.limit_test_batches=20", "logger=none")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((run_dir_of(result) / "metrics.json").read_text())
    assert metrics["test/acc"] > 0.7, metrics
