"""Activity-adjusted association: candidate counts per activity stratum and Mantel–Haenszel statistics.

Almost every product event grows with an account's overall activity, and active accounts convert more, so
a candidate's *marginal* lift (``core.stats.compare_proportions``) mixes "this behaviour" with "this account
is busy". Stratifying accounts by an activity measure and comparing candidate holders with non-holders
*within* each stratum removes the part of the association that activity explains:

1. :func:`activity_strata` cuts an activity measure into quantile strata (equal values share a stratum);
2. :func:`stratified_counts` counts, for every candidate and stratum, accounts with the candidate and their
   conversions in one sparse product ``Xᵀ · [S, S∘y]`` (S the accounts × strata one-hot);
3. :func:`mantel_haenszel` turns the per-stratum 2x2 tables into the Cochran–Mantel–Haenszel test, the
   Mantel–Haenszel pooled risk ratio (the *adjusted lift*) with the Greenland–Robins interval, and the
   Mantel–Haenszel pooled odds ratio with the Robins–Breslow–Greenland interval, for all candidates at once.

The 2x2 table of stratum k (same letters as ``core.stats``)::

                 converted   not converted   total
    with            a_k         b_k = n1_k − a_k    n1_k
    without         c_k         d_k = n2_k − c_k    n2_k
    total          K_k        N_k − K_k            N_k = n1_k + n2_k

**Informative strata.** A stratum with nobody on one side (``n1_k == 0`` or ``n2_k == 0``) holds no
comparison: every term of every formula below is then exactly zero (its a·n2, c·n1, a·d, b·c and
n1·n2 products vanish), so such strata contribute nothing, and they are masked explicitly so that strata
of 0 or 1 accounts never divide by zero. Strata where everybody or nobody converted *are* informative for
the risk ratio (all converted: both rates are 1) but add nothing to the CMH test (zero variance).

This module depends on numpy and scipy only, like ``core.stats``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy import special

from beton_pipeline.core.candidates import CandidateMatrix
from beton_pipeline.core.stats import two_group_counts, z_critical

__all__ = [
    "NO_CONVERSIONS_WITH",
    "NO_CONVERSIONS_WITHOUT",
    "NO_INFORMATIVE_STRATUM",
    "NO_OUTCOME_VARIATION",
    "OK",
    "ActivityStrata",
    "MantelHaenszelResult",
    "StratifiedCounts",
    "activity_strata",
    "mantel_haenszel",
    "stratified_counts",
]

# Values of MantelHaenszelResult.status (compare with these names, not with the text).
OK = "ok"
NO_INFORMATIVE_STRATUM = "no informative stratum: no stratum has accounts both with and without the candidate"
NO_OUTCOME_VARIATION = "no outcome variation: in every informative stratum all accounts converted or none did"
NO_CONVERSIONS_WITH = "no conversions with the candidate in its informative strata: risk ratio 0, no interval"
NO_CONVERSIONS_WITHOUT = (
    "no conversions without the candidate in its informative strata: risk ratio infinite, no interval"
)


# --------------------------------------------------------------------------------------------
# Strata from an activity measure
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ActivityStrata:
    """Each account's activity stratum and what the strata hold.

    Attributes:
        stratum: int64 per account, in ``[0, n_strata)``; higher strata hold higher activity.
        n_strata: number of (non-empty) strata, at most the number asked for.
        lower, upper: smallest and largest activity value in each stratum (float64, length n_strata).
        size: accounts per stratum (int64, length n_strata).
    """

    stratum: np.ndarray
    n_strata: int
    lower: np.ndarray
    upper: np.ndarray
    size: np.ndarray


def activity_strata(activity: object, n_strata: int) -> ActivityStrata:
    """Quantile strata of an activity measure, with ties kept together.

    Rule: an account with activity x goes to band ``floor(n_strata · #{accounts with activity < x} / n)``,
    i.e. the share of accounts *strictly below* it, cut into ``n_strata`` equal bands; bands that end up
    empty are dropped and the rest renumbered 0, 1, … in order of activity. Consequences:

    * equal values always share a stratum (the rule depends on x only), and strata are contiguous
      ranges of activity;
    * with continuous activity the strata are the usual quantile groups (sizes within one of n/n_strata);
    * with few distinct values or heavy ties there are fewer strata: a value held by more than
      ``n / n_strata`` accounts fills several bands at once (e.g. 60 % of accounts with activity 0 and
      ``n_strata = 5`` gives one stratum for the zeros and at most two above them), and a measure with
      a single value gives one stratum.

    This is the "inverted empirical CDF" quantile rule applied to the cut points ``j/n_strata``.
    Reference: Hyndman & Fan (1996), "Sample quantiles in statistical packages", *Am. Stat.* 50:361-365
    (definition 1); Cochran (1968), *Biometrics* 24:295-313, on five strata removing about 90 % of the bias
    of a continuous confounder.

    Args:
        activity: one finite number per account (an account with no activity is 0, not missing).
        n_strata: the number of strata wanted (>= 1).

    Raises:
        ValueError: on non-finite activity or ``n_strata < 1``.
    """
    values = np.asarray(activity, dtype=np.float64).ravel()
    if int(n_strata) != n_strata or n_strata < 1:
        raise ValueError(f"n_strata must be a positive integer, got {n_strata!r}")
    if not np.all(np.isfinite(values)):
        raise ValueError("activity must be finite (use 0 for accounts without activity)")
    n = values.size
    if n == 0:
        empty_f, empty_i = np.empty(0), np.empty(0, dtype=np.int64)
        return ActivityStrata(np.empty(0, dtype=np.int64), 0, empty_f, empty_f, empty_i)
    below = np.searchsorted(np.sort(values), values, side="left")  # accounts with strictly lower activity
    band = (below * int(n_strata)) // n  # integer arithmetic: no rounding at the cut points
    used, stratum = np.unique(band, return_inverse=True)
    stratum = stratum.astype(np.int64).ravel()
    k = used.size
    lower = np.full(k, np.inf)
    upper = np.full(k, -np.inf)
    np.minimum.at(lower, stratum, values)
    np.maximum.at(upper, stratum, values)
    size = np.bincount(stratum, minlength=k).astype(np.int64)
    return ActivityStrata(stratum=stratum, n_strata=int(k), lower=lower, upper=upper, size=size)


# --------------------------------------------------------------------------------------------
# Counts per candidate and stratum
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StratifiedCounts:
    """Sufficient statistics per candidate and stratum (the stratified form of ``sufficient_statistics``).

    Attributes:
        n_with: int64 (candidates × strata): accounts of the stratum with the candidate.
        conversions_with: int64 (candidates × strata): those of them that converted.
        n_total: int64 (strata,): accounts of the stratum.
        conversions_total: int64 (strata,): conversions of the stratum.
    """

    n_with: np.ndarray
    conversions_with: np.ndarray
    n_total: np.ndarray
    conversions_total: np.ndarray

    @property
    def n_without(self) -> np.ndarray:
        """Accounts of the stratum without the candidate (candidates × strata)."""
        return self.n_total[None, :] - self.n_with

    @property
    def conversions_without(self) -> np.ndarray:
        """Conversions of the stratum among accounts without the candidate (candidates × strata)."""
        return self.conversions_total[None, :] - self.conversions_with


def stratified_counts(
    matrix: CandidateMatrix | sp.spmatrix | sp.sparray,
    converted: object,
    strata: object,
    n_strata: int,
) -> StratifiedCounts:
    """Per candidate and stratum: accounts with the candidate and their conversions, in one sparse product.

    With X the accounts × candidates 0/1 matrix, y the 0/1 outcome and S the accounts × strata one-hot
    (``S[i, k] = 1`` when account i is in stratum k)::

        [n_with | conversions_with] = Xᵀ · [S | S∘y]          (candidates × 2·strata)
        n_total = 1ᵀS,  conversions_total = yᵀS

    Any stored non-zero of X counts as membership. Strata with no accounts are kept (all zeros), so the
    columns line up with ``range(n_strata)`` across calls (e.g. across cohort months).

    Args:
        matrix: a :class:`~beton_pipeline.core.candidates.CandidateMatrix` or a scipy sparse matrix
            (accounts × candidates).
        converted: one 0/1 or boolean outcome per account.
        strata: one integer stratum in ``[0, n_strata)`` per account (e.g. ``activity_strata(...).stratum``).
        n_strata: the number of strata.

    Returns:
        :class:`StratifiedCounts`.
    """
    x = matrix.matrix if isinstance(matrix, CandidateMatrix) else matrix
    x = sp.csr_matrix(x, dtype=np.float64, copy=True)
    x.sum_duplicates()
    x.eliminate_zeros()
    x.data[:] = 1.0
    n_accounts = x.shape[0]
    y = np.asarray(converted).ravel().astype(np.float64)
    if y.size != n_accounts or not np.all((y == 0.0) | (y == 1.0)):
        raise ValueError("converted must hold one 0/1 value per account (row of the matrix)")
    s = np.asarray(strata).ravel()
    k = int(n_strata)
    if k < 1 or k != n_strata:
        raise ValueError(f"n_strata must be a positive integer, got {n_strata!r}")
    if s.size != n_accounts or s.dtype.kind not in "iu" or (s.size and (s.min() < 0 or s.max() >= k)):
        raise ValueError(f"strata must hold one integer in [0, {k}) per account (row of the matrix)")
    rows = np.arange(n_accounts)
    # [S | S∘y]: column k for membership, column K + k for converted members (zeros are not stored).
    positive = y > 0
    right = sp.csr_matrix(
        (
            np.ones(n_accounts + int(positive.sum())),
            (np.concatenate([rows, rows[positive]]), np.concatenate([s, s[positive] + k])),
        ),
        shape=(n_accounts, 2 * k),
    )
    counts = np.rint((x.T @ right).toarray()).astype(np.int64)
    return StratifiedCounts(
        n_with=counts[:, :k],
        conversions_with=counts[:, k:],
        n_total=np.bincount(s, minlength=k).astype(np.int64),
        conversions_total=np.rint(np.bincount(s, weights=y, minlength=k)).astype(np.int64),
    )


# --------------------------------------------------------------------------------------------
# Mantel–Haenszel
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MantelHaenszelResult:
    """Stratified comparison per candidate (every field a 1-D array, one entry per candidate).

    Attributes:
        risk_ratio: Mantel–Haenszel pooled risk ratio (the activity-adjusted lift).
        risk_ratio_ci_low, risk_ratio_ci_high: its interval on the log scale, Greenland–Robins variance.
        log_risk_ratio_variance: the Greenland–Robins variance of ``log(risk_ratio)``.
        odds_ratio: Mantel–Haenszel pooled odds ratio.
        odds_ratio_ci_low, odds_ratio_ci_high: its interval, Robins–Breslow–Greenland variance.
        log_odds_ratio_variance: the Robins–Breslow–Greenland variance of ``log(odds_ratio)``.
        statistic: Cochran–Mantel–Haenszel chi-square (1 df).
        z: signed square root of ``statistic`` (> 0 when holders convert more than expected).
        p_value: two-sided p-value of the CMH test.
        mantel_fleiss: the Mantel–Fleiss distance (>= 5 is their rule for trusting the chi-square).
        n_informative_strata: strata with accounts both with and without the candidate (int64).
        status: object array, :data:`OK` or one of the ``NO_*`` constants of this module.
        continuity_correction: whether the test used Yates' 0.5 correction.
    """

    risk_ratio: np.ndarray
    risk_ratio_ci_low: np.ndarray
    risk_ratio_ci_high: np.ndarray
    log_risk_ratio_variance: np.ndarray
    odds_ratio: np.ndarray
    odds_ratio_ci_low: np.ndarray
    odds_ratio_ci_high: np.ndarray
    log_odds_ratio_variance: np.ndarray
    statistic: np.ndarray
    z: np.ndarray
    p_value: np.ndarray
    mantel_fleiss: np.ndarray
    n_informative_strata: np.ndarray
    status: np.ndarray
    continuity_correction: bool


def _ratio_interval(
    numerator: np.ndarray, denominator: np.ndarray, variance: np.ndarray, z: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``ratio = numerator / denominator`` and ``ratio · exp(±z·√variance)``; the interval is NaN unless both
    sums are positive (written as ratio·exp(±d) so that low <= ratio <= high in floating point)."""
    estimable = (numerator > 0) & (denominator > 0)
    with np.errstate(all="ignore"):
        ratio = numerator / denominator
        half = z * np.sqrt(np.maximum(variance, 0.0))
        low = np.where(estimable, ratio * np.exp(-half), np.nan)
        high = np.where(estimable, ratio * np.exp(half), np.nan)
    return ratio, low, high


def mantel_haenszel(
    a: object,
    n1: object,
    c: object,
    n2: object,
    confidence_level: float = 0.95,
    continuity_correction: bool = False,
) -> MantelHaenszelResult:
    """Cochran–Mantel–Haenszel test and Mantel–Haenszel pooled risk and odds ratios, for many candidates.

    Inputs are per candidate × stratum (the last axis is the strata; a 1-D input is one candidate):
    ``a`` conversions of the n1 accounts with the candidate, ``c`` of the n2 without (broadcastable; e.g.
    ``counts.conversions_with, counts.n_with, counts.conversions_without, counts.n_without`` of a
    :class:`StratifiedCounts`). Sums run over informative strata (``n1_k > 0`` and ``n2_k > 0``; the others
    contribute exactly nothing, see the module docstring). With ``K = a + c``, ``N = n1 + n2``::

        CMH test     O − E = Σ (a_k − n1_k K_k / N_k)
                     V     = Σ n1_k n2_k K_k (N_k − K_k) / (N_k² (N_k − 1))
                     statistic = (O − E)² / V  (no continuity correction: the default),
                                 (max(|O − E| − ½, 0))² / V  with ``continuity_correction``,
                     p = P(χ²₁ ≥ statistic) = 2 Φ(−|z|),  z = sign(O − E) √statistic
        risk ratio   RR_MH = R / S,  R = Σ a_k n2_k / N_k,  S = Σ c_k n1_k / N_k
                     Var(log RR_MH) = Σ (K_k n1_k n2_k − a_k c_k N_k) / N_k²  /  (R S)     (Greenland–Robins)
        odds ratio   OR_MH = Σ a_k d_k / N_k  /  Σ b_k c_k / N_k
                     Var(log OR_MH) = Σ P R' / (2 ΣR'²) + Σ (P S' + Q R') / (2 ΣR' ΣS') + Σ Q S' / (2 ΣS'²),
                     P = (a + d)/N, Q = (b + c)/N, R' = a d / N, S' = b c / N              (Robins–Breslow–Greenland)
        intervals    ratio · exp(± z_{1−α/2} √Var)

    With a single stratum RR_MH is the crude lift and the Greenland–Robins variance is exactly the Katz
    variance ``1/a − 1/n1 + 1/c − 1/n2`` (``core.stats.lift_ci_katz``); the CMH statistic is
    ``(N − 1)/N`` times Pearson's chi-square. The continuity-corrected statistic is clipped at 0 (so
    ``|O − E| < ½`` gives p = 1; statsmodels squares the negative difference instead). The Greenland–Robins
    and Robins–Breslow–Greenland variances are consistent both for a few large strata and for many small
    ones (sparse data), so strata may be fine (e.g. cohort month × activity band).

    Undefined results, per candidate (``status``; checked in this order):

    * :data:`NO_INFORMATIVE_STRATUM`: every field NaN (p-value too: callers leave it out of BH; the
      condition depends on who holds the candidate, never on outcomes, so dropping it does not bias BH).
    * :data:`NO_OUTCOME_VARIATION` (``V == 0``): statistic 0, p-value 1 (as ``core.stats`` for a pooled
      rate of 0 or 1); the risk ratio is 1 with a zero-width interval when some informative stratum had
      conversions (there, everybody converted: both rates are 1), NaN when nobody converted.
    * :data:`NO_CONVERSIONS_WITH` (R = 0): risk ratio 0, interval NaN. :data:`NO_CONVERSIONS_WITHOUT`
      (S = 0): risk ratio inf, interval NaN. No zero-cell correction is applied (the MH estimators need
      none while some stratum has conversions on each side); the test's p-value stays valid.

    The odds ratio follows the same rule on its own sums (0, inf or NaN; interval NaN unless both are
    positive). ``mantel_fleiss`` is ``min(E − Σ L_k, Σ U_k − E)`` with ``L_k = max(0, n1_k − (N_k − K_k))``
    and ``U_k = min(n1_k, K_k)``, the bounds of a_k given the margins; Mantel & Fleiss ask for >= 5 before
    trusting the chi-square approximation (the stratified analogue of the Cochran rule that sends small
    crude tables to Fisher's test). It is reported, not acted on.

    References: Mantel & Haenszel (1959), *J. Natl Cancer Inst.* 22:719-748; Cochran (1954),
    *Biometrics* 10:417-451; Greenland & Robins (1985), "Estimation of a common effect parameter from
    sparse follow-up data", *Biometrics* 41:55-68; Robins, Breslow & Greenland (1986), *Biometrics*
    42:311-323; Mantel & Fleiss (1980), *Am. J. Epidemiol.* 112:129-134; Rothman, Greenland & Lash (2008),
    *Modern Epidemiology*, 3rd ed., ch. 15.

    Returns:
        :class:`MantelHaenszelResult` with one entry per candidate (the leading axis of the inputs).

    Examples:
        The tolbutamide trial stratified by age (Rothman 2012, ch. 10), one candidate with two strata:

        >>> r = mantel_haenszel([8, 22], [106, 98], [5, 16], [120, 85], confidence_level=0.90)
        >>> round(float(r.risk_ratio[0]), 2), round(float(r.risk_ratio_ci_low[0]), 2), r.status[0]
        (1.33, 0.87, 'ok')
    """
    zq = z_critical(confidence_level)
    a_, n1_, c_, n2_ = (np.atleast_2d(v) for v in two_group_counts(a, n1, c, n2))
    if a_.ndim != 2:
        raise ValueError("inputs must be 1-D (one candidate) or 2-D (candidates × strata)")
    informative = (n1_ > 0) & (n2_ > 0)
    af, n1f, cf, n2f = (np.where(informative, v, 0).astype(np.float64) for v in (a_, n1_, c_, n2_))
    bf, df = n1f - af, n2f - cf
    kf = af + cf
    nf = n1f + n2f
    nf_safe = np.where(informative, nf, 2.0)  # informative strata have N >= 2; the rest are all zeros

    # CMH test.
    expected_k = n1f * kf / nf_safe
    observed_minus_expected = np.sum(af - expected_k, axis=1)
    variance = np.sum(n1f * n2f * kf * (nf - kf) / (nf_safe**2 * (nf_safe - 1.0)), axis=1)
    deviation = np.abs(observed_minus_expected)
    if continuity_correction:
        deviation = np.maximum(deviation - 0.5, 0.0)
    has_variance = variance > 0
    with np.errstate(all="ignore"):
        z = np.where(has_variance, np.sign(observed_minus_expected) * deviation / np.sqrt(variance), 0.0)
    statistic = z * z
    p_value = np.where(has_variance, 2.0 * special.ndtr(-np.abs(z)), 1.0)

    # Mantel–Fleiss distance of E from the bounds of Σ a_k.
    expected = expected_k.sum(axis=1)
    lowest = np.sum(np.maximum(0.0, n1f - (nf - kf)), axis=1)
    highest = np.sum(np.minimum(n1f, kf), axis=1)
    mantel_fleiss = np.minimum(expected - lowest, highest - expected)

    # Risk ratio, Greenland–Robins variance.
    r = np.sum(af * n2f / nf_safe, axis=1)
    s = np.sum(cf * n1f / nf_safe, axis=1)
    with np.errstate(all="ignore"):
        gr_variance = np.sum((kf * n1f * n2f - af * cf * nf) / nf_safe**2, axis=1) / (r * s)
    risk_ratio, rr_low, rr_high = _ratio_interval(r, s, gr_variance, zq)

    # Odds ratio, Robins–Breslow–Greenland variance.
    p_ = (af + df) / nf_safe
    q_ = (bf + cf) / nf_safe
    r_or = af * df / nf_safe
    s_or = bf * cf / nf_safe
    sum_r, sum_s = r_or.sum(axis=1), s_or.sum(axis=1)
    with np.errstate(all="ignore"):
        rbg_variance = (
            np.sum(p_ * r_or, axis=1) / (2.0 * sum_r**2)
            + np.sum(p_ * s_or + q_ * r_or, axis=1) / (2.0 * sum_r * sum_s)
            + np.sum(q_ * s_or, axis=1) / (2.0 * sum_s**2)
        )
    odds_ratio, or_low, or_high = _ratio_interval(sum_r, sum_s, rbg_variance, zq)

    n_informative = informative.sum(axis=1).astype(np.int64)
    none = n_informative == 0
    status = np.select(
        [none, ~has_variance, r == 0, s == 0],
        [NO_INFORMATIVE_STRATUM, NO_OUTCOME_VARIATION, NO_CONVERSIONS_WITH, NO_CONVERSIONS_WITHOUT],
        default=OK,
    ).astype(object)
    estimable_rr = (r > 0) & (s > 0)
    estimable_or = (sum_r > 0) & (sum_s > 0)

    def masked(values: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
        out = np.where(none, np.nan, values)
        return out if keep is None else np.where(keep, out, np.nan)

    return MantelHaenszelResult(
        risk_ratio=masked(risk_ratio),
        risk_ratio_ci_low=masked(rr_low),
        risk_ratio_ci_high=masked(rr_high),
        log_risk_ratio_variance=masked(gr_variance, estimable_rr),
        odds_ratio=masked(odds_ratio),
        odds_ratio_ci_low=masked(or_low),
        odds_ratio_ci_high=masked(or_high),
        log_odds_ratio_variance=masked(rbg_variance, estimable_or),
        statistic=masked(statistic),
        z=masked(z),
        p_value=masked(p_value),
        mantel_fleiss=masked(mantel_fleiss),
        n_informative_strata=n_informative,
        status=status,
        continuity_correction=bool(continuity_correction),
    )
