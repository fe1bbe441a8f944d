"""`dlexp eval`'s work on a run directory: a classifier's test report, or a generator's sample-quality scores
with their protocol; results recorded in eval/, metrics.json (eval/... keys) and TensorBoard."""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

from dlexp.data.datamodule import denormalize
from dlexp.engine.extractors import make_extractor
from dlexp.engine.restore import load_datamodule, restore_net
from dlexp.engine.rundir import TENSORBOARD, RunDir
from dlexp.errors import ConfigError
from dlexp.io import atomic_write_json, atomic_write_text
from dlexp.metrics.classification import class_report, confusion_markdown, confusion_png
from dlexp.metrics.sample_quality import generate, scores
from dlexp.plots import save_grid

Images = dict[str, torch.Tensor]


def evaluate(run: RunDir, opts: Any) -> tuple[dict[str, Any], Images]:
    """The report the run's task declares: class predictions (predicts_classes) or samples to score."""
    if getattr(run.task_class(), "predicts_classes", False):
        return evaluate_classifier(run, opts)
    return evaluate_generator(run, opts)


@torch.no_grad()
def evaluate_classifier(run: RunDir, opts: Any) -> tuple[dict[str, Any], Images]:
    """Test-set report of a classifier run (its best checkpoint): accuracy, loss, per class, confusion matrix,
    the most confidently wrong images."""
    dm, net = load_datamodule(run), restore_net(run)
    x, y = dm.splits["test"]
    logits = torch.cat([net(dm.transform(chunk, training=False)) for chunk in x.split(opts.batch_size)])
    metrics, matrix = class_report(logits, y, dm.num_classes)
    atomic_write_text(run.eval / "confusion.md", confusion_markdown(matrix))
    images = {"eval/confusion": confusion_png(matrix, run.eval / "confusion.png")}
    probs = logits.softmax(dim=1)
    predicted = probs.argmax(dim=1)
    wrong = (predicted != y).nonzero().flatten()
    if len(wrong):
        worst = wrong[probs[wrong, predicted[wrong]].argsort(descending=True)[: opts.n_wrong]]
        shown = denormalize(dm.transform(x[worst], training=False), dm.mean, dm.std)
        images["eval/confidently_wrong"] = save_grid(shown, run.eval / "confidently_wrong.png", nrow=8)
        lines = [f"{i}: true {int(y[i])}, predicted {int(predicted[i])} with p={float(probs[i, predicted[i]]):.3f}"
                 for i in worst.tolist()]
        atomic_write_text(run.eval / "confidently_wrong.txt", "\n".join(lines) + "\n")
    return metrics, images


def evaluate_generator(run: RunDir, opts: Any) -> tuple[dict[str, Any], Images]:
    """eval/fid, kid, kid_std, is, precision, recall, and eval/fid_floor (train subset vs test), with protocol."""
    extractor = make_extractor(opts, run.config().get("dataset", {}))
    dm, net = load_datamodule(run), restore_net(run, ema=True)
    if not hasattr(net, "sample"):
        raise ConfigError(f"{type(net).__name__} has no generator or prior to sample from: sample-quality scores "
                          "need a GAN or VAE run")
    g = torch.Generator().manual_seed(opts.seed)
    test_x, train_x = dm.splits["test"][0], dm.splits["train"][0]
    n_real, n_fake = min(opts.n_real, len(test_x)), min(opts.n_fake, len(train_x))
    to_unit = (lambda x: x.float() / 255) if test_x.dtype == torch.uint8 else (lambda x: x.float())
    real = to_unit(test_x[torch.randperm(len(test_x), generator=g)[:n_real]])
    # the floor: as many real training images as generated ones, scored against the same test images
    floor = to_unit(train_x[torch.randperm(len(train_x), generator=g)[:n_fake]])
    fake = denormalize(generate(net, n_fake, opts.seed, opts.batch_size), dm.mean, dm.std)
    real_features = extractor.run(real, opts.batch_size)
    metrics: dict[str, Any] = scores(real_features, extractor.run(fake, opts.batch_size), opts, "eval/")
    floor_scores = scores(real_features, extractor.run(floor, opts.batch_size), opts, "eval/")
    metrics["eval/fid_floor"] = floor_scores["eval/fid"]
    metrics["eval/kid_floor"] = floor_scores["eval/kid"]
    protocol = {"n_real": n_real, "n_fake": n_fake, "real_split": "test", "floor": "train subset vs test",
                "seed": opts.seed, "kid_subsets": opts.kid_subsets, "kid_subset_size": opts.kid_subset_size,
                "k": opts.k, **extractor.protocol}
    metrics.update({f"eval/{k}": v for k, v in protocol.items()})
    atomic_write_json(run.eval / "scores.json", {"scores": {k: v for k, v in metrics.items() if isinstance(v, float)},
                                                 "protocol": protocol})
    return metrics, {"eval/samples": save_grid(fake[:64], run.eval / "samples.png", nrow=8)}


def record(run: RunDir, metrics: dict[str, Any], images: Images) -> None:
    """Merge eval/ keys into metrics.json (atomically) and log scalars and images to the run's TensorBoard."""
    merged = run.update_metrics(metrics)
    step = int(merged.get("global_step", 0))
    writer = SummaryWriter(str(run.path / TENSORBOARD))
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(key, value, step)
    for key, grid in images.items():
        writer.add_image(key, grid, step)
    writer.close()
