"""eval.stats: bootstrap confidence intervals over items and the paired permutation test, on known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from eval.stats import bootstrap_ci, paired_items, paired_test


def test_all_correct_and_all_wrong_have_degenerate_intervals() -> None:
    assert bootstrap_ci(np.ones(40)) == (1.0, 1.0)
    assert bootstrap_ci(np.zeros(7)) == (0.0, 0.0)
    assert bootstrap_ci([0.5]) == (0.5, 0.5)


def test_interval_matches_a_reference_computation() -> None:
    # Reference: the normal approximation p +- 1.96 sqrt(p (1 - p) / n), which the percentile bootstrap of a
    # Bernoulli mean approaches for large n; and a plain numpy percentile bootstrap of the same vector.
    scores = (np.random.default_rng(3).random(4000) < 0.7).astype(float)
    low, high = bootstrap_ci(scores)
    p, n = scores.mean(), len(scores)
    half = 1.959964 * np.sqrt(p * (1 - p) / n)
    assert low == pytest.approx(p - half, abs=0.003) and high == pytest.approx(p + half, abs=0.003)
    means = scores[np.random.default_rng(9).integers(0, n, size=(10_000, n))].mean(axis=1)
    assert (low, high) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), abs=0.002)
    assert bootstrap_ci(scores) == (low, high)  # seeded: the same interval every run


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci([0.0, float("nan")])
    with pytest.raises(ValueError, match="same length"):
        paired_test([1.0, 0.0], [1.0])


def test_paired_test_exact_sign_flip_answer() -> None:
    # 5 items where a wins every time: of the 2**5 swaps, only "no swap" and "swap all" reach |mean diff| = 1.
    res = paired_test([1, 1, 1, 1, 1], [0, 0, 0, 0, 0])
    assert res.p_value == pytest.approx(2 / 32) and res.difference == 1.0 and "exact" in res.method
    # Reference enumeration on an uneven case.
    a, b = np.array([1, 1, 0.5, 1, 0, 1, 1]), np.array([0, 1, 0, 0, 0, 0.5, 1])
    d = a - b
    flips = [abs((d * np.array(s)).mean()) >= abs(d.mean()) - 1e-12 for s in itertools.product([1, -1], repeat=7)]
    assert paired_test(a, b).p_value == pytest.approx(np.mean(flips))
    assert paired_test(a, a).p_value == 1.0


def test_paired_items_align_by_id_and_refuse_different_items() -> None:
    x, y = paired_items({"b": 1.0, "a": 0.0}, {"a": 0.5, "b": 0.25})
    assert x.tolist() == [0.0, 1.0] and y.tolist() == [0.5, 0.25]
    with pytest.raises(ValueError, match=r"not over the same items.*'c'"):
        paired_items({"a": 1.0, "c": 1.0}, {"a": 1.0})
