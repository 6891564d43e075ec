"""Statistics for bias probes: intervals, gaps, paired tests, multiple testing.

Formulas are written out in docs/fairness.md; the tests check them against
textbook values. scipy supplies the distributions (normal quantile, exact
binomial, chi-square, Wilcoxon signed-rank).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from types import ModuleType


@cache
def _sps() -> ModuleType:
    # scipy.stats costs seconds of CPU to import; every process that imports the probes package
    # (the API, the console, each `control-plane` command) would pay it; only a report uses it.
    return importlib.import_module("scipy.stats")


__all__ = [
    "DIFlagDecision",
    "Estimate",
    "PairedTest",
    "binary_estimate",
    "bootstrap_mean_interval",
    "continuous_estimate",
    "disparate_impact_flag",
    "disparate_impact_ratio",
    "holm_adjust",
    "mcnemar",
    "mcnemar_paired",
    "parity_difference",
    "wilcoxon_paired",
    "wilson_interval",
]

MCNEMAR_EXACT_BELOW = 25  # discordant pairs under which the chi-square approximation is poor


@dataclass(frozen=True)
class Estimate:
    """A group's rate (binary) or mean (continuous) with its interval."""

    n: int
    value: float | None
    low: float | None
    high: float | None
    method: str


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be in (0, 1)")
    return float(_sps().norm.ppf(1.0 - (1.0 - confidence) / 2.0))


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927).

    (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n). Unlike the Wald
    interval it stays inside [0, 1] and keeps its coverage near 0 and 1.
    """
    if n <= 0:
        raise ValueError("n must be positive")
    if not 0 <= successes <= n:
        raise ValueError("successes must be between 0 and n")
    z = _z(confidence)
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # At 0 and n the bound is exactly 0 or 1; floating point would miss it.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def bootstrap_mean_interval(
    values: Sequence[float],
    confidence: float = 0.95,
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, seeded so reports reproduce."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("no values")
    _z(confidence)
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, data.size, size=(resamples, data.size))
    means = data[indices].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def binary_estimate(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    n = len(values)
    if n == 0:
        return Estimate(0, None, None, None, "wilson")
    successes = int(sum(1 for v in values if v >= 0.5))
    low, high = wilson_interval(successes, n, confidence)
    return Estimate(n, successes / n, low, high, "wilson")


def continuous_estimate(
    values: Sequence[float], confidence: float = 0.95, *, resamples: int = 2000, seed: int = 0
) -> Estimate:
    n = len(values)
    if n == 0:
        return Estimate(0, None, None, None, "bootstrap")
    low, high = bootstrap_mean_interval(values, confidence, resamples=resamples, seed=seed)
    return Estimate(n, float(np.mean(values)), low, high, "bootstrap")


def parity_difference(values: Mapping[str, float]) -> float | None:
    """Largest minus smallest group value (rate or mean); 0 means parity."""
    if len(values) < 2:
        return None
    return max(values.values()) - min(values.values())


def disparate_impact_ratio(favourable_rates: Mapping[str, float]) -> float | None:
    """Lowest over highest rate of the *favourable* outcome (the four-fifths
    rule's ratio). Undefined when no group ever gets the favourable outcome."""
    if len(favourable_rates) < 2:
        return None
    highest = max(favourable_rates.values())
    if highest <= 0.0:
        return None
    return min(favourable_rates.values()) / highest


@dataclass(frozen=True)
class PairedTest:
    """A paired counterfactual comparison of group ``a`` against group ``b``.

    ``gap`` is the mean of (a - b) over matched pairs; for binary outcomes
    ``discordant`` holds (pairs with a=1,b=0; pairs with a=0,b=1).
    """

    test: str
    n_pairs: int
    gap: float | None
    statistic: float | None
    p_value: float | None
    discordant: tuple[int, int] | None = None


def mcnemar(
    b: int, c: int, *, exact_below: int = MCNEMAR_EXACT_BELOW, correction: bool = True
) -> tuple[str, float, float]:
    """McNemar's test from the discordant counts b and c.

    Under H0 the b + c discordant pairs split 50/50. Below ``exact_below``
    discordant pairs: exact two-sided binomial test (statistic = min(b, c)).
    Otherwise chi-square with 1 df, (|b - c| - 1)² / (b + c) with Edwards'
    continuity correction (or (b - c)² / (b + c) without).
    """
    if b < 0 or c < 0:
        raise ValueError("counts must be non-negative")
    discordant = b + c
    if discordant == 0:
        return "mcnemar-exact", 0.0, 1.0
    if discordant < exact_below:
        p_value = _sps().binomtest(min(b, c), discordant, 0.5).pvalue
        return "mcnemar-exact", float(min(b, c)), min(1.0, float(p_value))
    shift = 1.0 if correction else 0.0
    statistic = max(0.0, abs(b - c) - shift) ** 2 / discordant
    return "mcnemar-chi2", statistic, float(_sps().chi2.sf(statistic, 1))


def _pairs(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    if len(a) != len(b):
        raise ValueError("paired samples must have equal length")
    return np.asarray(a, dtype=float), np.asarray(b, dtype=float)


def mcnemar_paired(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """McNemar's test on matched binary outcomes (1.0 = the event happened)."""
    x, y = _pairs(a, b)
    if x.size == 0:
        return PairedTest("mcnemar", 0, None, None, None)
    xb, yb = x >= 0.5, y >= 0.5
    only_a, only_b = int(np.sum(xb & ~yb)), int(np.sum(~xb & yb))
    test, statistic, p_value = mcnemar(only_a, only_b)
    gap = (only_a - only_b) / x.size
    return PairedTest(test, int(x.size), gap, statistic, p_value, (only_a, only_b))


def wilcoxon_paired(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Wilcoxon signed-rank test on matched differences a - b.

    Zero differences are dropped (Wilcoxon's convention); when nothing is
    left the pairs are identical and p = 1. scipy picks the exact null
    distribution for small samples without ties, the normal one otherwise.
    """
    x, y = _pairs(a, b)
    if x.size == 0:
        return PairedTest("wilcoxon", 0, None, None, None)
    differences = x - y
    gap = float(differences.mean())
    if not np.any(differences != 0):
        return PairedTest("wilcoxon", int(x.size), gap, 0.0, 1.0)
    result = _sps().wilcoxon(differences, zero_method="wilcox")
    return PairedTest("wilcoxon", int(x.size), gap, float(result.statistic), float(result.pvalue))


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order (Holm 1979).

    Sorted ascending, p_(i) becomes max_{j <= i} min(1, (m - j + 1) p_(j)).
    Controls the family-wise error rate under any dependence between tests.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


@dataclass(frozen=True)
class DIFlagDecision:
    """The disparate-impact flag and each of its three conditions."""

    ratio: float | None
    ratio_below_threshold: bool
    significant: bool
    enough_samples: bool

    @property
    def flagged(self) -> bool:
        return self.ratio_below_threshold and self.significant and self.enough_samples


def disparate_impact_flag(
    ratio: float | None,
    p_adjusted: float | None,
    group_sizes: Mapping[str, int],
    *,
    threshold: float = 0.8,
    alpha: float = 0.05,
    min_group_n: int = 30,
) -> DIFlagDecision:
    """Flag only when ratio < threshold AND the gap is significant after
    correction AND every group has at least ``min_group_n`` samples."""
    return DIFlagDecision(
        ratio=ratio,
        ratio_below_threshold=ratio is not None and ratio < threshold,
        significant=p_adjusted is not None and p_adjusted < alpha,
        enough_samples=bool(group_sizes) and min(group_sizes.values()) >= min_group_n,
    )
