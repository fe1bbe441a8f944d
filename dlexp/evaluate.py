"""`dlexp eval RUN_DIR [key=value ...]`: a classifier's test report, or a generative run's sample-quality scores.

Results go to RUN_DIR/eval/, to metrics.json (keys eval/...) and to TensorBoard (tb/). Every generative
score is stored with its protocol: sample sizes, real split, extractor, its checksum and accuracy, seed.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from dlexp.config import ConfigError, conf_dir, did_you_mean

USAGE = "usage: dlexp eval RUN_DIR [n_real=1000] [n_fake=1000] [extractor=RUN_DIR] [backbone=domain|inception] ..."


def options(args: list[str]) -> tuple[Path, Any]:
    """RUN_DIR and the eval options: conf/eval.yaml with key=value overrides (unknown keys refused)."""
    from omegaconf import OmegaConf

    if not args or "=" in args[0]:
        raise ConfigError(f"missing RUN_DIR; {USAGE}")
    run_dir = Path(args[0]).resolve()
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a dlexp run directory (no config.yaml)")
    opts = OmegaConf.load(conf_dir() / "eval.yaml")
    for arg in args[1:]:
        key, sep, _ = arg.removeprefix("eval.").partition("=")
        if not sep or key not in opts:
            raise ConfigError(f"unknown eval option '{arg}'{did_you_mean(key, list(opts))}; options: "
                              f"{', '.join(opts)}")
    opts.merge_with(OmegaConf.from_dotlist([a.removeprefix("eval.") for a in args[1:]]))
    return run_dir, opts


def load_run(run_dir: Path) -> tuple[dict[str, Any], Any, Any, dict[str, Any]]:
    """(config, datamodule with data loaded, net with the run's weights, checkpoint state_dict)."""
    import yaml
    from hydra.utils import instantiate

    from dlexp.checkpoint import load_checkpoint
    from dlexp.train import net_from_config
    from dlexp.transfer import checkpoint_file

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    datamodule = instantiate(config["dataset"], seed=config["seed"])
    datamodule.load()
    net = net_from_config(config["model"])
    try:
        state = load_checkpoint(checkpoint_file(run_dir))["state_dict"]
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    return config, datamodule, net.eval(), state


def record(run_dir: Path, metrics: dict[str, Any], images: dict[str, Any]) -> None:
    """Merge eval/ keys into metrics.json (atomically) and log scalars and images to the run's TensorBoard."""
    from torch.utils.tensorboard import SummaryWriter

    from dlexp.io import atomic_write_json

    path = run_dir / "metrics.json"
    merged = {**(json.loads(path.read_text()) if path.is_file() else {}), **metrics}
    atomic_write_json(path, dict(sorted(merged.items())))
    step = int(merged.get("global_step", 0))
    writer = SummaryWriter(str(run_dir / "tb"))
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(key, value, step)
    for key, grid in images.items():
        writer.add_image(key, grid, step)
    writer.close()


def main(args: list[str]) -> int:
    import yaml

    run_dir, opts = options(args)
    target = str(yaml.safe_load((run_dir / "config.yaml").read_text()).get("task", {}).get("_target_", ""))
    start = time.time()
    if target.endswith("ClassificationTask"):
        from dlexp.metrics.classification import evaluate_classifier

        metrics, images = evaluate_classifier(run_dir, opts)
    else:
        from dlexp.metrics.sample_quality import evaluate_generator

        metrics, images = evaluate_generator(run_dir, opts)
    metrics["eval/wall_s"] = round(time.time() - start, 2)
    record(run_dir, metrics, images)
    width = max(len(k) for k in metrics)
    for key, value in sorted(metrics.items()):
        print(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    print(f"eval_dir: {run_dir / 'eval'}")
    return 0
