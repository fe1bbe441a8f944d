"""dlexp/metrics/generative.py: FID, KID, IS and precision/recall on known distributions."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from dlexp.metrics.generative import frechet_distance, inception_score, kernel_inception_distance, precision_recall


def test_fid_of_a_set_with_itself_is_zero():
    x = torch.randn(400, 16, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_fid_between_gaussians_matches_the_closed_form():
    """N(0, I) vs N(m, s^2 I) in d dims: |m|^2 + d (1 + s^2 - 2 s)."""
    g = torch.Generator().manual_seed(1)
    d, m, s = 4, 1.0, 2.0
    a = torch.randn(40000, d, generator=g)
    b = torch.randn(40000, d, generator=g) * s + m
    expected = d * m**2 + d * (1 + s**2 - 2 * s)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.03)


def test_fid_rank_deficient_warns_and_stays_real():
    """Fewer samples than dimensions: a warning, a finite real non-negative value, no crash."""
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(20, 64, generator=g), torch.randn(20, 64, generator=g)
    with pytest.warns(UserWarning, match="rank-deficient"):
        value = frechet_distance(a, b)
    assert math.isfinite(value) and value >= 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_kid_same_distribution_near_zero_with_std():
    g = torch.Generator().manual_seed(3)
    same = kernel_inception_distance(torch.randn(1000, 16, generator=g), torch.randn(1000, 16, generator=g))
    apart = kernel_inception_distance(torch.randn(1000, 16, generator=g), torch.randn(1000, 16, generator=g) + 1)
    assert abs(same[0]) < 3 * same[1] + 0.02 and same[1] > 0
    assert apart[0] > 10 * (abs(same[0]) + same[1])


def test_inception_score_between_one_and_the_class_count():
    confident = torch.eye(10).repeat(20, 1)  # each sample certain, classes balanced: the maximum
    assert inception_score(confident) == pytest.approx(10.0, rel=1e-6)
    assert inception_score(torch.full((200, 10), 0.1)) == pytest.approx(1.0)
    random_probs = torch.softmax(torch.randn(500, 10, generator=torch.Generator().manual_seed(4)), dim=1)
    assert 1.0 <= inception_score(random_probs) <= 10.0


def test_precision_recall_one_for_identical_sets_and_falling_as_they_separate():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(400, 8, generator=g)
    assert precision_recall(x, x) == (1.0, 1.0)
    values = [precision_recall(x, x + shift) for shift in (0.5, 1.5, 10.0)]
    precisions = [p for p, _ in values]
    assert precisions == sorted(precisions, reverse=True) and precisions[-1] == 0.0
    assert values[-1][1] == 0.0
