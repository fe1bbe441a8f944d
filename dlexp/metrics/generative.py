"""Sample-quality scores on extracted features: FID, KID, Inception-style score, precision/recall.

All take (N, D) feature matrices (or (N, classes) probabilities for the score) and compute in float64.
"""
from __future__ import annotations

import math
import warnings

import torch


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.double()
    mu = x.mean(dim=0)
    centred = x - mu
    return mu, centred.T @ centred / max(1, x.shape[0] - 1)  # (D,), (D, D)


def _psd_sqrt(c: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a positive semi-definite matrix (negative round-off eigenvalues -> 0)."""
    values, vectors = torch.linalg.eigh((c + c.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID (Heusel et al. 2017): |mu_r - mu_f|^2 + tr(C_r + C_f - 2 (C_r C_f)^(1/2)).

    tr((C_r C_f)^(1/2)) is computed as tr((C_r^(1/2) C_f C_r^(1/2))^(1/2)), a symmetric PSD matrix, so the
    root stays real and stable when the covariances are rank-deficient (fewer samples than dimensions).
    """
    if min(real.shape[0], fake.shape[0]) <= real.shape[1]:
        warnings.warn(f"FID with {min(real.shape[0], fake.shape[0])} samples for {real.shape[1]}-d features: the "
                      "covariances are rank-deficient and the score is biased upwards; compare only like with like",
                      stacklevel=2)
    mu_r, c_r = _stats(real)
    mu_f, c_f = _stats(fake)
    root_r = _psd_sqrt(c_r)
    cross = _psd_sqrt(root_r @ c_f @ root_r)
    value = (mu_r - mu_f).pow(2).sum() + c_r.trace() + c_f.trace() - 2 * cross.trace()
    return max(0.0, float(value))


def kernel_inception_distance(real: torch.Tensor, fake: torch.Tensor, subsets: int = 10, subset_size: int = 100,
                              seed: int = 0) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): unbiased MMD^2 with the kernel (x.y / d + 1)^3, mean and std over subsets."""
    g = torch.Generator().manual_seed(seed)
    m = min(subset_size, real.shape[0], fake.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 samples per set")
    d = real.shape[1]
    values = []
    for _ in range(subsets):
        x = real.double()[torch.randperm(real.shape[0], generator=g)[:m]]
        y = fake.double()[torch.randperm(fake.shape[0], generator=g)[:m]]
        k_xx, k_yy, k_xy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        off = 1 - torch.eye(m, dtype=torch.float64)
        mmd = ((k_xx * off).sum() + (k_yy * off).sum()) / (m * (m - 1)) - 2 * k_xy.mean()
        values.append(float(mmd))
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


def inception_score(probs: torch.Tensor, splits: int = 10) -> float:
    """exp(E_x KL(p(y|x) || p(y))), averaged over splits: 1 (no information) to the number of classes."""
    probs = probs.double().clamp_min(1e-12)
    scores = []
    for part in probs.chunk(max(1, min(splits, probs.shape[0]))):
        marginal = part.mean(dim=0, keepdim=True)
        scores.append(math.exp(float((part * (part.log() - marginal.log())).sum(dim=1).mean())))
    return sum(scores) / len(scores)


def _knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in its own set (itself excluded)."""
    distances = torch.cdist(x, x)
    return distances.kthvalue(k + 1, dim=1).values  # the 1st is the point itself, at distance 0


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision/recall (Kynkaanniemi et al. 2019): the share of fake samples inside the real k-NN
    manifold, and of real samples inside the fake one."""
    real, fake = real.double(), fake.double()
    if min(real.shape[0], fake.shape[0]) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set")
    r_real, r_fake = _knn_radii(real, k), _knn_radii(fake, k)
    cross = torch.cdist(fake, real)  # (n_fake, n_real)
    precision = (cross <= r_real.unsqueeze(0)).any(dim=1).double().mean()
    recall = (cross.T <= r_fake.unsqueeze(0)).any(dim=1).double().mean()
    return float(precision), float(recall)
