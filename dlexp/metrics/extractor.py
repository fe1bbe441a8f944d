"""Feature extractors for sample-quality scores, offline: a domain classifier (a dlexp run), or Inception
from local weights. Features are the input of the classifier's last linear layer; probabilities its softmax."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlexp.config import ConfigError


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Extractor:
    """A frozen net with its input normalisation; features() and probs() take [0, 1] images (B, C, H, W)."""

    net: nn.Module
    mean: torch.Tensor
    std: torch.Tensor
    protocol: dict[str, Any]
    image_size: int | None = None  # resize to this (inception: 299)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if self.image_size and x.shape[-1] != self.image_size:
            x = nn.functional.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        if x.shape[1] == 1 and self.mean.shape[1] == 3:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def run(self, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, D), class probabilities (N, K)) of [0, 1] images."""
        last = [m for m in self.net.modules() if isinstance(m, nn.Linear)][-1]
        captured: list[torch.Tensor] = []
        hook = last.register_forward_pre_hook(lambda module, args: captured.append(args[0].flatten(1)))
        feats, probs = [], []
        try:
            for chunk in images.split(batch_size):
                captured.clear()
                logits = self.net(self._prepare(chunk))
                feats.append(captured[-1].double())
                probs.append(torch.softmax(logits.double(), dim=1))
        finally:
            hook.remove()
        return torch.cat(feats), torch.cat(probs)


def domain_extractor(run_dir: Path) -> Extractor:
    """A dlexp classifier run as the feature extractor (its best checkpoint, its dataset's normalisation)."""
    import yaml

    from dlexp.checkpoint import load_checkpoint
    from dlexp.train import net_from_config
    from dlexp.transfer import checkpoint_file

    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"eval.extractor={run_dir}: not a dlexp run directory")
    config = yaml.safe_load(config_path.read_text())
    if not str(config.get("task", {}).get("_target_", "")).endswith("ClassificationTask"):
        raise ConfigError(f"eval.extractor={run_dir}: not a classifier run")
    net = net_from_config(config["model"])
    ckpt_path = checkpoint_file(run_dir)
    state = load_checkpoint(ckpt_path)["state_dict"]
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    metrics_path = run_dir / "metrics.json"
    accuracy = json.loads(metrics_path.read_text()).get("test/acc") if metrics_path.is_file() else None
    dataset = config["dataset"]
    return Extractor(
        net.eval(), torch.tensor(dataset["mean"]).view(1, -1, 1, 1), torch.tensor(dataset["std"]).view(1, -1, 1, 1),
        {"extractor": str(run_dir), "extractor_dataset": dataset["name"], "extractor_sha256": sha256(ckpt_path),
         "extractor_acc": accuracy, "backbone": "domain"},
    )


def cached_domain_extractor(dataset: dict[str, Any], cache_dir: Path, epochs: int) -> Path:
    """The run dir of a convnet trained once (seed 0) on this dataset, under cache_dir; trained now if absent."""
    import yaml

    folder = cache_dir.expanduser() / "extractors" / dataset["name"]
    record = folder / "extractor.json"
    if record.is_file():
        run_dir = Path(json.loads(record.read_text())["run_dir"])
        if (run_dir / "checkpoints" / "best.ckpt").is_file():
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
    run_dir = Path(lines[-1].removeprefix("run_dir: "))
    from dlexp.io import atomic_write_json

    metrics = json.loads((run_dir / "metrics.json").read_text())
    atomic_write_json(record, {"run_dir": str(run_dir), "test_acc": metrics.get("test/acc"),
                               "sha256": sha256(run_dir / "checkpoints" / "best.ckpt"),
                               "config": yaml.safe_load((run_dir / "overrides.yaml").read_text())})
    return run_dir


def inception_extractor(weights: str | None) -> Extractor:
    """torchvision's Inception-v3 with a local state_dict (nothing is downloaded): 2048-d pool features."""
    if not weights:
        raise ConfigError("eval.backbone=inception needs eval.weights=PATH: a torchvision inception_v3 state_dict "
                          "(inception_v3_google-*.pth, fetched once on a machine with internet); dlexp never "
                          "downloads. Or use the default eval.backbone=domain")
    from torchvision.models import inception_v3

    from dlexp.checkpoint import load_checkpoint

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
