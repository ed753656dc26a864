"""Vectorised two-proportion statistics for signal discovery, backtests, monitoring and A/B readouts.

Every function compares conversion rates of a "with" group (``a`` conversions out of ``n1``)
and a "without" group (``c`` conversions out of ``n2``) for many candidates at once. Inputs
are array-likes that broadcast against each other; everything is computed with numpy array
operations (the only Python loop is over memory-bounded *chunks* in :func:`fisher_exact_pvalue`).

The 2x2 table used throughout::

                 converted   not converted   total
    with             a          n1 - a         n1
    without          c          n2 - c         n2
    total          K = a+c      N - K        N = n1 + n2

Conventions

* Counts must be non-negative integers (int64 or integral floats) with ``a <= n1`` and
  ``c <= n2``; anything else raises ``ValueError``.
* A group with ``n == 0`` carries no information: rates, p-values and intervals are NaN
  (the one exception is :func:`fisher_exact_pvalue`, which mirrors ``scipy.stats.fisher_exact``
  and returns 1 for a table with an empty row or column).
* No floating-point warnings escape: every computation runs under ``np.errstate(all="ignore")``
  and undefined results are set to NaN explicitly.

This module deliberately depends on numpy and scipy only (no statsmodels, no Dagster).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special
from scipy import stats as sp_stats

__all__ = [
    "TwoProportionResult",
    "benjamini_hochberg",
    "compare_proportions",
    "fisher_exact_pvalue",
    "haldane_corrected",
    "lift_ci_katz",
    "log_lift_and_variance",
    "newcombe_diff_interval",
    "srm_pvalue",
    "two_proportion_z_pvalue",
    "wilson_interval",
]

#: Relative tolerance used to decide that a table is "as or less probable" than the observed
#: one in the two-sided Fisher test: ``pmf(x) <= pmf(observed) * (1 + FISHER_RELATIVE_TOLERANCE)``.
#: This is the tolerance of R's ``fisher.test`` (``relErr <- 1 + 10^(-7)``); it makes
#: mathematically tied tables count as ties despite floating-point rounding.
FISHER_RELATIVE_TOLERANCE: float = 1e-7

#: Default upper bound on the number of cells of the padded (tables x support) grid that
#: :func:`fisher_exact_pvalue` materialises at once (32 MB per float64 work array; peak use is
#: about 35 bytes per cell, ~150 MB). Well under the ~2e7-cell ceiling of the design.
#: A single table whose support alone exceeds it is processed in a chunk of its own.
FISHER_MAX_GRID_CELLS: int = 1 << 22

# Labels used in TwoProportionResult.method.
_INSUFFICIENT = "insufficient data"
_Z_LABEL = "z-test (pooled)"
_KATZ_LABEL = "lift CI: Katz log"
_HALDANE_LABEL = "Haldane-Anscombe +0.5 per cell"


# --------------------------------------------------------------------------------------------
# Result type
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TwoProportionResult:
    """Per-candidate comparison of two proportions (all fields are 1-D arrays of equal length).

    Attributes:
        n_with, conversions_with: group size and conversions of the "with" group (int64).
        n_without, conversions_without: same for the "without" group (int64).
        rate_with, rate_without: ``conversions / n``; NaN when ``n == 0``.
        lift: ``rate_with / rate_without``; NaN when ``rate_without == 0`` or either ``n == 0``.
        lift_ci_low, lift_ci_high: Katz log confidence interval for the lift (risk ratio),
            with the Haldane-Anscombe correction when a conversion count is zero (see
            :func:`lift_ci_katz`); NaN when either ``n == 0``.
        p_value: two-sided p-value of the test named in ``method``; NaN when either ``n == 0``.
        method: object array of strings naming the test and the interval per row, e.g.
            ``"z-test (pooled); lift CI: Katz log"`` or
            ``"Fisher exact (expected cell < 5); lift CI: Katz log, Haldane-Anscombe +0.5 per cell"``
            or ``"insufficient data"``.
    """

    n_with: np.ndarray
    conversions_with: np.ndarray
    n_without: np.ndarray
    conversions_without: np.ndarray
    rate_with: np.ndarray
    rate_without: np.ndarray
    lift: np.ndarray
    lift_ci_low: np.ndarray
    lift_ci_high: np.ndarray
    p_value: np.ndarray
    method: np.ndarray


# --------------------------------------------------------------------------------------------
# Input helpers
# --------------------------------------------------------------------------------------------
def _as_count_array(x: object, name: str) -> np.ndarray:
    """Convert ``x`` to an int64 array, rejecting negative, non-finite or non-integral values."""
    arr = np.asarray(x)
    if arr.dtype == object:
        arr = arr.astype(np.float64)
    if arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be finite")
        if not np.all(arr == np.floor(arr)):
            raise ValueError(f"{name} must contain integer counts")
        if arr.size and np.max(np.abs(arr)) > 2.0**62:
            raise ValueError(f"{name} is too large for int64 counts")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind in "iu":
        if arr.dtype.kind == "u" and arr.size and np.max(arr) > np.iinfo(np.int64).max:
            raise ValueError(f"{name} is too large for int64 counts")
        arr = arr.astype(np.int64, copy=False)
    else:
        raise ValueError(f"{name} must be numeric counts, got dtype {arr.dtype}")
    if arr.size and np.min(arr) < 0:
        raise ValueError(f"{name} must be non-negative")
    return arr


def two_group_counts(
    a: object, n1: object, c: object, n2: object
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate and broadcast the four counts of a 2x2 table (returns int64 arrays)."""
    a_, n1_, c_, n2_ = np.broadcast_arrays(
        _as_count_array(a, "a (conversions with)"),
        _as_count_array(n1, "n1 (n with)"),
        _as_count_array(c, "c (conversions without)"),
        _as_count_array(n2, "n2 (n without)"),
    )
    if np.any(a_ > n1_):
        raise ValueError("conversions in the 'with' group exceed its size (a > n1)")
    if np.any(c_ > n2_):
        raise ValueError("conversions in the 'without' group exceed its size (c > n2)")
    return a_, n1_, c_, n2_


def z_critical(confidence_level: float) -> float:
    """Two-sided standard-normal critical value ``z = Phi^-1(1 - (1 - level) / 2)``."""
    level = float(confidence_level)
    if not (0.0 < level < 1.0):
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level!r}")
    return float(sp_stats.norm.ppf(1.0 - (1.0 - level) / 2.0))


# --------------------------------------------------------------------------------------------
# p-values
# --------------------------------------------------------------------------------------------
def two_proportion_z_pvalue(a: object, n1: object, c: object, n2: object) -> np.ndarray:
    """Two-sided pooled two-proportion z-test, vectorised over candidates.

    Formula::

        p1 = a / n1,  p2 = c / n2,  p = (a + c) / (n1 + n2)              (pooled rate)
        z  = (p1 - p2) / sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
        p-value = 2 * Phi(-|z|)

    Conventions: p-value is 1 when the pooled rate is 0 or 1 (no variance, the rates are
    identical) and when ``p1 == p2``; NaN when ``n1 == 0`` or ``n2 == 0``. Everything is
    float64, so counts of 10^7 and beyond neither overflow nor lose precision.

    Identical to ``statsmodels.stats.proportion.proportions_ztest(prop_var=False)`` and to the
    score test of ``test_proportions_2indep(compare="diff", method="score", correction=False)``.

    Reference: Fleiss, Levin & Paik (2003), *Statistical Methods for Rates and Proportions*,
    3rd ed., section 2.6; Agresti (2013), *Categorical Data Analysis*, 3rd ed., section 3.1.

    Returns:
        float64 array with the broadcast shape of the inputs.
    """
    a_, n1_, c_, n2_ = two_group_counts(a, n1, c, n2)
    a_f, n1_f, c_f, n2_f = (v.astype(np.float64) for v in (a_, n1_, c_, n2_))
    with np.errstate(all="ignore"):
        p1 = a_f / n1_f
        p2 = c_f / n2_f
        pooled = (a_f + c_f) / (n1_f + n2_f)
        var = pooled * (1.0 - pooled) * (1.0 / n1_f + 1.0 / n2_f)
        z = (p1 - p2) / np.sqrt(var)
        pvalue = 2.0 * special.ndtr(-np.abs(z))
    no_variance = (a_ + c_ == 0) | (a_ + c_ == n1_ + n2_) | (p1 == p2)
    pvalue = np.where(no_variance, 1.0, np.minimum(pvalue, 1.0))
    pvalue = np.where((n1_ == 0) | (n2_ == 0), np.nan, pvalue)
    return np.asarray(pvalue, dtype=np.float64)


def _fisher_chunk(
    a: np.ndarray,
    n1: np.ndarray,
    n2: np.ndarray,
    k: np.ndarray,
    lo: np.ndarray,
    length: np.ndarray,
    anchor: np.ndarray,
    width: int,
) -> np.ndarray:
    """Fisher two-sided p-values for one chunk of tables on a padded (rows x width) grid.

    Works with ``lr(x) = log(pmf(x) / pmf(anchor))`` where ``anchor`` is (close to) the mode.
    ``lr`` is accumulated outwards from the anchor from the exact one-step ratios
    ``pmf(x + 1) / pmf(x) = (n1 - x)(K - x) / ((x + 1)(n2 - K + x + 1))``, so the running sums
    stay small near the mode: p-values are accurate to ~1e-13 relative (checked against 50-digit
    arithmetic up to N = 2e7), where log-gamma differences would lose ~1e-8 at that size.
    """
    # Memory: at most three float64 (rows x width) work arrays plus boolean masks at once;
    # all arithmetic is done in place where possible.
    col = np.arange(width)[None, :]
    in_support = col < length[:, None]
    has_step = col < (length - 1)[:, None]  # x in [lo, hi - 1]: the step x -> x + 1 exists
    right_of_anchor = col >= (anchor - lo)[:, None]

    n1f = n1.astype(np.float64)[:, None]
    kf = k.astype(np.float64)[:, None]
    tail_f = (n2 - k + 1).astype(np.float64)[:, None]
    x = lo.astype(np.float64)[:, None] + np.arange(width, dtype=np.float64)[None, :]

    # step[x] = log(pmf(x + 1) / pmf(x)) = log((n1 - x)(K - x) / ((x + 1)(n2 - K + x + 1))).
    step = np.subtract(n1f, x)
    tmp = np.subtract(kf, x)
    step *= tmp  # exact in float64 while the product is below 2**53
    np.add(x, 1.0, out=tmp)
    x += tail_f
    tmp *= x
    del x
    step /= tmp
    del tmp
    np.log(step, out=step)
    step[~has_step] = 0.0
    del has_step

    # lr(x) for x > anchor: sum_{j=anchor}^{x-1} step[j] (cumulative sum shifted by one cell).
    lr = np.empty_like(step)
    lr[:, 0] = 0.0
    np.cumsum(np.where(right_of_anchor, step, 0.0)[:, :-1], axis=1, out=lr[:, 1:])
    # lr(x) for x < anchor: -sum_{j=x}^{anchor-1} step[j] (reverse cumulative sum).
    step[right_of_anchor] = 0.0
    del right_of_anchor
    backwards = step[:, ::-1]
    np.cumsum(backwards, axis=1, out=backwards)
    lr -= step

    rows = np.arange(a.shape[0])
    lr_obs = lr[rows, a - lo][:, None]
    as_extreme = lr <= lr_obs + np.log1p(FISHER_RELATIVE_TOLERANCE)
    as_extreme &= in_support
    # Numerator relative to pmf(observed): terms <= 1 + 1e-7, so no overflow and tiny
    # p-values keep their relative accuracy. Denominator relative to pmf(anchor): terms <= ~1.
    work = step  # reuse the buffer
    np.subtract(lr, lr_obs, out=work)
    np.minimum(work, 1.0, out=work)
    np.exp(work, out=work)
    work[~as_extreme] = 0.0
    numerator = work.sum(axis=1)
    del as_extreme
    np.minimum(lr, 1.0, out=work)
    np.exp(work, out=work)
    work[~in_support] = 0.0
    denominator = work.sum(axis=1)
    log_p = lr_obs[:, 0] + np.log(numerator) - np.log(denominator)
    return np.exp(np.minimum(log_p, 0.0))


def fisher_exact_pvalue(
    a: object,
    n1: object,
    c: object,
    n2: object,
    *,
    max_grid_cells: int = FISHER_MAX_GRID_CELLS,
) -> np.ndarray:
    """Two-sided Fisher exact test for many 2x2 tables at once.

    Conditioning on both margins, ``a`` follows the hypergeometric distribution::

        pmf(x) = C(n1, x) * C(n2, K - x) / C(N, K),   x in [max(0, K - n2), min(n1, K)]

    and the two-sided p-value is ``sum of pmf(x) over x with pmf(x) <= pmf(a) * (1 + 1e-7)``
    (the "probability of a table as or less likely than the observed one" rule; the 1e-7
    relative tolerance is R ``fisher.test``'s, so that floating-point noise never splits a
    mathematical tie). ``scipy.stats.fisher_exact`` implements the same rule with a 1e-14
    tolerance on Boost-computed pmfs; the two agree to ~1e-12 relative except for tables with a
    *distinct* pmf value within 1e-7 of the observed one (a near-tie that only very large
    margins can produce), where this function counts it as a tie.

    Implementation: pmf ratios are accumulated in log space outwards from the mode from exact
    one-step ratios, so nothing overflows and tiny p-values keep full relative accuracy
    (down to the float64 underflow limit, below which the smallest subnormal is returned so
    that the p-value stays in (0, 1]). Tables are sorted by support length and processed in
    chunks whose padded (tables x support) grid has at most ``max_grid_cells`` cells; a table
    whose support alone is larger gets a chunk of its own (memory then scales with its support).

    A table with an empty row or column (``n1 == 0``, ``n2 == 0``, ``K == 0`` or ``K == N``)
    has a single possible table and p-value 1, as in ``scipy.stats.fisher_exact``.

    References: Fisher, R.A. (1935), *The Design of Experiments*; Agresti (2013),
    *Categorical Data Analysis*, 3rd ed., section 3.5; R ``stats::fisher.test``.

    Args:
        a, n1, c, n2: conversions and size of the "with" and "without" groups (broadcastable).
        max_grid_cells: chunk size bound (keyword-only; lower it to trade speed for memory).

    Returns:
        float64 array of p-values in (0, 1] with the broadcast shape of the inputs.
    """
    a_, n1_, c_, n2_ = two_group_counts(a, n1, c, n2)
    if int(max_grid_cells) < 1:
        raise ValueError("max_grid_cells must be >= 1")
    shape = a_.shape
    a_, n1_, c_, n2_ = (v.ravel() for v in (a_, n1_, c_, n2_))
    k = a_ + c_
    total = n1_ + n2_
    lo = np.maximum(0, k - n2_)
    hi = np.minimum(n1_, k)
    length = hi - lo + 1
    with np.errstate(all="ignore"):
        mode = np.floor((k + 1.0) * (n1_ + 1.0) / (total + 2.0)).astype(np.int64)
    anchor = np.clip(mode, lo, hi)

    pvalue = np.ones(a_.shape[0], dtype=np.float64)
    todo = np.flatnonzero(length > 1)  # a single possible table has p = 1
    if todo.size:
        order = todo[np.argsort(length[todo], kind="stable")]
        sorted_len = length[order]
        budget = int(max_grid_cells)
        start = 0
        with np.errstate(all="ignore"):
            while start < order.size:  # loop over memory-bounded chunks, not over tables
                max_rows = max(1, budget // int(sorted_len[start]))
                window = sorted_len[start : start + max_rows]
                cells = np.arange(1, window.size + 1) * window  # rows x width if chunk ends here
                n_rows = max(1, int(np.searchsorted(cells, budget, side="right")))
                idx = order[start : start + n_rows]
                pvalue[idx] = _fisher_chunk(
                    a_[idx],
                    n1_[idx],
                    n2_[idx],
                    k[idx],
                    lo[idx],
                    length[idx],
                    anchor[idx],
                    int(sorted_len[start + n_rows - 1]),
                )
                start += n_rows
    pvalue = np.clip(pvalue, np.finfo(np.float64).smallest_subnormal, 1.0)
    return pvalue.reshape(shape)


# --------------------------------------------------------------------------------------------
# Intervals
# --------------------------------------------------------------------------------------------
def haldane_corrected(
    a: object, n1: object, c: object, n2: object
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 2x2 counts with the Haldane-Anscombe correction on rows where ``a == 0`` or ``c == 0``.

    0.5 is added to each of the four cells of such a row: ``a + 0.5``, ``n1 + 1``, ``c + 0.5``,
    ``n2 + 1``; other rows are unchanged. Returns ``(a, n1, c, n2, used)`` as float64 arrays and the
    bool mask of corrected rows.

    References: Haldane (1956), *Ann. Hum. Genet.* 20:309-311;
    Anscombe (1956), *Biometrika* 43:461-464.
    """
    a, n1, c, n2 = (np.asarray(v, dtype=np.float64) for v in (a, n1, c, n2))
    used = (a == 0) | (c == 0)
    shift = np.where(used, 0.5, 0.0)
    return a + shift, n1 + 2.0 * shift, c + shift, n2 + 2.0 * shift, used


def log_lift_and_variance(a: object, n1: object, c: object, n2: object) -> tuple[np.ndarray, np.ndarray]:
    """Katz log lift and its variance, per row, with the Haldane-Anscombe correction.

    ``log((a / n1) / (c / n2))`` and ``(1/a - 1/n1) + (1/c - 1/n2)`` on the counts of
    :func:`haldane_corrected` (Katz et al. 1978). The one implementation of this formula: the lift
    CI (:func:`lift_ci_katz`), the backtest's heterogeneity test and the daily health use it.
    Rows with ``n1 == 0`` or ``n2 == 0`` give NaN or inf (callers mask them).

    References: Katz, Baptista, Azen & Pike (1978), *Biometrics* 34:469-474.
    """
    a_f, n1_f, c_f, n2_f, _ = haldane_corrected(a, n1, c, n2)
    with np.errstate(all="ignore"):
        return np.log((a_f / n1_f) / (c_f / n2_f)), (1.0 / a_f - 1.0 / n1_f) + (1.0 / c_f - 1.0 / n2_f)


def lift_ci_katz(
    a: object,
    n1: object,
    c: object,
    n2: object,
    confidence_level: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Katz log confidence interval for the lift (risk ratio) ``RR = (a / n1) / (c / n2)``.

    Formula (Katz et al. 1978)::

        RR * exp(+/- z * sqrt(1/a - 1/n1 + 1/c - 1/n2)),   z = Phi^-1(1 - (1 - level) / 2)

    (written as ``RR * exp(+/-d)``, which equals ``exp(log(RR) +/- d)`` but guarantees
    ``low <= RR <= high`` in floating point). For ``a, c > 0`` this is exactly
    ``statsmodels`` ``confint_proportions_2indep(compare="ratio", method="log")``.

    Zero counts: when ``a == 0`` or ``c == 0`` the log-RR and its variance are infinite, so the
    Haldane-Anscombe correction is applied to that row: **0.5 is added to each of the four
    cells** of the 2x2 table, i.e. ``a -> a + 0.5``, ``c -> c + 0.5``, ``n1 -> n1 + 1``,
    ``n2 -> n2 + 1``, and both the point estimate inside the interval and the variance use the
    corrected counts. The interval is then finite and strictly positive. (statsmodels'
    ``"log-adjusted"`` adds 0.5 to the counts *and to n*, a slightly different variant.)
    Rows with ``n1 == 0`` or ``n2 == 0`` get NaN.

    References: Katz, Baptista, Azen & Pike (1978), "Obtaining confidence intervals for the risk
    ratio in cohort studies", *Biometrics* 34:469-474; Haldane (1956), *Ann. Hum. Genet.*
    20:309-311; Anscombe (1956), *Biometrika* 43:461-464.

    Returns:
        ``(low, high, used_correction)``: float64, float64 and bool arrays with the broadcast
        shape of the inputs; ``used_correction`` is True on rows where the correction was used.
    """
    z = z_critical(confidence_level)
    a_, n1_, c_, n2_ = two_group_counts(a, n1, c, n2)
    valid = (n1_ > 0) & (n2_ > 0)
    a_f, n1_f, c_f, n2_f, used_correction = haldane_corrected(a_, n1_, c_, n2_)
    used_correction = valid & used_correction
    _, var = log_lift_and_variance(a_, n1_, c_, n2_)
    with np.errstate(all="ignore"):
        ratio = (a_f / n1_f) / (c_f / n2_f)
        half_width = z * np.sqrt(np.maximum(var, 0.0))
        low = ratio * np.exp(-half_width)
        high = ratio * np.exp(half_width)
    low = np.where(valid, low, np.nan)
    high = np.where(valid, high, np.nan)
    return low, high, used_correction


def wilson_interval(successes: object, n: object, confidence_level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for a single proportion ``p = successes / n``.

    Formula (Wilson 1927), with ``z = Phi^-1(1 - (1 - level) / 2)``::

        centre = (p + z^2 / (2n)) / (1 + z^2 / n)
        half   = z * sqrt(p (1 - p) / n + z^2 / (4 n^2)) / (1 + z^2 / n)
        [centre - half, centre + half], clipped to [0, 1]; exactly 0 (1) when successes = 0 (= n)

    Matches ``statsmodels.stats.proportion.proportion_confint(method="wilson")``.
    NaN where ``n == 0``.

    References: Wilson (1927), "Probable inference, the law of succession, and statistical
    inference", *JASA* 22:209-212; Newcombe (1998), *Stat. Med.* 17:857-872.

    Returns:
        ``(low, high)`` float64 arrays with the broadcast shape of the inputs.
    """
    z = z_critical(confidence_level)
    s_, n_ = np.broadcast_arrays(_as_count_array(successes, "successes"), _as_count_array(n, "n"))
    if np.any(s_ > n_):
        raise ValueError("successes exceed n")
    s_f = s_.astype(np.float64)
    n_f = n_.astype(np.float64)
    with np.errstate(all="ignore"):
        p = s_f / n_f
        z2 = z * z
        denom = 1.0 + z2 / n_f
        centre = (p + z2 / (2.0 * n_f)) / denom
        half = z * np.sqrt(p * (1.0 - p) / n_f + z2 / (4.0 * n_f**2)) / denom
        # exact at the edges (centre = half when p is 0 or 1; rounding would leave ~1e-18 outside the estimate)
        low = np.where(s_ == 0, 0.0, np.clip(centre - half, 0.0, 1.0))
        high = np.where(s_ == n_, 1.0, np.clip(centre + half, 0.0, 1.0))
    empty = n_ == 0
    return np.where(empty, np.nan, low), np.where(empty, np.nan, high)


def newcombe_diff_interval(
    a: object,
    n1: object,
    c: object,
    n2: object,
    confidence_level: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """Newcombe hybrid score interval for the rate difference ``p1 - p2 = a/n1 - c/n2``.

    Formula (Newcombe 1998, method 10), with ``[l1, u1]`` and ``[l2, u2]`` the Wilson intervals
    of ``p1`` and ``p2`` at the same confidence level::

        low  = (p1 - p2) - sqrt((p1 - l1)^2 + (u2 - p2)^2)
        high = (p1 - p2) + sqrt((u1 - p1)^2 + (p2 - l2)^2)

    Matches ``statsmodels`` ``confint_proportions_2indep(compare="diff", method="newcomb")``.
    NaN where ``n1 == 0`` or ``n2 == 0``.

    Reference: Newcombe (1998), "Interval estimation for the difference between independent
    proportions: comparison of eleven methods", *Stat. Med.* 17:873-890.

    Returns:
        ``(low, high)`` float64 arrays with the broadcast shape of the inputs.
    """
    a_, n1_, c_, n2_ = two_group_counts(a, n1, c, n2)
    l1, u1 = wilson_interval(a_, n1_, confidence_level)
    l2, u2 = wilson_interval(c_, n2_, confidence_level)
    with np.errstate(all="ignore"):
        p1 = a_ / n1_.astype(np.float64)
        p2 = c_ / n2_.astype(np.float64)
        diff = p1 - p2
        low = diff - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
        high = diff + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    empty = (n1_ == 0) | (n2_ == 0)
    return np.where(empty, np.nan, low), np.where(empty, np.nan, high)


# --------------------------------------------------------------------------------------------
# Multiple testing and SRM
# --------------------------------------------------------------------------------------------
def _adjust_p_values(p_values: object, adjust_sorted) -> np.ndarray:
    """Apply `adjust_sorted` (ascending non-NaN p-values → adjusted, same order) and scatter back.

    NaN p-values are ignored (not counted in m) and stay NaN; values outside [0, 1] are an error.
    """
    p = np.asarray(p_values, dtype=np.float64)
    flat = p.ravel()
    finite = ~np.isnan(flat)
    pv = flat[finite]
    if np.any((pv < 0.0) | (pv > 1.0)):
        raise ValueError("p-values must lie in [0, 1] (or be NaN)")
    out = np.full(flat.shape, np.nan)
    if pv.size:
        order = np.argsort(pv, kind="stable")
        result = np.empty(pv.size)
        result[order] = np.minimum(adjust_sorted(pv[order]), 1.0)
        out[finite] = result
    return out.reshape(p.shape)


def benjamini_hochberg(p_values: object) -> np.ndarray:
    """Benjamini-Hochberg false-discovery-rate q-values (step-up adjusted p-values).

    Formula, with the m non-NaN p-values sorted ascending ``p_(1) <= ... <= p_(m)``::

        q_(i) = min(1, min_{j >= i} p_(j) * m / j)

    so q-values are monotone in p, ``q >= p`` and ``q <= 1``; ties get equal q-values and the
    result does not depend on input order. NaN p-values are ignored: they are not counted in
    ``m`` and their q-value is NaN. Matches ``statsmodels.stats.multitest.multipletests(
    method="fdr_bh")[1]`` on the non-NaN values.

    Reference: Benjamini & Hochberg (1995), "Controlling the false discovery rate: a practical
    and powerful approach to multiple testing", *JRSS B* 57:289-300.

    Returns:
        float64 array with the shape of ``p_values``.
    """

    def step_up(sorted_p: np.ndarray) -> np.ndarray:
        m = sorted_p.size
        raw = sorted_p / (np.arange(1, m + 1, dtype=np.float64) / m)  # >= p exactly: the divisor is <= 1
        return np.minimum.accumulate(raw[::-1])[::-1]

    return _adjust_p_values(p_values, step_up)


def holm_adjust(p_values: object) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error rate).

    With the m non-NaN p-values sorted ascending ``p_(1) <= … <= p_(m)``::

        adj_(i) = min(1, max_{j <= i} (m − j + 1) · p_(j))

    NaN p-values are ignored (not counted in m) and stay NaN. Matches
    ``statsmodels.stats.multitest.multipletests(method="holm")[1]``.

    Reference: Holm (1979), "A simple sequentially rejective multiple test procedure",
    *Scand. J. Statist.* 6:65–70.
    """

    def step_down(sorted_p: np.ndarray) -> np.ndarray:
        return np.maximum.accumulate(sorted_p * (sorted_p.size - np.arange(sorted_p.size)))

    return _adjust_p_values(p_values, step_down)


def srm_pvalue(observed: np.ndarray, expected_share: np.ndarray) -> float:
    """Sample-ratio-mismatch p-value for one experiment (Pearson chi-square goodness of fit).

    Formula::

        E_i = share_i / sum(share) * sum(observed),   X^2 = sum_i (O_i - E_i)^2 / E_i,
        p = P(chi2_{k-1} >= X^2)                       (``scipy.stats.chisquare``)

    ``expected_share`` is normalised to sum to 1 (so weights like ``[1, 1]`` or ``[50, 50]``
    work). Arms with a zero expected share are dropped if they are empty and make the p-value 0
    if they received units (an impossible allocation). Returns NaN when there is no data
    (no units, or fewer than two arms with a positive share).

    References: Fabijan et al. (2019), "Diagnosing Sample Ratio Mismatch in Online Controlled
    Experiments", *KDD '19*; Pearson (1900), *Phil. Mag.* 50:157-175.
    """
    obs = _as_count_array(observed, "observed").astype(np.float64).ravel()
    share = np.asarray(expected_share, dtype=np.float64).ravel()
    if obs.shape != share.shape:
        raise ValueError("observed and expected_share must have the same length")
    if not np.all(np.isfinite(share)) or np.any(share < 0):
        raise ValueError("expected_share must be finite and non-negative")
    if np.any((share == 0) & (obs > 0)):
        return 0.0
    keep = share > 0
    obs, share = obs[keep], share[keep]
    total = obs.sum()
    if obs.size < 2 or total == 0:
        return float("nan")
    expected = share / share.sum() * total
    return float(sp_stats.chisquare(obs, f_exp=expected).pvalue)


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------
def compare_proportions(
    conversions_with: object,
    n_with: object,
    conversions_without: object,
    n_without: object,
    confidence_level: float = 0.95,
    fisher_below_expected: float = 5.0,
) -> TwoProportionResult:
    """Compare conversion rates of a "with" and a "without" group for many candidates at once.

    Per row (a = conversions_with, n1 = n_with, c = conversions_without, n2 = n_without):

    * ``rate_with = a / n1``, ``rate_without = c / n2`` (NaN when n == 0);
      ``lift = rate_with / rate_without`` (NaN when ``rate_without == 0`` or a group is empty).
    * p-value: the pooled two-proportion z-test (:func:`two_proportion_z_pvalue`), except that
      the Fisher exact test (:func:`fisher_exact_pvalue`) is used where any expected cell of
      the 2x2 table, ``E = row total * column total / N`` (i.e. n1*K/N, n1*(N-K)/N, n2*K/N,
      n2*(N-K)/N with K = a + c), is below ``fisher_below_expected`` (Cochran's rule; 5 by
      default, 0 disables Fisher).
    * lift CI: Katz log interval at ``confidence_level`` (:func:`lift_ci_katz`), with the
      Haldane-Anscombe +0.5-per-cell correction on rows where ``a == 0`` or ``c == 0``.
    * ``method`` names the test and the interval, e.g. ``"z-test (pooled); lift CI: Katz log"``,
      ``"Fisher exact (expected cell < 5); lift CI: Katz log, Haldane-Anscombe +0.5 per cell"``;
      rows with ``n1 == 0`` or ``n2 == 0`` are ``"insufficient data"`` with NaN p-value and CI.

    References: Cochran (1954), "Some methods for strengthening the common chi-square tests",
    *Biometrics* 10:417-451; see the individual functions for the tests and intervals.

    Returns:
        :class:`TwoProportionResult` with 1-D arrays of the broadcast length.
    """
    threshold = float(fisher_below_expected)
    if not np.isfinite(threshold) or threshold < 0:
        raise ValueError("fisher_below_expected must be a finite, non-negative number")
    a_, n1_, c_, n2_ = (
        np.atleast_1d(v).ravel().copy()
        for v in two_group_counts(conversions_with, n_with, conversions_without, n_without)
    )
    valid = (n1_ > 0) & (n2_ > 0)

    a_f, n1_f, c_f, n2_f = (v.astype(np.float64) for v in (a_, n1_, c_, n2_))
    with np.errstate(all="ignore"):
        rate_with = np.where(n1_ > 0, a_f / n1_f, np.nan)
        rate_without = np.where(n2_ > 0, c_f / n2_f, np.nan)
        lift = np.where(valid & (c_ > 0), rate_with / rate_without, np.nan)
        k_f = a_f + c_f
        total_f = n1_f + n2_f
        min_row = np.minimum(n1_f, n2_f)
        min_col = np.minimum(k_f, total_f - k_f)
        min_expected = min_row * min_col / total_f  # smallest of the four expected cells
    use_fisher = valid & (min_expected < threshold)

    p_value = two_proportion_z_pvalue(a_, n1_, c_, n2_)
    fisher_rows = np.flatnonzero(use_fisher)
    if fisher_rows.size:
        p_value[fisher_rows] = fisher_exact_pvalue(a_[fisher_rows], n1_[fisher_rows], c_[fisher_rows], n2_[fisher_rows])
    p_value = np.where(valid, p_value, np.nan)

    ci_low, ci_high, corrected = lift_ci_katz(a_, n1_, c_, n2_, confidence_level)

    test_label = np.array([_Z_LABEL, f"Fisher exact (expected cell < {threshold:g})"], dtype=object)
    ci_label = np.array([_KATZ_LABEL, f"{_KATZ_LABEL}, {_HALDANE_LABEL}"], dtype=object)
    labels = np.array([f"{t}; {ci}" for t in test_label for ci in ci_label] + [_INSUFFICIENT], dtype=object)
    code = np.where(valid, 2 * use_fisher.astype(np.int64) + corrected.astype(np.int64), 4)
    method = labels[code]

    return TwoProportionResult(
        n_with=n1_,
        conversions_with=a_,
        n_without=n2_,
        conversions_without=c_,
        rate_with=rate_with,
        rate_without=rate_without,
        lift=lift,
        lift_ci_low=ci_low,
        lift_ci_high=ci_high,
        p_value=p_value,
        method=method,
    )
