"""Tests for beton_pipeline.core.stratified against independent implementations.

References: statsmodels ``StratifiedTable`` (CMH test, MH pooled risk and odds ratios, the
Robins–Breslow–Greenland interval) and ``Table2x2`` (Katz interval of a single table); scipy
``chi2_contingency`` and ``chi2``; the Greenland–Robins variance, the Mantel–Fleiss distance and the
Hyndman–Fan quantile rule re-implemented here from their published formulas, stratum by stratum with
the ``math`` module; per-stratum counts recounted with dense numpy masks.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sp_stats
from statsmodels.stats.contingency_tables import StratifiedTable, Table2x2

from beton_pipeline.core import stratified as bst
from beton_pipeline.core.candidates import CandidateMatrix
from beton_pipeline.core.stats import compare_proportions, lift_ci_katz, log_lift_and_variance

pytestmark = pytest.mark.filterwarnings("error")

RTOL = 1e-9
HYP = settings(max_examples=60, deadline=None)


# --------------------------------------------------------------------------------------------
# helpers / independent references
# --------------------------------------------------------------------------------------------
def random_stratified(n_candidates: int, n_strata: int, max_n: int, seed: int, min_n: int = 1):
    """Candidates × strata tables with a mix of rates (0 and 1 included) and stratum sizes."""
    rng = np.random.default_rng(seed)
    n1 = rng.integers(min_n, max_n + 1, (n_candidates, n_strata))
    n2 = rng.integers(min_n, max_n + 1, (n_candidates, n_strata))
    base = rng.choice([0.0, 0.03, 0.1, 0.3, 0.6, 1.0], (n_candidates, n_strata))
    ratio = rng.choice([0.5, 1.0, 1.5, 3.0], (n_candidates, 1))
    a = rng.binomial(n1, np.clip(base * ratio, 0, 1))
    c = rng.binomial(n2, base)
    return a, n1, c, n2


def sm_table(a, n1, c, n2, keep=None) -> StratifiedTable:
    """statsmodels' 2 x 2 x K cube [[a, b], [c, d]] for the strata in `keep` (default: all)."""
    a, n1, c, n2 = (np.asarray(v, dtype=np.float64) for v in (a, n1, c, n2))
    if keep is not None:
        a, n1, c, n2 = a[keep], n1[keep], c[keep], n2[keep]
    return StratifiedTable(np.array([[a, n1 - a], [c, n2 - c]]))


def greenland_robins_reference(a, n1, c, n2) -> tuple[float, float]:
    """(RR_MH, Var log RR_MH), scalar, straight from Greenland & Robins (1985), eqs. for cohort data.

    RR_MH = Σ a_i N0_i / T_i / Σ c_i N1_i / T_i and
    Var = Σ (M1_i N1_i N0_i − a_i c_i T_i) / T_i² / [(Σ a_i N0_i / T_i)(Σ c_i N1_i / T_i)],
    M1_i = a_i + c_i cases, N1_i / N0_i exposed / unexposed, T_i = N1_i + N0_i (strata with an empty arm skipped).
    """
    num = den = var_num = 0.0
    for ai, n1i, ci, n0i in zip(a, n1, c, n2, strict=True):
        ai, n1i, ci, n0i = float(ai), float(n1i), float(ci), float(n0i)
        if n1i == 0 or n0i == 0:
            continue
        t = n1i + n0i
        num += ai * n0i / t
        den += ci * n1i / t
        var_num += ((ai + ci) * n1i * n0i - ai * ci * t) / (t * t)
    return num / den, var_num / (num * den)


def mantel_fleiss_reference(a, n1, c, n2) -> float:
    """min(Σ E_k − Σ max(0, n1_k − (N_k − K_k)), Σ min(n1_k, K_k) − Σ E_k) (Mantel & Fleiss 1980)."""
    expected = low = high = 0.0
    for ai, n1i, ci, n2i in zip(a, n1, c, n2, strict=True):
        if n1i == 0 or n2i == 0:
            continue
        k, n = ai + ci, n1i + n2i
        expected += n1i * k / n
        low += max(0, n1i - (n - k))
        high += min(n1i, k)
    return min(expected - low, high - expected)


def reference_strata(values: np.ndarray, n_strata: int) -> np.ndarray:
    """Hyndman & Fan definition 1 cut points Q(j/K) = x_(ceil(j n / K)) in exact integer arithmetic;
    band = #{j : x > Q(j/K)}, then empty bands dropped (dense rank)."""
    xs = sorted(values.tolist())
    n = len(xs)
    cuts = [xs[-(-j * n // n_strata) - 1] for j in range(1, n_strata)]
    band = [sum(v > cut for cut in cuts) for v in values.tolist()]
    labels = sorted(set(band))
    return np.array([labels.index(b) for b in band], dtype=np.int64)


def mh(a, n1, c, n2, **kwargs) -> bst.MantelHaenszelResult:
    return bst.mantel_haenszel(a, n1, c, n2, **kwargs)


# --------------------------------------------------------------------------------------------
# mantel_haenszel against statsmodels
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("max_n", "n_strata", "seed"), [(8, 3, 1), (40, 5, 2), (400, 10, 3), (5000, 4, 4)])
def test_matches_statsmodels_for_every_candidate(max_n: int, n_strata: int, seed: int) -> None:
    a, n1, c, n2 = random_stratified(150, n_strata, max_n, seed, min_n=1)
    res = mh(a, n1, c, n2)
    res_cc = mh(a, n1, c, n2, continuity_correction=True)
    checked = {"test": 0, "rr": 0, "or": 0}
    for j in range(a.shape[0]):
        table = sm_table(a[j], n1[j], c[j], n2[j])
        k, n = a[j] + c[j], n1[j] + n2[j]
        if np.any((k > 0) & (k < n)):  # the CMH variance is positive
            null = table.test_null_odds(correction=False)
            assert res.statistic[j] == pytest.approx(null.statistic, rel=RTOL, abs=1e-12)
            # statsmodels computes 1 − cdf (absolute error ~1e-16); the survival function keeps tiny p's.
            assert res.p_value[j] == pytest.approx(null.pvalue, abs=1e-14)
            assert res.p_value[j] == pytest.approx(sp_stats.chi2.sf(null.statistic, 1), rel=RTOL)
            if abs(np.sum(a[j] - n1[j] * k / n)) >= 0.5:  # statsmodels does not clip the correction at 0
                corrected = table.test_null_odds(correction=True)
                assert res_cc.statistic[j] == pytest.approx(corrected.statistic, rel=RTOL)
                assert res_cc.p_value[j] == pytest.approx(sp_stats.chi2.sf(corrected.statistic, 1), rel=RTOL)
            checked["test"] += 1
        if res.status[j] == bst.OK:
            assert res.risk_ratio[j] == pytest.approx(table.riskratio_pooled, rel=RTOL)
            checked["rr"] += 1
        if np.isfinite(res.odds_ratio_ci_low[j]):
            assert res.odds_ratio[j] == pytest.approx(table.oddsratio_pooled, rel=RTOL)
            low, high = table.oddsratio_pooled_confint()
            assert res.odds_ratio_ci_low[j] == pytest.approx(low, rel=RTOL)
            assert res.odds_ratio_ci_high[j] == pytest.approx(high, rel=RTOL)
            assert res.log_odds_ratio_variance[j] == pytest.approx(table.logodds_pooled_se**2, rel=RTOL)
            checked["or"] += 1
    assert min(checked.values()) >= 50, checked  # the comparison covered most candidates


def test_odds_ratio_interval_at_other_levels_matches_statsmodels() -> None:
    a, n1, c, n2 = random_stratified(40, 6, 200, seed=11, min_n=20)
    for level in (0.8, 0.9, 0.99):
        res = mh(a, n1, c, n2, confidence_level=level)
        for j in np.flatnonzero(np.isfinite(res.odds_ratio_ci_low)):
            low, high = sm_table(a[j], n1[j], c[j], n2[j]).oddsratio_pooled_confint(alpha=1 - level)
            assert res.odds_ratio_ci_low[j] == pytest.approx(low, rel=RTOL)
            assert res.odds_ratio_ci_high[j] == pytest.approx(high, rel=RTOL)


def test_strata_with_an_empty_arm_contribute_nothing() -> None:
    a, n1, c, n2 = random_stratified(60, 6, 50, seed=5, min_n=1)
    # Empty one arm in some strata, and make some strata 0 or 1 accounts in all.
    rng = np.random.default_rng(6)
    empty_with = rng.random(a.shape) < 0.2
    empty_without = (rng.random(a.shape) < 0.2) & ~empty_with
    n1 = np.where(empty_with, 0, n1)
    a = np.where(empty_with, 0, a)
    n2 = np.where(empty_without, 0, n2)
    c = np.where(empty_without, 0, c)
    n1[:, 0], a[:, 0], n2[:, 0], c[:, 0] = 1, 1, 0, 0  # a one-account stratum
    n1[:, 1], a[:, 1], n2[:, 1], c[:, 1] = 0, 0, 0, 0  # an empty stratum
    res = mh(a, n1, c, n2)
    informative = (n1 > 0) & (n2 > 0)
    np.testing.assert_array_equal(res.n_informative_strata, informative.sum(axis=1))
    for j in range(a.shape[0]):
        keep = informative[j]
        if not keep.any():
            assert res.status[j] == bst.NO_INFORMATIVE_STRATUM
            continue
        only = mh(a[j, keep], n1[j, keep], c[j, keep], n2[j, keep])
        for field in ("risk_ratio", "risk_ratio_ci_low", "odds_ratio", "statistic", "p_value", "mantel_fleiss"):
            np.testing.assert_allclose(getattr(res, field)[j], getattr(only, field)[0], rtol=1e-12, equal_nan=True)
        table = sm_table(a[j], n1[j], c[j], n2[j], keep)
        if res.status[j] == bst.OK:
            assert res.risk_ratio[j] == pytest.approx(table.riskratio_pooled, rel=RTOL)
            assert res.statistic[j] == pytest.approx(table.test_null_odds().statistic, rel=RTOL, abs=1e-12)


# --------------------------------------------------------------------------------------------
# Greenland–Robins variance of the log risk ratio
# --------------------------------------------------------------------------------------------
def test_single_stratum_variance_is_katz() -> None:
    """(a) One stratum: RR_MH is the crude lift and its interval is the Katz interval."""
    a, n1, c, n2 = random_stratified(300, 1, 500, seed=7, min_n=1)
    res = mh(a, n1, c, n2)
    ok = (a[:, 0] > 0) & (c[:, 0] > 0)
    assert ok.sum() > 150
    katz_low, katz_high, _ = lift_ci_katz(a[:, 0], n1[:, 0], c[:, 0], n2[:, 0])
    _, katz_var = log_lift_and_variance(a[:, 0], n1[:, 0], c[:, 0], n2[:, 0])
    crude = compare_proportions(a[:, 0], n1[:, 0], c[:, 0], n2[:, 0])
    np.testing.assert_allclose(res.risk_ratio[ok], crude.lift[ok], rtol=RTOL)
    np.testing.assert_allclose(res.log_risk_ratio_variance[ok], katz_var[ok], rtol=RTOL)
    np.testing.assert_allclose(res.risk_ratio_ci_low[ok], katz_low[ok], rtol=RTOL)
    np.testing.assert_allclose(res.risk_ratio_ci_high[ok], katz_high[ok], rtol=RTOL)
    for j in np.flatnonzero(ok)[:60]:
        t = Table2x2(
            np.array([[a[j, 0], n1[j, 0] - a[j, 0]], [c[j, 0], n2[j, 0] - c[j, 0]]], dtype=float), shift_zeros=False
        )
        low, high = t.riskratio_confint()
        assert res.risk_ratio_ci_low[j] == pytest.approx(low, rel=RTOL)
        assert res.risk_ratio_ci_high[j] == pytest.approx(high, rel=RTOL)


def test_single_stratum_statistic_is_scaled_pearson() -> None:
    a, n1, c, n2 = random_stratified(200, 1, 300, seed=8, min_n=2)
    res = mh(a, n1, c, n2)
    for j in range(a.shape[0]):
        k, n = a[j, 0] + c[j, 0], n1[j, 0] + n2[j, 0]
        if 0 < k < n:
            obs = [[a[j, 0], n1[j, 0] - a[j, 0]], [c[j, 0], n2[j, 0] - c[j, 0]]]
            pearson = sp_stats.chi2_contingency(obs, correction=False).statistic
            assert res.statistic[j] == pytest.approx(pearson * (n - 1) / n, rel=RTOL, abs=1e-12)


# Rothman, K.J. (2012), *Epidemiology: An Introduction*, 2nd ed., ch. 10 (also Rothman, Greenland & Lash,
# *Modern Epidemiology*, 3rd ed., ch. 15): deaths among tolbutamide and placebo patients of the University
# Group Diabetes Program, stratified by age (< 55, >= 55). Crude RR 1.44, Mantel–Haenszel RR 1.33.
UGDP = {"a": [8, 22], "n1": [106, 98], "c": [5, 16], "n2": [120, 85]}


def test_greenland_robins_on_the_textbook_example() -> None:
    """(b) The published formula, written out scalar, on the UGDP tolbutamide tables."""
    rr_ref, var_ref = greenland_robins_reference(**UGDP)
    for level in (0.90, 0.95):
        res = mh(**UGDP, confidence_level=level)
        z = sp_stats.norm.ppf(1 - (1 - level) / 2)
        assert res.risk_ratio[0] == pytest.approx(rr_ref, rel=RTOL)
        assert res.log_risk_ratio_variance[0] == pytest.approx(var_ref, rel=RTOL)
        assert res.risk_ratio_ci_low[0] == pytest.approx(math.exp(math.log(rr_ref) - z * math.sqrt(var_ref)), rel=RTOL)
        assert res.risk_ratio_ci_high[0] == pytest.approx(math.exp(math.log(rr_ref) + z * math.sqrt(var_ref)), rel=RTOL)
    assert round(float(res.risk_ratio[0]), 2) == 1.33  # the book's adjusted figure
    crude = (sum(UGDP["a"]) / sum(UGDP["n1"])) / (sum(UGDP["c"]) / sum(UGDP["n2"]))
    assert round(crude, 2) == 1.44  # the book's crude figure


def test_greenland_robins_on_random_tables() -> None:
    a, n1, c, n2 = random_stratified(200, 7, 60, seed=9, min_n=0)
    res = mh(a, n1, c, n2)
    for j in np.flatnonzero(res.status == bst.OK):
        rr_ref, var_ref = greenland_robins_reference(a[j], n1[j], c[j], n2[j])
        assert res.risk_ratio[j] == pytest.approx(rr_ref, rel=RTOL)
        assert res.log_risk_ratio_variance[j] == pytest.approx(var_ref, rel=RTOL)
        assert res.mantel_fleiss[j] == pytest.approx(mantel_fleiss_reference(a[j], n1[j], c[j], n2[j]), rel=RTOL)
    assert (res.status == bst.OK).sum() > 100


def simulate_common_rr(rr: float, n_rep: int, n_strata: int, stratum_size: int, seed: int):
    """n_rep independent data sets (one per row) of `n_strata` strata sharing risk ratio `rr`, with the
    baseline risk and the share holding the candidate both varying over strata (a confounded design)."""
    rng = np.random.default_rng(seed)
    p0 = np.linspace(0.04, 0.3, n_strata)
    share = np.linspace(0.15, 0.7, n_strata)
    n1 = rng.binomial(stratum_size, share, (n_rep, n_strata))
    n2 = stratum_size - n1
    a = rng.binomial(n1, np.minimum(p0 * rr, 1.0))
    c = rng.binomial(n2, p0)
    return a, n1, c, n2


@pytest.mark.parametrize(
    ("n_strata", "stratum_size"),
    [(5, 400), (100, 12)],  # a few large strata, and the sparse-data limit (many small ones)
)
def test_risk_ratio_interval_covers_the_true_ratio(n_strata: int, stratum_size: int) -> None:
    """(c) ~95 % coverage of the common risk ratio (4,000 data sets: the Monte-Carlo SE is 0.35 points)."""
    a, n1, c, n2 = simulate_common_rr(1.5, 4000, n_strata, stratum_size, seed=10 + n_strata)
    res = mh(a, n1, c, n2)
    ok = res.status == bst.OK
    assert ok.mean() > 0.99
    covered = (res.risk_ratio_ci_low[ok] <= 1.5) & (res.risk_ratio_ci_high[ok] >= 1.5)
    assert 0.935 <= covered.mean() <= 0.965, covered.mean()
    # the crude lift is confounded: its interval misses 1.5 far more often
    crude = compare_proportions(a.sum(1), n1.sum(1), c.sum(1), n2.sum(1))
    assert ((crude.lift_ci_low <= 1.5) & (crude.lift_ci_high >= 1.5)).mean() < 0.8


def test_cmh_test_holds_its_size_under_the_null() -> None:
    a, n1, c, n2 = simulate_common_rr(1.0, 4000, 5, 300, seed=12)
    res = mh(a, n1, c, n2)
    assert 0.04 <= (res.p_value < 0.05).mean() <= 0.06
    crude = compare_proportions(a.sum(1), n1.sum(1), c.sum(1), n2.sum(1))
    assert (crude.p_value < 0.05).mean() > 0.5  # marginally, the confounded null looks like an effect


# --------------------------------------------------------------------------------------------
# edge cases
# --------------------------------------------------------------------------------------------
def test_edge_cases_have_documented_results() -> None:
    #            stratum 1       stratum 2
    a = np.array(
        [
            [3, 0],  # 0: stratum 2 is empty (all zeros)
            [0, 0],  # 1: no stratum has both arms
            [10, 4],  # 2: everybody converted in stratum 1
            [0, 0],  # 3: nobody converted anywhere
            [5, 7],  # 4: candidate held by everyone in stratum 2
            [0, 0],  # 5: no conversion with the candidate
            [6, 5],  # 6: no conversion without the candidate
            [10, 20],  # 7: everybody converted everywhere
        ]
    )
    n1 = np.array([[10, 0], [5, 0], [10, 30], [10, 10], [20, 40], [10, 10], [10, 10], [10, 20]])
    c = np.array([[2, 0], [0, 3], [20, 5], [0, 0], [4, 0], [8, 6], [0, 0], [5, 30]])
    n2 = np.array([[20, 0], [0, 9], [20, 60], [20, 20], [30, 0], [20, 20], [20, 20], [5, 30]])
    res = mh(a, n1, c, n2)
    assert list(res.status) == [
        bst.OK,
        bst.NO_INFORMATIVE_STRATUM,
        bst.OK,
        bst.NO_OUTCOME_VARIATION,
        bst.OK,
        bst.NO_CONVERSIONS_WITH,
        bst.NO_CONVERSIONS_WITHOUT,
        bst.NO_OUTCOME_VARIATION,
    ]
    np.testing.assert_array_equal(res.n_informative_strata, [1, 0, 2, 2, 1, 2, 2, 2])
    # 0 and 4: the uninformative stratum is ignored, so the result is the single table's
    for j in (0, 4):
        single = mh(a[j, :1], n1[j, :1], c[j, :1], n2[j, :1])
        assert res.risk_ratio[j] == pytest.approx(single.risk_ratio[0], rel=1e-12)
        assert res.p_value[j] == pytest.approx(single.p_value[0], rel=1e-12)
    # 1: every field NaN
    for field in ("risk_ratio", "risk_ratio_ci_low", "odds_ratio", "statistic", "z", "p_value"):
        assert np.isnan(getattr(res, field)[1])
    # 2: the all-converted stratum adds n1 n2 / N to both sums of the risk ratio and nothing to the test
    assert res.risk_ratio[2] == pytest.approx(sm_table(a[2], n1[2], c[2], n2[2]).riskratio_pooled, rel=RTOL)
    only_2 = mh(a[2, 1:], n1[2, 1:], c[2, 1:], n2[2, 1:])
    assert res.statistic[2] == pytest.approx(only_2.statistic[0], rel=1e-12)
    # 3: no variance: statistic 0, p 1, ratios undefined
    assert (res.statistic[3], res.p_value[3]) == (0.0, 1.0)
    assert np.isnan(res.risk_ratio[3]) and np.isnan(res.risk_ratio_ci_low[3])
    # 5 and 6: the ratio is 0 or infinite, the interval NaN, the test still valid
    assert res.risk_ratio[5] == 0.0 and np.isinf(res.risk_ratio[6])
    assert np.isnan(res.risk_ratio_ci_low[5:7]).all() and np.isnan(res.risk_ratio_ci_high[5:7]).all()
    for j in (5, 6):
        expected = sm_table(a[j], n1[j], c[j], n2[j]).test_null_odds()
        assert res.p_value[j] == pytest.approx(sp_stats.chi2.sf(expected.statistic, 1), rel=RTOL)
        assert res.p_value[j] < 0.05
    # 7: everybody converted: both rates are 1 in every stratum, a risk ratio of exactly 1
    assert (res.risk_ratio[7], res.risk_ratio_ci_low[7], res.risk_ratio_ci_high[7]) == (1.0, 1.0, 1.0)
    assert np.isnan(res.odds_ratio[7])


def test_continuity_correction_is_clipped_at_zero() -> None:
    # O − E = 0.25 in one stratum: the corrected deviation is 0, so p = 1
    res = mh([1], [2], [1], [6], continuity_correction=True)
    assert (res.statistic[0], res.p_value[0]) == (0.0, 1.0)
    assert res.continuity_correction


def test_rejects_invalid_input() -> None:
    with pytest.raises(ValueError, match="exceed"):
        mh([[5]], [[4]], [[0]], [[3]])
    with pytest.raises(ValueError, match="non-negative"):
        mh([[-1]], [[4]], [[0]], [[3]])
    with pytest.raises(ValueError, match="confidence_level"):
        mh([[1]], [[4]], [[0]], [[3]], confidence_level=1.0)
    with pytest.raises(ValueError, match="1-D"):
        mh(np.ones((2, 2, 2)), np.ones((2, 2, 2)), np.ones((2, 2, 2)), np.ones((2, 2, 2)))


# --------------------------------------------------------------------------------------------
# invariants (hypothesis)
# --------------------------------------------------------------------------------------------
@st.composite
def stratified_tables(draw, max_strata: int = 6, max_n: int = 40):
    k = draw(st.integers(1, max_strata))
    n1 = np.array(draw(st.lists(st.integers(0, max_n), min_size=k, max_size=k)))
    n2 = np.array(draw(st.lists(st.integers(0, max_n), min_size=k, max_size=k)))
    a = np.array([draw(st.integers(0, int(m))) for m in n1])
    c = np.array([draw(st.integers(0, int(m))) for m in n2])
    return a, n1, c, n2


FIELDS = (
    "risk_ratio",
    "risk_ratio_ci_low",
    "risk_ratio_ci_high",
    "odds_ratio",
    "odds_ratio_ci_low",
    "odds_ratio_ci_high",
    "statistic",
    "p_value",
    "mantel_fleiss",
)


@HYP
@given(stratified_tables(), st.randoms(use_true_random=False))
def test_permuting_strata_changes_nothing(tables, random) -> None:
    a, n1, c, n2 = tables
    order = list(range(a.size))
    random.shuffle(order)
    base, permuted = mh(a, n1, c, n2), mh(a[order], n1[order], c[order], n2[order])
    for field in FIELDS:
        np.testing.assert_allclose(getattr(permuted, field), getattr(base, field), rtol=1e-12, atol=1e-14)
    assert list(permuted.status) == list(base.status)


@HYP
@given(stratified_tables(max_strata=1, max_n=200))
def test_one_stratum_is_the_crude_comparison(tables) -> None:
    a, n1, c, n2 = tables
    res = mh(a, n1, c, n2)
    crude = compare_proportions(a, n1, c, n2)
    if n1[0] == 0 or n2[0] == 0:
        assert res.status[0] == bst.NO_INFORMATIVE_STRATUM and np.isnan(crude.lift[0])
        return
    if c[0] > 0:
        assert res.risk_ratio[0] == pytest.approx(crude.lift[0], rel=1e-12)
    if a[0] > 0 and c[0] > 0:  # crude uses the Haldane-Anscombe correction on zero cells; MH gives no interval
        assert res.risk_ratio_ci_low[0] == pytest.approx(crude.lift_ci_low[0], rel=1e-12)
        assert res.risk_ratio_ci_high[0] == pytest.approx(crude.lift_ci_high[0], rel=1e-12)


@st.composite
def independent_within_strata(draw):
    """Strata where holders and non-holders convert at exactly the same rate j/q."""
    k = draw(st.integers(1, 6))
    tables = []
    for _ in range(k):
        q = draw(st.integers(1, 10))
        j = draw(st.integers(0, q))
        m1, m2 = draw(st.integers(1, 20)), draw(st.integers(1, 20))
        tables.append((j * m1, m1 * q, j * m2, m2 * q))
    return tuple(np.array(v) for v in zip(*tables, strict=True))


@HYP
@given(independent_within_strata())
def test_no_association_within_strata_gives_no_adjusted_effect(tables) -> None:
    a, n1, c, n2 = tables
    res = mh(a, n1, c, n2)
    assert res.statistic[0] == pytest.approx(0.0, abs=1e-9)
    assert res.p_value[0] == pytest.approx(1.0, abs=1e-9)
    if a.sum() > 0:  # else nobody converted: the ratios are undefined
        assert res.risk_ratio[0] == pytest.approx(1.0, rel=1e-12)
        assert res.risk_ratio_ci_low[0] <= 1 + 1e-12 and res.risk_ratio_ci_high[0] >= 1 - 1e-12
    if np.isfinite(res.odds_ratio[0]):
        assert res.odds_ratio[0] == pytest.approx(1.0, rel=1e-12)


def test_confounded_marginal_lift_vanishes_within_strata() -> None:
    # Low activity: 10 % hold the candidate, 2 % convert; high activity: 80 % hold it, 30 % convert; within
    # each stratum holders and non-holders convert alike.
    a, n1, c, n2 = np.array([2, 240]), np.array([100, 800]), np.array([18, 60]), np.array([900, 200])
    crude = compare_proportions(a.sum(), n1.sum(), c.sum(), n2.sum())
    res = mh(a, n1, c, n2)
    assert crude.lift[0] > 3.5 and crude.lift_ci_low[0] > 2.5
    assert res.risk_ratio[0] == pytest.approx(1.0, rel=1e-12)
    assert res.risk_ratio_ci_low[0] < 1 < res.risk_ratio_ci_high[0]
    assert res.p_value[0] == pytest.approx(1.0)


@HYP
@given(stratified_tables(), st.integers(2, 50))
def test_scaling_every_count_keeps_the_ratios(tables, k) -> None:
    a, n1, c, n2 = tables
    base, scaled = mh(a, n1, c, n2), mh(k * a, k * n1, k * c, k * n2)
    for field in ("risk_ratio", "odds_ratio"):
        np.testing.assert_allclose(getattr(scaled, field), getattr(base, field), rtol=1e-12)
    # the variances shrink exactly as 1/k
    for field in ("log_risk_ratio_variance", "log_odds_ratio_variance"):
        np.testing.assert_allclose(getattr(scaled, field), getattr(base, field) / k, rtol=1e-10, atol=1e-300)
    assert list(scaled.status) == list(base.status)


# --------------------------------------------------------------------------------------------
# activity_strata and stratified_counts
# --------------------------------------------------------------------------------------------
@HYP
@given(
    st.lists(st.integers(0, 30), min_size=1, max_size=300) | st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=300),
    st.integers(1, 12),
)
def test_activity_strata_follow_the_quantile_rule(values, n_strata) -> None:
    x = np.array(values, dtype=np.float64)
    s = bst.activity_strata(x, n_strata)
    np.testing.assert_array_equal(s.stratum, reference_strata(x, n_strata))
    assert 1 <= s.n_strata <= min(n_strata, np.unique(x).size)
    assert s.size.sum() == x.size and (s.size > 0).all()
    # ties share a stratum, and strata are ordered, non-overlapping ranges of activity
    for v in np.unique(x):
        assert np.unique(s.stratum[x == v]).size == 1
    assert (s.lower <= s.upper).all() and (s.upper[:-1] < s.lower[1:]).all()


def test_activity_strata_on_continuous_and_tied_measures() -> None:
    rng = np.random.default_rng(3)
    s = bst.activity_strata(rng.lognormal(size=10_000), 5)
    np.testing.assert_array_equal(s.size, [2000] * 5)
    tied = np.r_[np.zeros(600), np.arange(1, 401)]  # 60 % at 0
    s = bst.activity_strata(tied, 5)
    assert s.n_strata == 3 and s.size[0] == 600 and s.upper[0] == 0
    assert bst.activity_strata(np.full(50, 7.0), 5).n_strata == 1
    assert bst.activity_strata([], 5).n_strata == 0
    with pytest.raises(ValueError, match="finite"):
        bst.activity_strata([1.0, np.nan], 2)
    with pytest.raises(ValueError, match="positive"):
        bst.activity_strata([1.0], 0)


@pytest.mark.parametrize("seed", [0, 1])
def test_stratified_counts_match_a_recount(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_accounts, n_candidates, n_strata = 500, 40, 6
    dense = rng.random((n_accounts, n_candidates)) < rng.uniform(0.01, 0.9, n_candidates)
    y = rng.random(n_accounts) < 0.2
    strata = rng.integers(0, n_strata - 1, n_accounts)  # the last stratum stays empty
    counts = bst.stratified_counts(sp.csr_matrix(dense.astype(float)), y, strata, n_strata)
    for k in range(n_strata):
        in_k = strata == k
        np.testing.assert_array_equal(counts.n_with[:, k], dense[in_k].sum(axis=0))
        np.testing.assert_array_equal(counts.conversions_with[:, k], dense[in_k & y].sum(axis=0))
        assert counts.n_total[k] == in_k.sum() and counts.conversions_total[k] == (in_k & y).sum()
    np.testing.assert_array_equal(counts.n_without, counts.n_total - counts.n_with)
    np.testing.assert_array_equal(counts.conversions_without, counts.conversions_total - counts.conversions_with)
    # a CandidateMatrix gives the same counts; stored values other than 1 count as membership
    weighted = sp.csr_matrix(dense * rng.integers(1, 5, dense.shape).astype(float))
    matrix = CandidateMatrix(
        np.arange(n_accounts), pl.DataFrame({"key": [f"c{j}" for j in range(n_candidates)]}), weighted
    )
    again = bst.stratified_counts(matrix, y.astype(int), strata, n_strata)
    np.testing.assert_array_equal(again.n_with, counts.n_with)
    np.testing.assert_array_equal(again.conversions_with, counts.conversions_with)


def test_stratified_counts_rejects_bad_input() -> None:
    x = sp.csr_matrix(np.ones((3, 2)))
    with pytest.raises(ValueError, match="0/1"):
        bst.stratified_counts(x, [0, 2, 1], [0, 0, 1], 2)
    with pytest.raises(ValueError, match="strata"):
        bst.stratified_counts(x, [0, 1, 1], [0, 0, 2], 2)
    with pytest.raises(ValueError, match="strata"):
        bst.stratified_counts(x, [0, 1, 1], [0, 1], 2)


# --------------------------------------------------------------------------------------------
# demonstration: an activity proxy loses its lift, a real behaviour keeps it
# --------------------------------------------------------------------------------------------
def test_adjustment_separates_an_activity_proxy_from_a_real_behaviour() -> None:
    """Latent activity L drives every event count (Poisson, rate ∝ L) and conversion (∝ L). `dark_mode`
    events come with activity and do nothing else; accounts that invite a teammate convert 1.8× at equal
    L. Strata: deciles of all events in the window (the candidates' own included, see the design note)."""
    rng = np.random.default_rng(2026)
    n = 20_000
    latent = rng.lognormal(0.0, 0.7, n)
    dark_mode = rng.poisson(3.0 * latent)
    invites = rng.poisson(0.2 * latent)
    other = rng.poisson(30.0 * latent)
    invited = invites >= 1
    converted = rng.random(n) < np.clip(0.05 * latent, 0, 0.6) * np.where(invited, 1.8, 1.0)
    x = sp.csr_matrix(np.column_stack([dark_mode >= 3, invited]).astype(np.float64))

    strata = bst.activity_strata(other + dark_mode + invites, 10)
    counts = bst.stratified_counts(x, converted, strata.stratum, strata.n_strata)
    adjusted = bst.mantel_haenszel(counts.conversions_with, counts.n_with, counts.conversions_without, counts.n_without)
    a, n1 = counts.conversions_with.sum(axis=1), counts.n_with.sum(axis=1)
    marginal = compare_proportions(a, n1, converted.sum() - a, n - n1)

    proxy, real = 0, 1
    assert marginal.lift[proxy] > 2.0 and marginal.lift_ci_low[proxy] > 1.8  # the proxy looks strong
    # Over 30 other seeds the proxy's adjusted lift averages 1.01 and its interval covers 1 in 94 % of them;
    # this seed's 1.15 is one of the higher draws, hence a bound of 1.25 (80 % of the log-lift removed).
    assert adjusted.risk_ratio[proxy] < 1.25 and np.log(adjusted.risk_ratio[proxy]) < 0.25 * np.log(
        marginal.lift[proxy]
    )
    assert adjusted.risk_ratio_ci_low[proxy] < 1 < adjusted.risk_ratio_ci_high[proxy]
    assert adjusted.p_value[proxy] > 0.05
    assert adjusted.risk_ratio_ci_low[real] > 1.3 and adjusted.p_value[real] < 1e-6
    assert list(adjusted.status) == [bst.OK, bst.OK]
