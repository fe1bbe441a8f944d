"""Sample quality of a GAN or VAE run: FID, KID, Inception-style score, precision/recall, and the real-vs-real
floor, all on one extractor's features, stored with their protocol."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dlexp.config import ConfigError
from dlexp.metrics.extractor import Extractor, cached_domain_extractor, domain_extractor, inception_extractor
from dlexp.metrics.generative import frechet_distance, inception_score, kernel_inception_distance, precision_recall


def make_extractor(opts: Any, dataset: dict[str, Any]) -> Extractor:
    """The extractor eval options ask for; a domain classifier must be of the run's dataset."""
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


def generate(net: Any, state: dict[str, torch.Tensor], n: int, seed: int, batch_size: int) -> torch.Tensor:
    """n samples in the run's normalised data space, from the EMA generator when the run kept one."""
    if not hasattr(net, "sample"):
        raise ConfigError(f"{type(net).__name__} has no generator or prior to sample from: sample-quality scores "
                          "need a GAN or VAE run")
    ema = {k.removeprefix("generator_ema."): v for k, v in state.items() if k.startswith("generator_ema.")}
    if ema:
        net.generator.load_state_dict(ema)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, net.latent_dim, generator=g)
    classes = getattr(net, "num_classes", 0)
    labels = torch.arange(n) % classes if classes else None
    with torch.no_grad():
        parts = [net.sample(chunk, None if labels is None else labels[i * batch_size: (i + 1) * batch_size])
                 for i, chunk in enumerate(z.split(batch_size))]
    return torch.cat(parts)


def scores(real: tuple[torch.Tensor, torch.Tensor], fake: tuple[torch.Tensor, torch.Tensor], opts: Any,
           prefix: str) -> dict[str, float]:
    (f_real, _), (f_fake, p_fake) = real, fake
    kid, kid_std = kernel_inception_distance(f_real, f_fake, opts.kid_subsets, opts.kid_subset_size, opts.seed)
    precision, recall = precision_recall(f_real, f_fake, opts.k)
    return {f"{prefix}fid": frechet_distance(f_real, f_fake), f"{prefix}kid": kid, f"{prefix}kid_std": kid_std,
            f"{prefix}is": inception_score(p_fake, opts.is_splits), f"{prefix}precision": precision,
            f"{prefix}recall": recall}


def evaluate_generator(run_dir: Path, opts: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """eval/fid, kid, kid_std, is, precision, recall, and eval/fid_floor (train subset vs test), with protocol."""
    from dlexp.callbacks.samples import denormalize, save_grid
    from dlexp.evaluate import load_run
    from dlexp.io import atomic_write_json

    import yaml

    extractor = make_extractor(opts, yaml.safe_load((run_dir / "config.yaml").read_text()).get("dataset", {}))
    config, dm, net, state = load_run(run_dir)
    g = torch.Generator().manual_seed(opts.seed)
    test_x = dm.splits["test"][0]
    train_x = dm.splits["train"][0]
    n_real, n_fake = min(opts.n_real, len(test_x)), min(opts.n_fake, len(train_x))
    to_unit = (lambda x: x.float() / 255) if test_x.dtype == torch.uint8 else (lambda x: x.float())
    real = to_unit(test_x[torch.randperm(len(test_x), generator=g)[:n_real]])
    # the floor: as many real training images as generated ones, scored against the same test images
    floor = to_unit(train_x[torch.randperm(len(train_x), generator=g)[:n_fake]])
    fake = denormalize(generate(net, state, n_fake, opts.seed, opts.batch_size), dm.mean, dm.std)
    real_features = extractor.run(real, opts.batch_size)
    metrics: dict[str, Any] = scores(real_features, extractor.run(fake, opts.batch_size), opts, "eval/")
    floor_scores = scores(real_features, extractor.run(floor, opts.batch_size), opts, "eval/")
    metrics["eval/fid_floor"] = floor_scores["eval/fid"]
    metrics["eval/kid_floor"] = floor_scores["eval/kid"]
    protocol = {"n_real": n_real, "n_fake": n_fake, "real_split": "test", "floor": "train subset vs test",
                "seed": opts.seed, "kid_subsets": opts.kid_subsets, "kid_subset_size": opts.kid_subset_size,
                "k": opts.k, **extractor.protocol}
    metrics.update({f"eval/{k}": v for k, v in protocol.items()})
    out = run_dir / "eval"
    atomic_write_json(out / "scores.json", {"scores": {k: v for k, v in metrics.items() if isinstance(v, float)},
                                            "protocol": protocol})
    grid = save_grid(fake[:64], out / "samples.png", nrow=8)
    return metrics, {"eval/samples": grid}
