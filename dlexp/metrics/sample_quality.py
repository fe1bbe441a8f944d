"""Sample quality of a generator: its samples, and FID, KID, Inception-style score and precision/recall of their
features against real ones (one extractor's features for both)."""
from __future__ import annotations

from typing import Any

import torch

from dlexp.metrics.generative import frechet_distance, inception_score, kernel_inception_distance, precision_recall


def generate(net: Any, n: int, seed: int, batch_size: int) -> torch.Tensor:
    """n samples of a net with sample(z, labels) (a GAN or VAE), in its data's normalised space; z drawn from seed."""
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
