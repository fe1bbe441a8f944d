"""How close generated 1-D signals are to real ones, as the ECG GAN literature measures it: maximum mean
discrepancy with a Gaussian kernel, and the nearest-neighbour distance of each generated segment to the real
set (and back), both on raw segments (B, C, L)."""
from __future__ import annotations

import torch


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.detach().double().flatten(1)  # (N, C * L)


def median_bandwidth(x: torch.Tensor, y: torch.Tensor) -> float:
    """The median heuristic: the median pairwise distance between the pooled samples (Gretton et al. 2012)."""
    pooled = torch.cat([_flat(x), _flat(y)])
    d = torch.cdist(pooled, pooled)
    return float(d[d > 0].median()) if bool((d > 0).any()) else 1.0


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None) -> float:
    """Unbiased MMD^2 between samples x (N, ...) and y (M, ...) with k(a, b) = exp(-|a - b|^2 / (2 bandwidth^2))."""
    a, b = _flat(x), _flat(y)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("MMD needs at least 2 samples on each side")
    sigma = bandwidth or median_bandwidth(x, y)
    kernel = lambda p, q: torch.exp(-torch.cdist(p, q).pow(2) / (2 * sigma**2))  # noqa: E731
    kxx, kyy, kxy = kernel(a, a), kernel(b, b), kernel(a, b)
    n, m = len(a), len(b)
    xx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(xx + yy - 2 * kxy.mean())


def nearest_neighbour_distance(fake: torch.Tensor, real: torch.Tensor) -> tuple[float, float]:
    """(mean Euclidean distance from each fake segment to its nearest real one: fidelity, and from each real one
    to its nearest fake: coverage; a generator that copies a few segments scores well on the first only),
    per sample value (divided by sqrt(C * L)) so segments of any length compare."""
    f, r = _flat(fake), _flat(real)
    d = torch.cdist(f, r) / f.shape[1] ** 0.5
    return float(d.min(dim=1).values.mean()), float(d.min(dim=0).values.mean())
