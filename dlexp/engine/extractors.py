"""Where sample-quality features come from, offline: a dlexp classifier run (given, or trained once and cached),
or torchvision's Inception-v3 with local weights; and the FID callback built on one."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from torchvision.models import inception_v3

from dlexp.callbacks.fid import FIDMonitor
from dlexp.engine.checkpoint import load_checkpoint
from dlexp.engine.restore import restore_net
from dlexp.engine.rundir import RunDir, is_run_dir
from dlexp.errors import ConfigError
from dlexp.io import atomic_write_json
from dlexp.metrics.extractor import Extractor, sha256


def domain_extractor(run_dir: Path) -> Extractor:
    """A dlexp classifier run as the feature extractor (its best checkpoint, its dataset's normalisation)."""
    if not is_run_dir(run_dir):
        raise ConfigError(f"eval.extractor={run_dir}: not a dlexp run directory")
    run = RunDir.existing(run_dir)
    if not getattr(run.task_class(), "predicts_classes", False):
        raise ConfigError(f"eval.extractor={run_dir}: not a classifier run")
    dataset = run.config()["dataset"]
    return Extractor(
        restore_net(run), torch.tensor(dataset["mean"]).view(1, -1, 1, 1),
        torch.tensor(dataset["std"]).view(1, -1, 1, 1),
        {"extractor": str(run_dir), "extractor_dataset": dataset["name"],
         "extractor_sha256": sha256(run.best_checkpoint()), "extractor_acc": run.metrics().get("test/acc"),
         "backbone": "domain"},
    )


def fid_monitor(extractor: str, every_n_epochs: int = 5, n: int = 500, seed: int = 0) -> FIDMonitor:
    """callbacks=[default,fid]: the FID callback on the features of the classifier run `extractor`."""
    return FIDMonitor(domain_extractor(Path(extractor).expanduser()), every_n_epochs, n, seed)


def cached_domain_extractor(dataset: dict[str, Any], cache_dir: Path, epochs: int) -> Path:
    """The run dir of a convnet trained once (seed 0) on this dataset, under cache_dir; trained now if absent."""
    folder = cache_dir.expanduser() / "extractors" / dataset["name"]
    record = folder / "extractor.json"
    if record.is_file():
        run_dir = Path(json.loads(record.read_text())["run_dir"])
        if RunDir(run_dir).best_ckpt.is_file():
            return run_dir
    print(f"eval: training the {dataset['name']} feature classifier once (convnet, seed 0, {epochs} epochs) "
          f"into {folder}", file=sys.stderr, flush=True)
    data_dir = dataset.get("source", {}).get("data_dir")
    command = [sys.executable, "-m", "dlexp", "train", "model=convnet", f"dataset={dataset['name']}", "seed=0",
               f"trainer.max_epochs={epochs}", "logger=none", f"paths.output_dir={folder}",
               *([f"paths.data_dir={data_dir}"] if data_dir else [])]
    lines = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
        for line in child.stdout:  # show its progress (on stderr: stdout is eval's report)
            print(f"  {line}", end="", file=sys.stderr, flush=True)
            lines.append(line.strip())
    if child.returncode != 0 or not lines or not lines[-1].startswith("run_dir: "):
        raise ConfigError(f"eval: training the feature classifier failed (exit {child.returncode}); run "
                          f"`{' '.join(command[2:])}` to see why, or give eval.extractor=RUN_DIR")
    run = RunDir(Path(lines[-1].removeprefix("run_dir: ")))
    atomic_write_json(record, {"run_dir": str(run.path), "test_acc": run.metrics().get("test/acc"),
                               "sha256": sha256(run.best_checkpoint()), "config": run.overrides()})
    return run.path


def inception_extractor(weights: str | None) -> Extractor:
    """torchvision's Inception-v3 with a local state_dict (nothing is downloaded): 2048-d pool features."""
    if not weights:
        raise ConfigError("eval.backbone=inception needs eval.weights=PATH: a torchvision inception_v3 state_dict "
                          "(inception_v3_google-*.pth, fetched once on a machine with internet); dlexp never "
                          "downloads. Or use the default eval.backbone=domain")
    path = Path(weights).expanduser()
    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    try:
        net.load_state_dict(load_checkpoint(path, training=False))
    except RuntimeError as e:
        raise ConfigError(f"eval.weights={path}: not an inception_v3 state_dict ({str(e).splitlines()[0]})") from None
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return Extractor(net.eval(), mean, std, {"backbone": "inception", "extractor_sha256": sha256(path),
                                             "extractor": str(path)}, image_size=299)


def make_extractor(opts: Any, dataset: dict[str, Any]) -> Extractor:
    """The extractor `dlexp eval` options ask for; a domain classifier must be of the run's dataset."""
    if opts.backbone == "inception":
        return inception_extractor(opts.weights)
    if opts.backbone != "domain":
        raise ConfigError(f"eval.backbone must be domain or inception, got '{opts.backbone}'")
    run_dir = Path(opts.extractor) if opts.extractor else cached_domain_extractor(dataset, Path(opts.cache_dir),
                                                                                   opts.extractor_epochs)
    extractor = domain_extractor(run_dir.expanduser())
    if extractor.protocol["extractor_dataset"] != dataset["name"]:
        raise ConfigError(f"eval.extractor was trained on {extractor.protocol['extractor_dataset']}, the run on "
                          f"{dataset['name']}: features must come from the same dataset")
    return extractor
