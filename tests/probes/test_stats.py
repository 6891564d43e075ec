"""Statistics against textbook values."""

from __future__ import annotations

import math

import pytest

from outpost.control_plane.probes.stats import (
    binary_estimate,
    bootstrap_mean_interval,
    continuous_estimate,
    disparate_impact_flag,
    disparate_impact_ratio,
    holm_adjust,
    mcnemar,
    mcnemar_paired,
    parity_difference,
    wilcoxon_paired,
    wilson_interval,
)


def test_wilson_8_of_10_matches_textbook():
    # Newcombe (1998), Table I / Agresti & Coull (1998): 8/10 -> 0.4902 to 0.9433.
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4)
    assert high == pytest.approx(0.9433, abs=1e-4)


def test_wilson_edges_stay_inside_unit_interval():
    low, high = wilson_interval(0, 10)
    assert low == 0.0
    assert high == pytest.approx(0.2775, abs=1e-4)  # Newcombe (1998): 0/10 -> 0 to 0.2775
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(0.7225, abs=1e-4)


def test_wilson_rejects_bad_counts():
    with pytest.raises(ValueError):
        wilson_interval(3, 0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_mcnemar_exact_matches_binomial_textbook_case():
    # Wikipedia's McNemar example: b = 6, c = 16 -> exact two-sided p = 0.0525.
    test, statistic, p_value = mcnemar(6, 16)
    assert test == "mcnemar-exact"
    assert statistic == 6
    assert p_value == pytest.approx(2 * sum(math.comb(22, k) for k in range(7)) / 2**22)
    assert p_value == pytest.approx(0.0525, abs=1e-4)


def test_mcnemar_chi_square_matches_agresti():
    # Agresti, Categorical Data Analysis: presidential approval, n12 = 150, n21 = 86.
    _, statistic, _ = mcnemar(150, 86, correction=False)
    assert statistic == pytest.approx(17.36, abs=0.01)
    test, statistic, p_value = mcnemar(150, 86)
    assert test == "mcnemar-chi2"
    assert statistic == pytest.approx(63**2 / 236)
    assert p_value == pytest.approx(4.11e-5, rel=0.01)


def test_mcnemar_without_discordant_pairs_is_not_significant():
    assert mcnemar(0, 0) == ("mcnemar-exact", 0.0, 1.0)


def test_mcnemar_paired_counts_discordant_pairs():
    a = [1, 1, 1, 0, 0, 1, 1, 0]
    b = [0, 0, 1, 0, 1, 0, 1, 0]
    result = mcnemar_paired(a, b)
    assert result.discordant == (3, 1)
    assert result.n_pairs == 8
    assert result.gap == pytest.approx(2 / 8)
    assert result.p_value == pytest.approx(0.625)  # 2 * P(X <= 1 | n=4, p=1/2)


def test_wilcoxon_matches_darwin_zea_mays():
    # Darwin's cross- vs self-fertilised Zea mays differences (Fisher, Design
    # of Experiments): W = 24, exact two-sided p = 0.04126.
    d = [6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75]
    result = wilcoxon_paired(d, [0] * len(d))
    assert result.statistic == 24
    assert result.p_value == pytest.approx(0.041259765625)


def test_wilcoxon_small_exact_and_zero_handling():
    # Five positive differences: exact two-sided p = 2 / 2**5.
    result = wilcoxon_paired([2, 3, 4, 5, 6, 7, 7], [1, 1, 1, 1, 1, 7, 7])
    assert result.p_value == pytest.approx(0.0625)
    identical = wilcoxon_paired([0.1, 0.2], [0.1, 0.2])
    assert identical.p_value == 1.0 and identical.gap == 0.0
    assert wilcoxon_paired([], []).p_value is None


def test_holm_adjustment_values_and_ordering():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, max(0.06, 0.04*1)=0.06
    assert holm_adjust(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm_adjust([0.2, 0.001, 0.5, 0.01, 0.04])
    order = sorted(range(5), key=[0.2, 0.001, 0.5, 0.01, 0.04].__getitem__)
    ranked = [adjusted[i] for i in order]
    assert ranked == sorted(ranked), "Holm keeps the order of the raw p-values"
    assert all(a >= r for a, r in zip(adjusted, [0.2, 0.001, 0.5, 0.01, 0.04], strict=True))
    assert holm_adjust([0.9, 0.8]) == [1.0, 1.0]
    assert holm_adjust([]) == []


def test_parity_and_disparate_impact_ratio():
    assert parity_difference({"a": 0.9, "b": 0.6, "c": 0.75}) == pytest.approx(0.3)
    assert disparate_impact_ratio({"a": 0.9, "b": 0.6}) == pytest.approx(0.6 / 0.9)
    assert disparate_impact_ratio({"a": 0.0, "b": 0.0}) is None
    assert parity_difference({"a": 1.0}) is None


SIZES_OK = {"a": 30, "b": 45}


def test_di_flag_needs_all_three_conditions():
    assert disparate_impact_flag(0.5, 0.001, SIZES_OK).flagged


def test_di_flag_not_raised_when_ratio_is_at_or_above_threshold():
    decision = disparate_impact_flag(0.8, 0.001, SIZES_OK)
    assert not decision.ratio_below_threshold and not decision.flagged
    assert decision.significant and decision.enough_samples


def test_di_flag_not_raised_when_not_significant():
    decision = disparate_impact_flag(0.5, 0.05, SIZES_OK)
    assert decision.ratio_below_threshold and not decision.significant
    assert not decision.flagged
    assert not disparate_impact_flag(0.5, None, SIZES_OK).flagged


def test_di_flag_not_raised_when_a_group_has_fewer_than_30():
    decision = disparate_impact_flag(0.5, 0.001, {"a": 29, "b": 500})
    assert decision.ratio_below_threshold and decision.significant
    assert not decision.enough_samples and not decision.flagged


def test_estimates_and_seeded_bootstrap():
    estimate = binary_estimate([1.0] * 8 + [0.0] * 2)
    assert estimate.value == 0.8 and estimate.low == pytest.approx(0.4902, abs=1e-4)
    values = [0.1, 0.5, 0.3, 0.9, 0.2, 0.4, 0.8, 0.6]
    first = bootstrap_mean_interval(values, seed=7)
    assert first == bootstrap_mean_interval(values, seed=7)
    assert first[0] < sum(values) / len(values) < first[1]
    assert continuous_estimate([]).value is None
    # Percentile bootstrap of a normal mean is close to the t interval.
    big = [float(i % 10) for i in range(400)]
    low, high = bootstrap_mean_interval(big, resamples=4000)
    assert low == pytest.approx(4.5 - 1.96 * 2.876 / 20, abs=0.03)
    assert high == pytest.approx(4.5 + 1.96 * 2.876 / 20, abs=0.03)
