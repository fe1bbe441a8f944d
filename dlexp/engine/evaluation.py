"""`dlexp eval`'s work on a run directory: a classifier's test report, or a generator's sample-quality scores
with their protocol; results recorded in eval/, metrics.json (eval/... keys) and TensorBoard."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter

from dlexp.data.datamodule import denormalize
from dlexp.engine.extractors import make_extractor
from dlexp.engine.restore import load_datamodule, restore_net
from dlexp.engine.rundir import TENSORBOARD, RunDir
from dlexp.engine.trackers import reopened
from dlexp.errors import ConfigError
from dlexp.io import atomic_write_json, atomic_write_text
from dlexp.metrics.classification import class_report, confusion_markdown, confusion_png
from dlexp.metrics.sample_quality import generate, scores
from dlexp.metrics.signal_quality import median_bandwidth, mmd_rbf, nearest_neighbour_distance
from dlexp.plots import pyplot, save_grid, signal_panels

Images = dict[str, torch.Tensor]


def evaluate(run: RunDir, opts: Any) -> tuple[dict[str, Any], Images]:
    """The report the run's task declares (`eval_report`): classification, regression, language_model, or the
    sample quality of a generator (the default)."""
    report = getattr(run.task_class(), "eval_report", "sample_quality")
    return REPORTS[report](run, opts)


@torch.no_grad()
def predictions(dm: Any, net: torch.nn.Module, split: str, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(net outputs, targets) over a whole split, in chunks."""
    x, y = dm.splits[split]
    return torch.cat([net(dm.transform(chunk, training=False)) for chunk in x.split(batch_size)]), y


@torch.no_grad()
def evaluate_classifier(run: RunDir, opts: Any) -> tuple[dict[str, Any], Images]:
    """Test-set report of a classifier run (its best checkpoint): accuracy, loss, per class, confusion matrix,
    the most confidently wrong images."""
    dm, net = load_datamodule(run), restore_net(run)
    logits, y = predictions(dm, net, "test", opts.batch_size)
    if logits.shape[1] == 1:  # one logit: binary, as two-class logits (0, z) with the same softmax
        logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
    x = dm.splits["test"][0]
    metrics, matrix = class_report(logits, y, max(dm.num_classes, 2))
    atomic_write_text(run.eval / "confusion.md", confusion_markdown(matrix))
    images = {"eval/confusion": confusion_png(matrix, run.eval / "confusion.png")}
    probs = logits.softmax(dim=1)
    predicted = probs.argmax(dim=1)
    wrong = (predicted != y).nonzero().flatten()
    if len(wrong) and x.dim() == 4:  # images to show
        worst = wrong[probs[wrong, predicted[wrong]].argsort(descending=True)[: opts.n_wrong]]
        shown = denormalize(dm.transform(x[worst], training=False), dm.mean, dm.std)
        images["eval/confidently_wrong"] = save_grid(shown, run.eval / "confidently_wrong.png", nrow=8)
        lines = [f"{i}: true {int(y[i])}, predicted {int(predicted[i])} with p={float(probs[i, predicted[i]]):.3f}"
                 for i in worst.tolist()]
        atomic_write_text(run.eval / "confidently_wrong.txt", "\n".join(lines) + "\n")
    return metrics, images


@torch.no_grad()
def evaluate_regressor(run: RunDir, opts: Any) -> tuple[dict[str, Any], Images]:
    """Test MAE and RMSE of a regression run (its best checkpoint) and a predicted-vs-true scatter plot."""
    dm, net = load_datamodule(run), restore_net(run)
    predicted, y = predictions(dm, net, "test", opts.batch_size)
    predicted, y = predicted.flatten().double(), y.flatten().double()
    error = predicted - y
    metrics = {"eval/mae": float(error.abs().mean()), "eval/rmse": float(error.pow(2).mean().sqrt()),
               "eval/n_test": len(y)}
    plt = pyplot("the regression scatter plot")
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(y, predicted, s=8)
    low, high = float(min(y.min(), predicted.min())), float(max(y.max(), predicted.max()))
    ax.plot([low, high], [low, high], color="grey", lw=1)  # perfect predictions
    ax.set(xlabel="true", ylabel="predicted", title=f"{dm.name} test: MAE {metrics['eval/mae']:.3f}")
    run.eval.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(run.eval / "scatter.png", dpi=100)
    plt.close(fig)
    return metrics, {}


@torch.no_grad()
def evaluate_language_model(run: RunDir, opts: Any) -> tuple[dict[str, Any], Images]:
    """Test cross-entropy per character in nats and bits (best checkpoint), over every test window."""
    dm, net = load_datamodule(run), restore_net(run)
    logits, y = predictions(dm, net, "test", opts.batch_size)  # (N, T, V), (N, T)
    loss = float(F.cross_entropy(logits.flatten(0, 1).double(), y.flatten()))
    return {"eval/loss": loss, "eval/bpc": loss / math.log(2), "eval/n_test_chars": y.numel()}, {}


def evaluate_generator(run: RunDir, opts: Any) -> tuple[dict[str, Any], Images]:
    """eval/fid, kid, kid_std, is, precision, recall, and eval/fid_floor (train subset vs test), with protocol;
    for 1-D signals MMD and nearest-neighbour distances instead (evaluate_signals)."""
    dataset = run.config().get("dataset", {})
    if dataset.get("kind") == "signal":
        return evaluate_signals(run, opts)
    extractor = make_extractor(opts, dataset)  # first: a missing extractor is reported before data is loaded
    dm, net = load_datamodule(run), generator_net(run)
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


def generator_net(run: RunDir) -> torch.nn.Module:
    """The run's generator (its EMA copy when kept) or VAE decoder: a net with sample(z, labels)."""
    if not hasattr(run.net_class(), "sample"):
        raise ConfigError(f"{run.config()['model']['_target_']} has no generator or prior to sample from: "
                          "sample-quality scores need a GAN or VAE run")
    return restore_net(run, ema=True)


def evaluate_signals(run: RunDir, opts: Any) -> tuple[dict[str, Any], Images]:
    """A signal generator against real test segments: MMD^2 (Gaussian kernel, median bandwidth) and nearest-
    neighbour distances, each next to its real-vs-real floor (as many training segments as generated ones)."""
    dm, net = load_datamodule(run), generator_net(run)
    g = torch.Generator().manual_seed(opts.seed)
    test_x, train_x = dm.splits["test"][0].float(), dm.splits["train"][0].float()
    n_real, n_fake = min(opts.n_real, len(test_x)), min(opts.n_fake, len(train_x))
    real = test_x[torch.randperm(len(test_x), generator=g)[:n_real]]
    floor = train_x[torch.randperm(len(train_x), generator=g)[:n_fake]]
    fake = generate(net, n_fake, opts.seed, opts.batch_size)
    bandwidth = median_bandwidth(real, floor)  # one kernel for the run and its floor, from real data only
    metrics: dict[str, Any] = {"eval/mmd": mmd_rbf(fake, real, bandwidth),
                               "eval/mmd_floor": mmd_rbf(floor, real, bandwidth)}
    metrics["eval/nn_fake_to_real"], metrics["eval/nn_real_to_fake"] = nearest_neighbour_distance(fake, real)
    metrics["eval/nn_floor"], _ = nearest_neighbour_distance(floor, real)
    protocol = {"n_real": n_real, "n_fake": n_fake, "real_split": "test", "floor": "train subset vs test",
                "seed": opts.seed, "kernel": "gaussian", "bandwidth": bandwidth, "distance": "euclidean per value"}
    metrics.update({f"eval/{k}": v for k, v in protocol.items()})
    atomic_write_json(run.eval / "scores.json", {"scores": {k: v for k, v in metrics.items() if isinstance(v, float)},
                                                 "protocol": protocol})
    torch.save(fake, run.eval / "samples.pt")
    return metrics, {"eval/samples": save_grid(signal_panels(fake[:32]), run.eval / "samples.png", nrow=4)}


REPORTS = {"classification": evaluate_classifier, "regression": evaluate_regressor,
           "language_model": evaluate_language_model, "sample_quality": evaluate_generator}


def record(run: RunDir, metrics: dict[str, Any], images: Images) -> None:
    """Merge eval/ keys into metrics.json (atomically); log scalars and images to the run's TensorBoard, and scalars
    and the eval/ PNGs to the outside trackers the run logged to (the same MLflow / W&B run, reopened)."""
    merged = run.update_metrics(metrics)
    step = int(merged.get("global_step", 0))
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    writer = SummaryWriter(str(run.path / TENSORBOARD))
    for key, value in scalars.items():
        writer.add_scalar(key, value, step)
    for key, grid in images.items():
        writer.add_image(key, grid, step)
    writer.close()
    for tracker in reopened(run):
        tracker.log_metrics(scalars, step=step)
        tracker.end_run(metrics)  # the run's files (metrics.json with the eval/ keys, eval/*.png) kept, run ended
