"""Uncertainty of the reported accuracies: bootstrap confidence intervals over items and a paired test over items.

Both work on per-item scores in [0, 1] (an sWUGGY id averaged over its voices, an sBLIMP pair, a StoryCloze pair),
whose mean is the reported accuracy, so resampling items resamples exactly what the accuracy averages over: sWUGGY
resamples ids (a word, its non-word and all their voices stay together), sBLIMP resamples pairs.

- `bootstrap_ci`: percentile bootstrap of the mean (scipy.stats.bootstrap). Percentile rather than BCa because
  BCa is undefined on constant data (all pairs correct), where the percentile interval is the right [1, 1].
- `paired_test`: two systems scored on the same items; a permutation test that swaps the two scores of each item
  (scipy.stats.permutation_test, permutation_type="samples"), two-sided, on the difference of the means. Exact
  (every swap enumerated) up to 13 items with different scores, Monte Carlo above.
Both are seeded, so the same scores give the same interval and p-value on every run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
N_RESAMPLES = 10_000
SEED = 0
ALPHA = 0.05  # "not significantly different from the best" in the report: p >= ALPHA


def ci_convention(unit_of_resampling: str) -> str:
    """How an interval was computed, for the metric's conventions."""
    return (f"{round(100 * CONFIDENCE)}% percentile bootstrap of the mean over {unit_of_resampling} "
            f"({N_RESAMPLES} resamples, seed {SEED})")


def bootstrap_ci(scores: Sequence[float] | np.ndarray, *, confidence: float = CONFIDENCE,
                 n_resamples: int = N_RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """The `confidence` percentile-bootstrap interval of the mean of `scores` (same scale as the scores)."""
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"bootstrap_ci needs a non-empty 1-d array of item scores, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("bootstrap_ci: item scores must be finite")
    if len(values) == 1 or np.all(values == values[0]):
        return float(values[0]), float(values[0])  # every resample has this mean; scipy would warn and say so too
    res = stats.bootstrap((values,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                          method="percentile", vectorized=True, rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


class PairingError(ValueError):
    """Two results compared item by item that are not over the same items."""


@dataclass(frozen=True)
class PairedTest:
    """Mean of a minus mean of b over the shared items, and the two-sided p-value of 'no difference'."""

    n: int
    mean_a: float
    mean_b: float
    difference: float
    p_value: float
    method: str


def paired_test(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *,
                n_resamples: int = N_RESAMPLES, seed: int = SEED) -> PairedTest:
    """Paired permutation test of mean(a) == mean(b); a[i] and b[i] are two systems' scores on the same item."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
        raise ValueError(f"paired_test needs two non-empty 1-d arrays of the same length, got {x.shape} and {y.shape}")
    diff = x - y
    if np.all(diff == 0):
        p, method = 1.0, "identical scores on every item"
    elif np.count_nonzero(diff) == 1:
        p, method = 1.0, "exact paired permutation test: a single item differs, and swapping it only flips the sign"
    else:
        # Items where both systems score the same are unchanged by a swap: leaving them out gives the same p-value
        # and lets more tests be exact.
        keep = diff != 0
        res = stats.permutation_test((x[keep], y[keep]), lambda u, v, axis=-1: np.mean(u - v, axis=axis),
                                     permutation_type="samples", alternative="two-sided", vectorized=True,
                                     n_resamples=n_resamples, rng=np.random.default_rng(seed))
        exact = 2 ** int(keep.sum()) <= n_resamples
        p = float(res.pvalue)
        method = ("exact" if exact else f"Monte Carlo ({n_resamples} draws, seed {seed})") + \
            " paired permutation test (swapping the two scores of an item), two-sided, on the mean difference"
    return PairedTest(n=len(x), mean_a=float(x.mean()), mean_b=float(y.mean()), difference=float(diff.mean()),
                      p_value=p, method=method)


def paired_items(a: Mapping[str, float], b: Mapping[str, float], what: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Two {item id: score} maps as aligned arrays; a paired test needs the same items on both sides."""
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        raise PairingError(f"{what or 'paired test'}: the two results are not over the same items "
                           f"({len(only_a)} only in the first, e.g. {only_a[:3]}; {len(only_b)} only in the second, "
                           f"e.g. {only_b[:3]})")
    ids = sorted(a)
    return np.array([a[i] for i in ids], dtype=np.float64), np.array([b[i] for i in ids], dtype=np.float64)
