"""Tests for beton_pipeline.core.stats against independent implementations.

References: scipy.stats.fisher_exact / chisquare, statsmodels (pooled z-test, Wilson, Newcombe,
log risk-ratio interval, BH), an exact 50-digit Decimal Fisher computation, and the Katz
formula re-implemented row by row with the ``math`` module.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import warnings
from decimal import Decimal, localcontext
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sp_stats
from statsmodels.stats import proportion as sm_prop
from statsmodels.stats.multitest import multipletests

from beton_pipeline.core import stats as bs

# Any warning raised while these tests run (numpy floating-point warnings in particular) fails.
pytestmark = pytest.mark.filterwarnings("error")

RTOL = 1e-9
ATOL = 1e-12
HYP = settings(max_examples=60, deadline=None)


# --------------------------------------------------------------------------------------------
# helpers / independent references
# --------------------------------------------------------------------------------------------
def random_tables(n: int, max_n: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    n1 = rng.integers(1, max_n + 1, n)
    n2 = rng.integers(1, max_n + 1, n)
    # mix of rates, including rates at or near 0 and 1
    r1 = rng.choice([0.0, 0.02, 0.1, 0.3, 0.5, 0.9, 1.0], n)
    r2 = rng.choice([0.0, 0.02, 0.1, 0.3, 0.5, 0.9, 1.0], n)
    a = np.clip(rng.binomial(n1, r1), 0, n1)
    c = np.clip(rng.binomial(n2, r2), 0, n2)
    return a, n1, c, n2


def scipy_fisher(a, n1, c, n2) -> np.ndarray:
    return np.array(
        [
            sp_stats.fisher_exact([[int(x), int(m - x)], [int(y), int(k - y)]]).pvalue
            for x, m, y, k in zip(a, n1, c, n2, strict=True)
        ]
    )


def exact_fisher(a: int, n1: int, c: int, n2: int) -> float:
    """Two-sided Fisher p-value with 50-digit Decimal arithmetic (pmf ratios are exact rationals)."""
    with localcontext() as ctx:
        ctx.prec = 50
        k = a + c
        lo, hi = max(0, k - n2), min(n1, k)
        vals = [Decimal(1)]
        for x in range(lo, hi):
            vals.append(vals[-1] * Decimal((n1 - x) * (k - x)) / Decimal((x + 1) * (n2 - k + x + 1)))
        bound = vals[a - lo] * (1 + Decimal("1e-7"))
        return float(sum(v for v in vals if v <= bound) / sum(vals))


def katz_reference(a, n1, c, n2, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Katz log interval, row by row with ``math`` (Haldane-Anscombe +0.5 per cell on zeros)."""
    z = sp_stats.norm.ppf(1 - (1 - level) / 2)
    lows, highs = [], []
    for x, m, y, k in zip(a, n1, c, n2, strict=True):
        x, m, y, k = float(x), float(m), float(y), float(k)
        if x == 0 or y == 0:
            x, y, m, k = x + 0.5, y + 0.5, m + 1.0, k + 1.0
        log_rr = math.log(x / m) - math.log(y / k)
        se = math.sqrt(1 / x - 1 / m + 1 / y - 1 / k)
        lows.append(math.exp(log_rr - z * se))
        highs.append(math.exp(log_rr + z * se))
    return np.array(lows), np.array(highs)


@st.composite
def table_lists(draw, max_n: int = 400, min_count: int = 0, max_size: int = 25):
    size = draw(st.integers(1, max_size))
    n1 = np.array(draw(st.lists(st.integers(max(1, min_count), max_n), min_size=size, max_size=size)))
    n2 = np.array(draw(st.lists(st.integers(max(1, min_count), max_n), min_size=size, max_size=size)))
    u1 = np.array(draw(st.lists(st.floats(0, 1), min_size=size, max_size=size)))
    u2 = np.array(draw(st.lists(st.floats(0, 1), min_size=size, max_size=size)))
    a = np.clip(np.round(u1 * n1).astype(np.int64), min_count, n1)
    c = np.clip(np.round(u2 * n2).astype(np.int64), min_count, n2)
    return a, n1, c, n2


p_value_lists = st.lists(
    st.one_of(st.floats(0, 1), st.sampled_from([0.0, 0.01, 0.05, 0.05, 0.5, 1.0])),
    min_size=0,
    max_size=60,
)


# --------------------------------------------------------------------------------------------
# module hygiene
# --------------------------------------------------------------------------------------------
def test_module_imports_only_numpy_and_scipy() -> None:
    tree = ast.parse(Path(bs.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add((node.module or "").split(".")[0])
    assert roots <= {"__future__", "dataclasses", "numpy", "scipy"}, roots


def test_public_functions_are_annotated_and_documented() -> None:
    for name in bs.__all__:
        obj = getattr(bs, name)
        assert obj.__doc__ and len(obj.__doc__) > 80, name
        if callable(obj) and not isinstance(obj, type):
            assert "return" in obj.__annotations__, name
            assert "Reference" in obj.__doc__, name


# --------------------------------------------------------------------------------------------
# Fisher exact
# --------------------------------------------------------------------------------------------
def test_fisher_matches_scipy_on_random_tables() -> None:
    a, n1, c, n2 = random_tables(400, 300, seed=1)
    # Both sides compute tiny p-values with full relative accuracy, so no absolute slack.
    got = bs.fisher_exact_pvalue(a, n1, c, n2)
    np.testing.assert_allclose(got, scipy_fisher(a, n1, c, n2), rtol=RTOL, atol=0)


def test_fisher_matches_scipy_exhaustively_on_small_tables() -> None:
    rows = [(a, n1, c, n2) for n1 in range(0, 9) for n2 in range(0, 9) for a in range(n1 + 1) for c in range(n2 + 1)]
    a, n1, c, n2 = np.array(rows).T
    got = bs.fisher_exact_pvalue(a, n1, c, n2)
    np.testing.assert_allclose(got, scipy_fisher(a, n1, c, n2), rtol=RTOL, atol=0)


@pytest.mark.parametrize(
    "table",
    [
        (100_000, 10**7, 101_000, 10**7),  # 1% vs 1.01%, support of ~2e5 tables
        (5, 10**7, 30, 10**7),
        (0, 10**7, 40, 10**7),
        (50_000, 100_000, 50_500, 100_000),
        (1_000, 10**6, 1_300, 10**6),
    ],
)
def test_fisher_large_margins(table: tuple[int, int, int, int]) -> None:
    a, n1, c, n2 = table
    got = float(bs.fisher_exact_pvalue(a, n1, c, n2))
    # Against an exact 50-digit computation the vectorised result is accurate to ~1e-15.
    assert got == pytest.approx(exact_fisher(*table), rel=1e-12)
    # scipy's own (Boost) pmf drifts by up to ~1.3e-9 relative at N = 2e7 (measured against the
    # exact reference above), so the scipy comparison gets a correspondingly wider tolerance.
    ref = sp_stats.fisher_exact([[a, n1 - a], [c, n2 - c]]).pvalue
    assert got == pytest.approx(ref, rel=5e-9)


def test_fisher_table_with_support_larger_than_chunk() -> None:
    # Supports of 1 .. 6001 tables; a budget of 1_000 cells forces many chunks and puts every
    # table with a support > 1_000 in a chunk of its own.
    a = np.array([3_000, 2_900, 0, 7, 40, 6_000, 1, 55])
    n1 = np.array([6_000, 6_000, 10, 20, 100, 9_000, 1, 500])
    c = np.array([3_100, 3_300, 4, 1, 60, 2_000, 0, 45])
    n2 = np.array([6_000, 7_000, 10, 25, 100, 3_000, 1, 500])
    small_chunks = bs.fisher_exact_pvalue(a, n1, c, n2, max_grid_cells=1_000)
    np.testing.assert_allclose(small_chunks, scipy_fisher(a, n1, c, n2), rtol=RTOL, atol=0)
    np.testing.assert_allclose(small_chunks, bs.fisher_exact_pvalue(a, n1, c, n2), rtol=1e-13, atol=0)


def test_fisher_degenerate_tables_match_scipy() -> None:
    # empty rows / columns: a single possible table, p = 1 (scipy's convention)
    a = np.array([0, 0, 0, 5, 0, 3])
    n1 = np.array([0, 0, 5, 5, 4, 3])
    c = np.array([0, 3, 0, 5, 0, 0])
    n2 = np.array([0, 7, 5, 5, 0, 0])
    got = bs.fisher_exact_pvalue(a, n1, c, n2)
    np.testing.assert_array_equal(got, 1.0)
    np.testing.assert_array_equal(got, scipy_fisher(a, n1, c, n2))


def test_fisher_underflowing_p_value_stays_positive() -> None:
    p = bs.fisher_exact_pvalue(1_000, 10**6, 5_000, 10**6)
    assert 0.0 < p < 1e-300


def test_fisher_broadcasting_and_shapes() -> None:
    p = bs.fisher_exact_pvalue(np.array([1, 2, 3]), 10, 5, 10)
    assert p.shape == (3,)
    np.testing.assert_allclose(p, scipy_fisher([1, 2, 3], [10] * 3, [5] * 3, [10] * 3), rtol=RTOL, atol=0)
    assert bs.fisher_exact_pvalue(1, 10, 5, 10).shape == ()
    assert bs.fisher_exact_pvalue([], [], [], []).shape == (0,)


# --------------------------------------------------------------------------------------------
# pooled z-test
# --------------------------------------------------------------------------------------------
def test_z_test_matches_statsmodels() -> None:
    a, n1, c, n2 = random_tables(300, 5_000, seed=2)
    keep = (a + c > 0) & (a + c < n1 + n2)  # pooled variance > 0 for the references
    a, n1, c, n2 = a[keep], n1[keep], c[keep], n2[keep]
    got = bs.two_proportion_z_pvalue(a, n1, c, n2)
    tables = list(zip(a, n1, c, n2, strict=True))
    ztest = np.array([sm_prop.proportions_ztest([x, y], [m, k])[1] for x, m, y, k in tables])
    with warnings.catch_warnings():
        # statsmodels also evaluates the ratio p1 / p2 (unused here) and warns when p2 == 0
        warnings.simplefilter("ignore", RuntimeWarning)
        score = np.array(
            [
                sm_prop.test_proportions_2indep(x, m, y, k, compare="diff", method="score", correction=False).pvalue
                for x, m, y, k in tables
            ]
        )
    np.testing.assert_allclose(got, ztest, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got, score, rtol=RTOL, atol=ATOL)


def test_z_test_known_values() -> None:
    assert bs.two_proportion_z_pvalue(100, 1000, 150, 1000) < 0.001
    assert bs.two_proportion_z_pvalue(100, 1000, 105, 1000) > 0.5


def test_z_test_edge_cases() -> None:
    a = np.array([0, 10, 3, 6, 0, 5, 0])
    n1 = np.array([10, 10, 9, 18, 0, 10, 0])
    c = np.array([0, 20, 4, 2, 3, 0, 0])
    n2 = np.array([20, 20, 12, 6, 10, 0, 0])
    p = bs.two_proportion_z_pvalue(a, n1, c, n2)
    # both zero, all converted, equal rates (1/3 vs 1/3 and 3/9 vs 4/12) -> exactly 1
    np.testing.assert_array_equal(p[:4], 1.0)
    assert np.isnan(p[4:]).all()  # an empty group


def test_z_test_ten_million_per_group() -> None:
    got = bs.two_proportion_z_pvalue(100_000, 10**7, 101_000, 10**7)
    ref = sm_prop.proportions_ztest([100_000, 101_000], [10**7, 10**7])[1]
    assert got == pytest.approx(ref, rel=RTOL)
    assert 0.02 < got < 0.03
    huge = bs.two_proportion_z_pvalue(10**9, 10**10, 2 * 10**9, 10**10)
    assert huge == 0.0  # z ~ 630: underflows cleanly, no overflow or warning


# --------------------------------------------------------------------------------------------
# intervals
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", [0.8, 0.95, 0.99])
def test_wilson_matches_statsmodels(level: float) -> None:
    rng = np.random.default_rng(3)
    n = np.concatenate([np.arange(1, 12), rng.integers(1, 10**7, 200)])
    s = rng.integers(0, n + 1)
    s[:3] = n[:3]  # all successes
    s[3:11] = 0  # no successes
    low, high = bs.wilson_interval(s, n, level)
    ref_low, ref_high = sm_prop.proportion_confint(s, n, alpha=1 - level, method="wilson")
    np.testing.assert_allclose(low, ref_low, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(high, ref_high, rtol=RTOL, atol=ATOL)


def test_wilson_empty_group_is_nan() -> None:
    low, high = bs.wilson_interval([0, 1], [0, 2])
    assert np.isnan(low[0]) and np.isnan(high[0]) and not np.isnan(low[1])


@pytest.mark.parametrize("level", [0.9, 0.95])
def test_newcombe_matches_statsmodels(level: float) -> None:
    a, n1, c, n2 = random_tables(300, 2_000, seed=4)
    low, high = bs.newcombe_diff_interval(a, n1, c, n2, level)
    ref_low, ref_high = sm_prop.confint_proportions_2indep(
        a, n1, c, n2, compare="diff", method="newcomb", alpha=1 - level
    )
    np.testing.assert_allclose(low, ref_low, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(high, ref_high, rtol=RTOL, atol=ATOL)
    low0, high0 = bs.newcombe_diff_interval([0, 1], [0, 5], [1, 0], [4, 0])
    assert np.isnan(low0).all() and np.isnan(high0).all()


@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_katz_matches_independent_formula_and_statsmodels_log(level: float) -> None:
    a, n1, c, n2 = random_tables(300, 10**6, seed=5)
    a = np.concatenate([a, [0, 0, 7, 10, 1]])
    n1 = np.concatenate([n1, [10, 10, 7, 10, 10**7]])
    c = np.concatenate([c, [5, 0, 0, 10, 1]])
    n2 = np.concatenate([n2, [10, 10, 9, 10, 10**7]])
    low, high, corrected = bs.lift_ci_katz(a, n1, c, n2, level)
    ref_low, ref_high = katz_reference(a, n1, c, n2, level)
    np.testing.assert_allclose(low, ref_low, rtol=RTOL, atol=0)
    np.testing.assert_allclose(high, ref_high, rtol=RTOL, atol=0)
    np.testing.assert_array_equal(corrected, (a == 0) | (c == 0))
    assert np.isfinite(low).all() and np.isfinite(high).all() and (low > 0).all()

    # statsmodels' "log" ratio interval is exactly Katz when both counts are positive ...
    pos = (a > 0) & (c > 0)
    sm_low, sm_high = sm_prop.confint_proportions_2indep(
        a[pos], n1[pos], c[pos], n2[pos], compare="ratio", method="log", alpha=1 - level
    )
    np.testing.assert_allclose(low[pos], sm_low, rtol=RTOL, atol=0)
    np.testing.assert_allclose(high[pos], sm_high, rtol=RTOL, atol=0)
    # ... but its "log-adjusted" zero-cell variant adds 0.5 to n (not +1 as Haldane-Anscombe
    # per cell does), so it intentionally differs from ours on corrected rows.
    zero = ~pos
    adj_low, _ = sm_prop.confint_proportions_2indep(
        a[zero], n1[zero], c[zero], n2[zero], compare="ratio", method="log-adjusted", alpha=1 - level
    )
    assert not np.allclose(low[zero], adj_low, rtol=1e-6)


def test_katz_empty_group_is_nan_and_degenerate_all_converted() -> None:
    low, high, corrected = bs.lift_ci_katz([0, 3, 10], [0, 5, 10], [1, 0, 10], [4, 0, 10])
    assert np.isnan(low[:2]).all() and np.isnan(high[:2]).all() and not corrected[:2].any()
    assert low[2] == high[2] == 1.0  # all converted in both groups: zero variance, RR = 1


# --------------------------------------------------------------------------------------------
# Benjamini-Hochberg and SRM
# --------------------------------------------------------------------------------------------
def test_bh_matches_statsmodels() -> None:
    rng = np.random.default_rng(6)
    p = np.concatenate([rng.uniform(size=500), rng.uniform(0, 1e-4, 50), [0.0, 1.0, 0.05, 0.05, 0.05]])
    rng.shuffle(p)
    ref = multipletests(p, method="fdr_bh")[1]
    np.testing.assert_allclose(bs.benjamini_hochberg(p), ref, rtol=RTOL, atol=0)


def test_bh_ignores_nan() -> None:
    p = np.array([0.01, np.nan, 0.04, 0.03, np.nan, 0.5])
    q = bs.benjamini_hochberg(p)
    finite = ~np.isnan(p)
    assert np.isnan(q[~finite]).all()
    np.testing.assert_allclose(q[finite], multipletests(p[finite], method="fdr_bh")[1], rtol=RTOL, atol=0)
    assert bs.benjamini_hochberg([]).shape == (0,)
    assert np.isnan(bs.benjamini_hochberg([np.nan, np.nan])).all()
    with pytest.raises(ValueError):
        bs.benjamini_hochberg([0.5, 1.5])


@pytest.mark.parametrize(
    ("observed", "share"),
    [
        ([5_000, 5_000], [0.5, 0.5]),
        ([5_000, 5_210], [0.5, 0.5]),
        ([1_000, 2_050, 2_900], [1, 2, 3]),  # unnormalised weights
        ([10**7, 10**7 + 20_000], [0.5, 0.5]),
        ([3, 9], [0.25, 0.75]),
    ],
)
def test_srm_matches_scipy_chisquare(observed: list[int], share: list[float]) -> None:
    obs = np.array(observed)
    expected = np.array(share, dtype=float) / np.sum(share) * obs.sum()
    ref = sp_stats.chisquare(obs, f_exp=expected).pvalue
    assert bs.srm_pvalue(obs, np.array(share, dtype=float)) == pytest.approx(ref, rel=RTOL)


def test_srm_edge_cases() -> None:
    assert np.isnan(bs.srm_pvalue(np.array([0, 0]), np.array([0.5, 0.5])))
    assert np.isnan(bs.srm_pvalue(np.array([10]), np.array([1.0])))
    assert bs.srm_pvalue(np.array([10, 3]), np.array([1.0, 0.0])) == 0.0
    ref = sp_stats.chisquare([10, 12], f_exp=[11, 11]).pvalue
    assert bs.srm_pvalue(np.array([10, 12, 0]), np.array([0.5, 0.5, 0.0])) == pytest.approx(ref, rel=RTOL)


# --------------------------------------------------------------------------------------------
# compare_proportions
# --------------------------------------------------------------------------------------------
def test_compare_proportions_routes_by_expected_cells() -> None:
    a, n1, c, n2 = random_tables(400, 200, seed=7)
    res = bs.compare_proportions(a, n1, c, n2)
    k, total = a + c, n1 + n2
    expected = np.stack([n1 * k, n1 * (total - k), n2 * k, n2 * (total - k)]) / total
    fisher = expected.min(axis=0) < 5
    assert 0 < fisher.sum() < fisher.size
    f, z = fisher, ~fisher
    np.testing.assert_allclose(res.p_value[f], scipy_fisher(a[f], n1[f], c[f], n2[f]), rtol=RTOL, atol=0)
    np.testing.assert_array_equal(res.p_value[z], bs.two_proportion_z_pvalue(a[z], n1[z], c[z], n2[z]))
    assert all(m.startswith("Fisher exact (expected cell < 5); lift CI: Katz log") for m in res.method[f])
    assert all(m.startswith("z-test (pooled); lift CI: Katz log") for m in res.method[~fisher])
    corrected = (a == 0) | (c == 0)
    assert all(m.endswith(", Haldane-Anscombe +0.5 per cell") for m in res.method[corrected])
    assert not any("Haldane" in m for m in res.method[~corrected])
    # threshold is configurable; 0 disables Fisher
    no_fisher = bs.compare_proportions(a, n1, c, n2, fisher_below_expected=0)
    assert all(m.startswith("z-test") for m in no_fisher.method)


def test_compare_proportions_edge_cases() -> None:
    #            zero-with  both-zero  all-conv  n<10  n=0(with)  n=0(both)  1e7 vs 1e7  equal
    a = np.array([0, 0, 10, 2, 0, 0, 100_000, 30])
    n1 = np.array([500, 400, 10, 6, 0, 0, 10**7, 300])
    c = np.array([40, 0, 20, 1, 3, 0, 101_000, 50])
    n2 = np.array([500, 600, 20, 9, 10, 0, 10**7, 500])
    res = bs.compare_proportions(a, n1, c, n2)

    assert res.method.dtype == object and res.method.shape == (8,)
    for arr in (res.rate_with, res.rate_without, res.lift, res.lift_ci_low, res.lift_ci_high, res.p_value):
        assert arr.shape == (8,) and arr.dtype == np.float64
    np.testing.assert_array_equal(res.n_with, n1)
    np.testing.assert_array_equal(res.conversions_without, c)

    # zero conversions in the "with" group: lift 0, corrected finite CI, z-test (cells >= 5)
    assert res.lift[0] == 0.0 and np.isfinite([res.lift_ci_low[0], res.lift_ci_high[0]]).all()
    assert res.method[0] == "z-test (pooled); lift CI: Katz log, Haldane-Anscombe +0.5 per cell"
    assert res.p_value[0] == pytest.approx(sm_prop.proportions_ztest([0, 40], [500, 500])[1], rel=RTOL)
    # both zero: lift undefined, p = 1 (Fisher, expected converted cells are 0), CI finite
    assert np.isnan(res.lift[1]) and res.p_value[1] == 1.0
    assert res.method[1] == ("Fisher exact (expected cell < 5); lift CI: Katz log, Haldane-Anscombe +0.5 per cell")
    lo, hi = katz_reference([0], [400], [0], [600], 0.95)
    assert res.lift_ci_low[1] == pytest.approx(lo[0], rel=RTOL)
    assert res.lift_ci_high[1] == pytest.approx(hi[0], rel=RTOL)
    # all converted in both groups
    assert res.lift[2] == 1.0 and res.p_value[2] == 1.0 and res.lift_ci_low[2] == res.lift_ci_high[2] == 1.0
    assert res.method[2] == "Fisher exact (expected cell < 5); lift CI: Katz log"
    # n < 10
    assert res.p_value[3] == pytest.approx(sp_stats.fisher_exact([[2, 4], [1, 8]]).pvalue, rel=RTOL)
    assert res.rate_with[3] == pytest.approx(2 / 6) and res.lift[3] == pytest.approx((2 / 6) / (1 / 9))
    # empty groups
    for i in (4, 5):
        assert res.method[i] == "insufficient data"
        assert np.isnan([res.p_value[i], res.lift[i], res.lift_ci_low[i], res.lift_ci_high[i]]).all()
    assert np.isnan(res.rate_with[4]) and res.rate_without[4] == pytest.approx(0.3)
    assert np.isnan(res.rate_without[5])
    # 10^7 per group, 1% vs 1.01%
    assert res.method[6] == "z-test (pooled); lift CI: Katz log"
    ref = sm_prop.proportions_ztest([100_000, 101_000], [10**7, 10**7])[1]
    assert res.p_value[6] == pytest.approx(ref, rel=RTOL)
    assert res.lift[6] == pytest.approx(1 / 1.01)
    assert res.lift_ci_low[6] < res.lift[6] < res.lift_ci_high[6] < 1
    # equal rates
    assert res.p_value[7] == 1.0 and res.lift[7] == 1.0


def test_compare_proportions_known_values_and_lift_zero_denominator() -> None:
    res = bs.compare_proportions([100, 100, 5], [1000, 1000, 50], [150, 105, 0], [1000, 1000, 50])
    assert res.p_value[0] < 0.001 and res.p_value[1] > 0.5
    assert res.lift[0] == pytest.approx(100 / 150)
    assert np.isnan(res.lift[2]) and np.isfinite(res.lift_ci_high[2])  # rate_without == 0


def test_compare_proportions_scalar_input_and_frozen_result() -> None:
    res = bs.compare_proportions(3, 10, 1, 12)
    assert res.p_value.shape == (1,) and res.method.shape == (1,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.p_value = np.array([0.5])  # type: ignore[misc]


def test_compare_proportions_is_vectorised_at_scale() -> None:
    a, n1, c, n2 = random_tables(200_000, 100_000, seed=8)
    res = bs.compare_proportions(a, n1, c, n2)
    assert res.p_value.shape == (200_000,) and not np.isnan(res.p_value).any()


@pytest.mark.parametrize(
    "call",
    [
        lambda: bs.compare_proportions([11], [10], [1], [10]),
        lambda: bs.compare_proportions([-1], [10], [1], [10]),
        lambda: bs.compare_proportions([1.5], [10], [1], [10]),
        lambda: bs.compare_proportions([1], [10], [1], [10], confidence_level=1.0),
        lambda: bs.compare_proportions([1], [10], [1], [10], fisher_below_expected=-1),
        lambda: bs.wilson_interval([3], [2]),
        lambda: bs.fisher_exact_pvalue([1], [10], [1], [np.nan]),
        lambda: bs.srm_pvalue(np.array([1, 2]), np.array([0.5])),
    ],
)
def test_invalid_input_raises(call) -> None:
    with pytest.raises(ValueError):
        call()


# --------------------------------------------------------------------------------------------
# property tests
# --------------------------------------------------------------------------------------------
@HYP
@given(p_value_lists)
def test_bh_properties(p: list[float]) -> None:
    p_arr = np.array(p, dtype=float)
    q = bs.benjamini_hochberg(p_arr)
    assert q.shape == p_arr.shape
    assert (q >= p_arr).all() and (q <= 1.0).all()
    order = np.argsort(p_arr, kind="stable")
    assert (np.diff(q[order]) >= 0).all()  # monotone in p
    perm = np.random.default_rng(len(p)).permutation(len(p))
    np.testing.assert_array_equal(bs.benjamini_hochberg(p_arr[perm]), q[perm])


@HYP
@given(table_lists())
def test_p_value_ranges_and_group_swap(tables) -> None:
    a, n1, c, n2 = tables
    pf = bs.fisher_exact_pvalue(a, n1, c, n2)
    pz = bs.two_proportion_z_pvalue(a, n1, c, n2)
    assert ((pf > 0) & (pf <= 1)).all()
    assert ((pz >= 0) & (pz <= 1)).all()
    np.testing.assert_allclose(bs.fisher_exact_pvalue(c, n2, a, n1), pf, rtol=RTOL, atol=0)
    np.testing.assert_array_equal(bs.two_proportion_z_pvalue(c, n2, a, n1), pz)
    low, high, _ = bs.lift_ci_katz(a, n1, c, n2)
    low_s, high_s, _ = bs.lift_ci_katz(c, n2, a, n1)
    np.testing.assert_allclose(low_s, 1 / high, rtol=1e-12, atol=0)
    np.testing.assert_allclose(high_s, 1 / low, rtol=1e-12, atol=0)
    res, res_s = bs.compare_proportions(a, n1, c, n2), bs.compare_proportions(c, n2, a, n1)
    np.testing.assert_allclose(res_s.p_value, res.p_value, rtol=RTOL, atol=0)


@HYP
@given(table_lists(max_n=10**6, min_count=1))
def test_lift_ci_contains_point_estimate(tables) -> None:
    a, n1, c, n2 = tables
    res = bs.compare_proportions(a, n1, c, n2)
    assert (res.lift_ci_low <= res.lift).all() and (res.lift <= res.lift_ci_high).all()
    assert not any("Haldane" in m for m in res.method)
