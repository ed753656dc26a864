"""Signal health: is an enabled signal still working, checked every day without crying wolf.

Every day D, for every enabled signal, beton looks at the accounts whose outcome window closed on D
(the day's new evidence) and at those that closed in the `window_days` before D (a rolling window, for
display and the minimum-data rule), and compares them with the signal's reference: the counts it was
discovered on (`beton.signals`). Three rules are available (`HealthConfig.method`); each bounds the
probability that a stable signal is ever flagged `degrading` or `broken` in a year of daily looks by
`alpha` (per `looks_per_year` looks; `simulate_false_alarms` and `core.risk_sets.simulate_rules` measure
it). The third, **`risk_set`**, feeds the same Shiryaev–Roberts statistics (`shiryaev_roberts_evidence`)
the day's conversions among the accounts still at risk, stratified by account age, instead of the day's
closed outcomes: a conversion counts the day it happens, not when its window closes (`core.risk_sets`,
Cox 1972); its guarantee is measured by simulation, not proved (hazards are not proportional).

**`sequential`: a Shiryaev–Roberts procedure on daily likelihood ratios** (Shiryaev 1963,
Roberts 1966). Each day adds the likelihood ratio LR_D of that day's newly closed accounts only
(non-overlapping data), and the statistic sums, over every possible change day s, the evidence that the
signal changed on s: R_D = Σ_{s ≤ D} Π_{j=s..D} LR_j = (1 + R_{D−1})·LR_D. Under the null each product
has mean 1, so R_D − D is a martingale (Pollak 1985) and Doob's maximal inequality gives
P(max over a year's looks of R ≥ A) ≤ looks_per_year / A. The alarm level is A = looks_per_year / (α/2),
i.e. log R ≥ h = log(2 · looks_per_year / α); R is never below the CUSUM's e^W (Page 1954) — a sum
over change days, not their maximum — so it alarms no later than a CUSUM with the same guarantee.

* *The unknown base rate* is removed by conditioning on each day's conversions: given m conversions
  among n₁ accounts with the signal and n₂ without, the number a with the signal follows Fisher's
  noncentral hypergeometric distribution with parameter the odds ratio ψ (conversion with vs without),
  whatever the base rate. The test is therefore on the odds ratio; it moves with the lift (at a fixed
  base rate ψ is increasing in the lift, ψ = 1 when the lift is 1, and ψ ≥ lift when lift ≥ 1).
* *The reference is estimated*: the null is the reference's lower confidence bound,
  log ψ₀ = log ψ̂_ref − z·se_ref (Woolf log odds ratio and standard error, z = Φ⁻¹(1 − α/2)), so a
  reference that overstates the signal by chance costs at most α/2. The likelihood ratio of a lower
  ψ₁ against ψ₀ is decreasing in a (monotone likelihood ratio), so the martingale bound holds for every
  true ψ ≥ ψ₀, not only ψ = ψ₀.
* *The size of a change is unknown*: LR_D is the equal-weight mixture of two alternatives, the effect
  gone (ψ₁ = 1) and shrunk (log ψ₁ = `degraded_effect_share` · log ψ₀, half by default); a mixture of
  likelihood ratios has mean 1 as well.
* α is split in two equal parts, the reference bound and the degrading statistic, so P(a stable signal
  is ever flagged in a year) ≤ α/2 + α/2 = α.

Rules (checked in this order):

* `broken` — the Shiryaev–Roberts statistic of ψ₁ = 1 (no effect) against ψ₀ = `min_lift` has reached
  A (evidence that the odds ratio, hence the lift, is below `min_lift`) and the signal is `degrading`,
  or has no degrading test (then this statistic alone flags it, and carries the α/2). Off when
  `min_lift` ≤ 1.
* `degrading` — the degrading statistic has reached A (off when the reference bound ψ₀ ≤ 1: the
  reference cannot tell the signal from no effect).
* `insufficient_data` — no alarm, and fewer than `min_fired` accounts with (or without) the signal in
  the rolling window, or fewer than `min_conversions` conversions in it.
* `healthy` — otherwise.

The evidence accumulates from the first monitoring day; a signal that recovers sees R decay back below
A. Days with no closures, no conversions, or no accounts with (or without) the signal carry no
information: their likelihood ratio is exactly 1.

**`bonferroni`: alpha spending over the rolling windows.** Each day tests the rolling
window's lift at α_look = α / looks_per_year (one-sided, z = Φ⁻¹(1 − α_look)); the union bound over a
year's looks gives the same guarantee whatever the overlap between windows, but a window of 90 days
must fill with post-change accounts before it fires. On closed outcomes the sequential rule is no
faster where the evidence per day is thin (about 10–20 accounts closing a day); it halves the delay
from about 50 a day. The settings' default is `risk_set`, which sees conversions weeks before their
windows close (`benchmarks/health_simulation.py`); `HealthConfig`'s own default stays `bonferroni`,
the rule that needs no risk sets.

* `insufficient_data` — fewer than `min_fired` accounts with (or without) the signal in the window,
  or fewer than `min_conversions` conversions in it.
* `broken` — the window's lift is credibly below `min_lift`: exp(log L_w + z·se_w) < min_lift,
  se_w = √(1/a − 1/n₁ + 1/c − 1/n₂) (Katz), Haldane +0.5 when a or c is 0.
* `degrading` — the window's lift is credibly below the reference:
  (log L_w − log L_ref) / √(se_w² + se_ref²) < −z.
* `healthy` — otherwise.

References: Shiryaev (1963), *Theory Probab. Appl.* 8:22–46 and Roberts (1966), *Technometrics*
8:411–430 (the procedure); Pollak (1985), *Ann. Statist.* 13:206–227 (R − n is a martingale under
the null); Page (1954), *Biometrika* 41:100–115 (CUSUM); Lorden (1971), *Ann. Math. Statist.*
42:1897–1908; Fisher
(1935), *J. R. Statist. Soc.* 98:39–82 and Harkness (1965), *Ann. Math. Statist.* 36:938–945 (the
noncentral hypergeometric conditional distribution); Woolf (1955), *Ann. Hum. Genet.* 19:251–253 (log
odds ratio standard error); Katz, Baptista, Azen & Pike (1978), *Biometrics* 34:469–474 (log lift CI).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy import special, stats

from beton_pipeline.core.stats import log_lift_and_variance

HEALTH_STATES = ("healthy", "degrading", "broken", "insufficient_data")
HEALTH_METHODS = ("sequential", "bonferroni", "risk_set")
SEQUENTIAL_METHODS = ("sequential", "risk_set")
"""The rules that alarm on a Shiryaev–Roberts statistic (their evidence columns and alarm level apply)."""
ALPHA_PARTS = 2
"""The sequential rule splits α in two: the reference's lower bound and the alarm statistic."""
_GRID_CELLS = 1_000_000
"""Largest padded (rows × support) grid the noncentral hypergeometric normaliser works on at once."""


@dataclass(frozen=True)
class HealthConfig:
    """Monitoring settings (beton.yaml `monitoring`); the rules are in the module docstring."""

    alpha: float = 0.05
    looks_per_year: int = 365
    min_fired: int = 30
    min_conversions: int = 10
    min_lift: float = 1.3
    method: str = "bonferroni"
    degraded_effect_share: float = 0.5

    def __post_init__(self) -> None:
        if self.method not in HEALTH_METHODS:
            raise ValueError(f"method must be one of {HEALTH_METHODS}, got {self.method!r}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.looks_per_year < 1:
            raise ValueError(f"looks_per_year must be at least 1, got {self.looks_per_year}")
        if not 0 <= self.degraded_effect_share < 1:
            raise ValueError(f"degraded_effect_share must be in [0, 1), got {self.degraded_effect_share}")

    @property
    def alpha_per_look(self) -> float:
        """What one look may spend: α / looks_per_year (bonferroni), or 1/A = α / (2 · looks_per_year), the
        alarm statistic's mean growth per look over its alarm level (sequential, risk_set)."""
        parts = ALPHA_PARTS if self.method in SEQUENTIAL_METHODS else 1
        return self.alpha / (parts * self.looks_per_year)

    @property
    def alarm_threshold(self) -> float:
        """h = log A = log(2 · looks_per_year / α): the level of log R (nats) of a `degrading` or `broken` alarm."""
        return float(np.log(ALPHA_PARTS * self.looks_per_year / self.alpha))

    @property
    def reference_z(self) -> float:
        """z = Φ⁻¹(1 − α/2): the one-sided bound taken on the reference's log odds ratio."""
        return float(stats.norm.isf(self.alpha / ALPHA_PARTS))


@dataclass(frozen=True)
class SignalCounts:
    """Conversions and accounts with (a/n1) and without (c/n2) a signal, any shape (days × signals for
    daily or rolling-window counts, one per signal for a reference)."""

    conversions_with: np.ndarray
    n_with: np.ndarray
    conversions_without: np.ndarray
    n_without: np.ndarray

    def rolling(self, window_days: int) -> SignalCounts:
        """The sums over the trailing `window_days` days (axis 0) of daily counts."""
        return SignalCounts(*(rolling_window_counts(x, window_days) for x in dataclasses.astuple(self)))


@dataclass(frozen=True)
class HealthResult:
    """Per (day, signal) row of the bonferroni rule: window lift, its standard error, the test statistic and the health."""

    lift: np.ndarray
    log_se: np.ndarray
    lift_ci_low: np.ndarray
    lift_ci_high: np.ndarray
    z_vs_reference: np.ndarray
    health: np.ndarray


def log_lift_and_se(a, n1, c, n2) -> tuple[np.ndarray, np.ndarray]:
    """log(rate_with / rate_without) and its Katz standard error (`core.stats.log_lift_and_variance`)."""
    log_lift, variance = log_lift_and_variance(a, n1, c, n2)
    with np.errstate(invalid="ignore"):
        return log_lift, np.sqrt(variance)


def log_odds_ratio_and_se(a, n1, c, n2) -> tuple[np.ndarray, np.ndarray]:
    """Woolf's log odds ratio log(a·d / (b·c)) and its standard error √(1/a + 1/b + 1/c + 1/d), per row.

    b = n1 − a and d = n2 − c are the non-converters with and without the signal; 0.5 is added to all
    four cells of a row with a zero cell (Haldane–Anscombe). NaN where n1 or n2 is 0.

    References: Woolf (1955), *Ann. Hum. Genet.* 19:251–253; Haldane (1956), *Ann. Hum. Genet.* 20:309–311.
    """
    a, n1, c, n2 = (np.asarray(v, dtype=np.float64) for v in (a, n1, c, n2))
    b, d = n1 - a, n2 - c
    shift = np.where((a == 0) | (b == 0) | (c == 0) | (d == 0), 0.5, 0.0)
    a, b, c, d = a + shift, b + shift, c + shift, d + shift
    empty = (n1 <= 0) | (n2 <= 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_or = np.where(empty, np.nan, np.log(a) + np.log(d) - np.log(b) - np.log(c))
        se = np.where(empty, np.nan, np.sqrt(1 / a + 1 / b + 1 / c + 1 / d))
    return log_or, se


def _log_binomial_grid(n1, n2, m, lo, width) -> tuple[np.ndarray, np.ndarray]:
    """log C(n1, x)·C(n2, m − x) on the support x = lo … lo + width − 1 of each row, on one padded
    (rows × max width) grid, scaled by the row maximum (−inf outside the support), and k = x − lo."""
    k = np.arange(int(width.max()))[None, :]
    x = lo[:, None] + k
    valid = k < width[:, None]
    xs = np.where(valid, x, lo[:, None]).astype(np.float64)
    n1f, n2f, mf = (v.astype(np.float64)[:, None] for v in (n1, n2, m))
    log_binoms = (
        special.gammaln(n1f + 1)
        - special.gammaln(xs + 1)
        - special.gammaln(n1f - xs + 1)
        + special.gammaln(n2f + 1)
        - special.gammaln(mf - xs + 1)
        - special.gammaln(n2f - mf + xs + 1)
    )
    log_binoms = np.where(valid, log_binoms, -np.inf)
    log_binoms -= log_binoms.max(axis=1, keepdims=True)
    return log_binoms, k.astype(np.float64)


def _log_normalisers(n1, n2, m, lo, width, log_odds: tuple[np.ndarray, ...]) -> list[np.ndarray]:
    """log Σ_x C(n1, x)·C(n2, m − x)·ψ^(x − lo) over the support x = lo … lo + width − 1, for each ψ in
    `log_odds`, on one padded (rows × max width) grid (terms scaled by their row maximum)."""
    log_binoms, kf = _log_binomial_grid(n1, n2, m, lo, width)
    return [special.logsumexp(log_binoms + kf * lp[:, None], axis=1) for lp in log_odds]


def _support(n1, n2, m) -> tuple[np.ndarray, np.ndarray]:
    """The lowest value and the width of the support of a given the margins: max(0, m − n2) … min(n1, m)."""
    lo = np.maximum(0, m - n2)
    return lo, np.minimum(n1, m) - lo + 1


def _by_width_chunks(rows: np.ndarray, width: np.ndarray):
    """`rows` sorted by support width, in chunks whose padded grids hold at most `_GRID_CELLS` cells."""
    rows = rows[np.argsort(width[rows], kind="stable")]
    per_chunk = max(1, _GRID_CELLS // int(width[rows[-1]])) if rows.size else 1
    for start in range(0, rows.size, per_chunk):
        yield rows[start : start + per_chunk]


def noncentral_grid(n1, n2, m) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The support of each row's noncentral hypergeometric distribution as one padded grid: log C(n1, x)·
    C(n2, m − x) at x = lo + k (row-scaled, −inf past the support), k, and lo; for `noncentral_grid_moments`
    at many odds ratios (computed once: it does not depend on ψ)."""
    n1, n2, m = (np.asarray(v, dtype=np.int64).ravel() for v in (n1, n2, m))
    lo, width = _support(n1, n2, m)
    if not n1.size:
        return np.zeros((0, 1)), np.zeros((1, 1)), lo
    log_binoms, kf = _log_binomial_grid(n1, n2, m, lo, width)
    return log_binoms, kf, lo


def noncentral_grid_moments(log_binoms, k, log_odds) -> tuple[np.ndarray, np.ndarray]:
    """Mean of x − lo and variance per row of a `noncentral_grid`, at the rows' log odds ratios."""
    log_w = log_binoms + k * np.asarray(log_odds, dtype=np.float64)[:, None]
    w = np.exp(log_w - log_w.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    first = (w * k).sum(axis=1)
    return first, np.maximum((w * (k - first[:, None]) ** 2).sum(axis=1), 0.0)


def fisher_noncentral_moments(n1, n2, m, log_odds) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of Fisher's noncentral hypergeometric distribution per row (the conversions among
    n1 accounts with the signal, given m conversions among n1 + n2, odds ratio ψ = exp(`log_odds`)).

    E = Σ_x x·C(n1, x)·C(n2, m − x)·ψ^x / Σ_x C(n1, x)·C(n2, m − x)·ψ^x, Var likewise, summed exactly over
    the support (no approximation); rows with a one-point support have variance 0. These are the score's
    expectation and the information of the conditional likelihood (`core.risk_sets.conditional_log_odds_ratio`).

    References: Fisher (1935), *J. R. Statist. Soc.* 98:39–82; Harkness (1965), *Ann. Math. Statist.* 36:938–945.
    """
    n1, n2, m, lp = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.int64) for v in (n1, n2, m)), np.asarray(log_odds, dtype=np.float64)
    )
    shape = n1.shape
    n1, n2, m, lp = (v.ravel() for v in (n1, n2, m, lp))
    lo, width = _support(n1, n2, m)
    mean = lo.astype(np.float64)
    var = np.zeros(n1.shape, dtype=np.float64)
    for chunk in _by_width_chunks(np.flatnonzero(width > 1), width):
        log_binoms, kf = _log_binomial_grid(n1[chunk], n2[chunk], m[chunk], lo[chunk], width[chunk])
        first, var[chunk] = noncentral_grid_moments(log_binoms, kf, lp[chunk])
        mean[chunk] += first
    return mean.reshape(shape), var.reshape(shape)


def fisher_noncentral_log_lr(a, n1, n2, m, log_odds_null, log_odds_alt) -> np.ndarray:
    """log f(a; ψ₁) − log f(a; ψ₀) per row, f Fisher's noncentral hypergeometric pmf.

    f(a; ψ) = C(n1, a)·C(n2, m − a)·ψ^a / Σ_x C(n1, x)·C(n2, m − x)·ψ^x: the distribution of the
    conversions a among n1 accounts with the signal, given m conversions among the n1 + n2 accounts,
    when the odds ratio of converting with vs without is ψ (whatever the base rate). The binomial
    coefficients cancel in the ratio. Rows whose support is one point (m = 0, n1 = 0, n2 = 0,
    m = n1 + n2) carry no information and give 0, as do rows with ψ₁ = ψ₀ or non-finite log odds.
    Vectorised over rows (broadcast), on padded grids of at most `_GRID_CELLS` cells.

    References: Fisher (1935), *J. R. Statist. Soc.* 98:39–82; Harkness (1965), *Ann. Math. Statist.*
    36:938–945.
    """
    a, n1, n2, m, l0, l1 = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.int64) for v in (a, n1, n2, m)),
        np.asarray(log_odds_null, dtype=np.float64),
        np.asarray(log_odds_alt, dtype=np.float64),
    )
    shape = a.shape
    a, n1, n2, m, l0, l1 = (v.ravel() for v in (a, n1, n2, m, l0, l1))
    lo, width = _support(n1, n2, m)
    if np.any((a < lo) | (a > lo + width - 1)):
        raise ValueError("conversions with the signal outside the support given the day's margins")
    out = np.zeros(a.shape, dtype=np.float64)
    rows = np.flatnonzero((width > 1) & np.isfinite(l0) & np.isfinite(l1) & (l0 != l1))
    # sorted by support width, so each chunk's padded grid is about as wide as its own rows need
    for chunk in _by_width_chunks(rows, width):
        z0, z1 = _log_normalisers(n1[chunk], n2[chunk], m[chunk], lo[chunk], width[chunk], (l0[chunk], l1[chunk]))
        out[chunk] = (a[chunk] - lo[chunk]) * (l1[chunk] - l0[chunk]) - (z1 - z0)
    return out.reshape(shape)


def shiryaev_roberts_log(increments: np.ndarray, start: int = 0) -> np.ndarray:
    """log R_t of the Shiryaev–Roberts statistic along axis 0 from daily log likelihood ratios x_t:
    R_t = (1 + R_{t−1})·e^(x_t) from day index `start` (R = 0, log R = −inf, before it).

    Computed without a loop as R_t = Σ_{s=start..t} exp(S_t − S_{s−1}) = e^(S_t) · Σ_s e^(−S_{s−1}), S the
    cumulative sum of the increments from `start` (S_{start−1} = 0), by a running log-sum-exp.

    References: Shiryaev (1963), *Theory Probab. Appl.* 8:22–46; Roberts (1966), *Technometrics* 8:411–430.
    """
    x = np.asarray(increments, dtype=np.float64)
    out = np.full(x.shape, -np.inf)
    if x.shape[0] <= start:
        return out
    s = np.cumsum(x[start:], axis=0)
    previous = np.concatenate([np.zeros((1, *s.shape[1:])), s[:-1]], axis=0)
    out[start:] = s + np.logaddexp.accumulate(-previous, axis=0)
    return out


def assess_health(
    a,
    n1,
    c,
    n2,
    reference_lift,
    reference_log_se,
    config: HealthConfig = HealthConfig(method="bonferroni"),
    confidence_level: float = 0.95,
) -> HealthResult:
    """The bonferroni rule's health of each (day, signal) from its window counts and its reference lift
    (rules in the module docstring), with the window's lift and Katz CI (used by both rules for display).

    a/n1: conversions/accounts with the signal in the window; c/n2: without. Vectorised over rows.
    The reported CI is the ordinary two-sided `confidence_level` Katz interval (for display); the
    health tests use the level α / looks_per_year.
    """
    a, n1, c, n2 = (np.asarray(x, dtype=np.float64) for x in (a, n1, c, n2))
    log_lift, se = log_lift_and_se(a, n1, c, n2)
    z_look = stats.norm.isf(config.alpha / config.looks_per_year)
    z_ci = stats.norm.isf((1 - confidence_level) / 2)
    ref_log = np.log(np.asarray(reference_lift, dtype=np.float64))
    ref_se = np.asarray(reference_log_se, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        z_ref = (log_lift - ref_log) / np.sqrt(se**2 + np.nan_to_num(ref_se) ** 2)
        upper_look = log_lift + z_look * se
    insufficient = _too_little_data(a, n1, c, n2, config)
    broken = upper_look < np.log(config.min_lift)
    degrading = z_ref < -z_look
    health = np.select(
        [insufficient, broken, degrading], ["insufficient_data", "broken", "degrading"], default="healthy"
    ).astype(object)
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = np.where(c > 0, (a / n1) / (c / n2), np.nan)
    return HealthResult(
        lift=lift,
        log_se=se,
        lift_ci_low=np.exp(log_lift - z_ci * se),
        lift_ci_high=np.exp(log_lift + z_ci * se),
        z_vs_reference=z_ref,
        health=health,
    )


def _too_little_data(a, n1, c, n2, config: HealthConfig) -> np.ndarray:
    """The minimum-data rule on window counts: fewer than `min_fired` with or without, or `min_conversions`."""
    return (n1 < config.min_fired) | (n2 < config.min_fired) | ((a + c) < config.min_conversions)


@dataclass(frozen=True)
class SequentialEvidence:
    """The sequential rule's statistics, log R (days × signals, nats), and the log odds ratios they test."""

    degrading: np.ndarray
    broken: np.ndarray
    null_log_odds: np.ndarray
    """Per signal: log ψ₀ = the reference's lower bound (NaN when the degrading test is off)."""
    shrunk_log_odds: np.ndarray
    """Per signal: the shrunk alternative `degraded_effect_share` · log ψ₀ (the other alternative is 0)."""

    @property
    def has_degrading_test(self) -> np.ndarray:
        """Per signal: whether the reference bound ψ₀ exceeds 1, so that a degrading test exists."""
        return np.isfinite(self.null_log_odds)


def sequential_evidence(
    daily: SignalCounts, reference: SignalCounts, config: HealthConfig = HealthConfig(), start: int = 0
) -> SequentialEvidence:
    """The `degrading` and `broken` Shiryaev–Roberts statistics (log R) of each signal over the days of
    `daily` (days × signals counts of the accounts whose outcome closed that day), from day index `start`.

    `reference`: per signal, the counts the signal was discovered on. The degrading statistic's daily
    likelihood ratio is the equal mixture of ψ₁ = 1 and log ψ₁ = share · log ψ₀ against
    log ψ₀ = Woolf log OR − z·se of the reference (off, log R = −inf, when ψ₀ ≤ 1); the broken one tests
    ψ₁ = 1 against ψ₀ = `min_lift` (off when `min_lift` ≤ 1). Each day's ratio is
    `fisher_noncentral_log_lr` of that day's 2×2 table.
    """
    a, n1, c, n2 = (np.asarray(x, dtype=np.int64) for x in dataclasses.astuple(daily))
    m = a + c
    ref_log, ref_se = log_odds_ratio_and_se(*dataclasses.astuple(reference))
    return shiryaev_roberts_evidence(
        lambda null, alt: fisher_noncentral_log_lr(a, n1, n2, m, null, alt), ref_log, ref_se, config, start
    )


def shiryaev_roberts_evidence(
    daily_log_lr, reference_log_odds, reference_se, config: HealthConfig = HealthConfig(), start: int = 0
) -> SequentialEvidence:
    """The `degrading` and `broken` statistics (log R, days × signals) from a signal's reference log odds ratio
    and its standard error (per signal) and `daily_log_lr(log ψ₀, log ψ₁)`: the days × signals log likelihood
    ratios of each day's data for ψ₁ against ψ₀ (per-signal arrays, broadcast).

    The null is the reference's lower bound log ψ₀ = log ψ̂ − z·se (off, log R = −inf, when ψ₀ ≤ 1); the
    degrading statistic is the equal mixture of the Shiryaev–Roberts statistics of ψ₁ = 1 and
    log ψ₁ = share · log ψ₀; the broken one tests ψ₁ = 1 against ψ₀ = `min_lift` (off when `min_lift` ≤ 1).
    Shared by the sequential rule (daily closures) and the risk_set rule (daily risk sets).
    """
    ref_log = np.asarray(reference_log_odds, dtype=np.float64)
    ref_se = np.asarray(reference_se, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        null = ref_log - config.reference_z * ref_se
        testable = np.isfinite(null) & (null > 0)
    null = np.where(testable, null, np.nan)
    shrunk = config.degraded_effect_share * null
    alternatives = (0.0,) if config.degraded_effect_share == 0 else (0.0, config.degraded_effect_share)
    statistics = [
        shiryaev_roberts_log(daily_log_lr(np.nan_to_num(null), share * np.nan_to_num(null)), start)
        for share in alternatives
    ]
    # the equal-weight mixture of the alternatives' statistics: log(Σ_k R_k / K)
    degrading = special.logsumexp(np.stack(statistics), axis=0) - np.log(len(alternatives))
    degrading = np.where(testable, degrading, -np.inf)
    if config.min_lift > 1:
        broken = shiryaev_roberts_log(
            daily_log_lr(np.full(null.shape, np.log(config.min_lift)), np.zeros(null.shape)), start
        )
    else:
        broken = np.full(degrading.shape, -np.inf)
    return SequentialEvidence(degrading=degrading, broken=broken, null_log_odds=null, shrunk_log_odds=shrunk)


@dataclass(frozen=True)
class HealthOverDays:
    """Health of every (day, signal) (days × signals arrays): the rolling window's counts and lift (Katz CI,
    z against the reference lift), the sequential evidence (NaN under the bonferroni rule) and the state."""

    window: SignalCounts
    lift: np.ndarray
    lift_ci_low: np.ndarray
    lift_ci_high: np.ndarray
    z_vs_reference: np.ndarray
    degrading_evidence: np.ndarray
    broken_evidence: np.ndarray
    health: np.ndarray

    @property
    def flagged(self) -> np.ndarray:
        """True where the health is `degrading` or `broken` (an alarm)."""
        return np.isin(self.health, ("degrading", "broken"))


def health_over_days(
    daily: SignalCounts,
    window_days: int,
    reference: SignalCounts,
    config: HealthConfig = HealthConfig(),
    confidence_level: float = 0.95,
    start: int = 0,
    evidence: SequentialEvidence | None = None,
) -> HealthOverDays:
    """Every signal's health on every day of `daily` (days × signals counts of the outcomes closed that day;
    `reference`: per signal, its discovery counts), by `config.method` (rules in the module docstring).

    The sequential evidence accumulates from day index `start` (the first monitoring day; earlier rows
    only fill the first rolling windows). Every rule reports the rolling window's lift for display.
    `evidence`: the statistics the sequential rules alarm on, when computed elsewhere; the risk_set rule
    requires it (`core.risk_sets.risk_set_evidence`, from the daily risk sets), the sequential rule computes
    it from `daily` when it is None.
    """
    window = daily.rolling(window_days)
    shape = np.shape(window.n_with)
    ref_log, ref_se = log_lift_and_se(*dataclasses.astuple(reference))
    flat = [np.ravel(x) for x in dataclasses.astuple(window)]
    bonferroni = assess_health(
        *flat,
        np.broadcast_to(np.exp(ref_log), shape).ravel(),
        np.broadcast_to(ref_se, shape).ravel(),
        config,
        confidence_level,
    )
    if config.method == "bonferroni":
        health = bonferroni.health.reshape(shape)
        degrading_evidence = broken_evidence = np.full(shape, np.nan)
    else:
        if evidence is None:
            if config.method == "risk_set":
                raise ValueError("the risk_set rule needs its evidence (core.risk_sets.risk_set_evidence)")
            evidence = sequential_evidence(daily, reference, config, start)
        h = config.alarm_threshold
        degrading = evidence.degrading >= h
        broken = (evidence.broken >= h) & (degrading | ~evidence.has_degrading_test)
        insufficient = _too_little_data(*dataclasses.astuple(window), config)
        health = np.select(
            [broken, degrading, insufficient],
            ["broken", "degrading", "insufficient_data"],
            default="healthy",
        ).astype(object)
        degrading_evidence, broken_evidence = evidence.degrading, evidence.broken
    return HealthOverDays(
        window=window,
        lift=bonferroni.lift.reshape(shape),
        lift_ci_low=bonferroni.lift_ci_low.reshape(shape),
        lift_ci_high=bonferroni.lift_ci_high.reshape(shape),
        z_vs_reference=bonferroni.z_vs_reference.reshape(shape),
        degrading_evidence=degrading_evidence,
        broken_evidence=broken_evidence,
        health=health,
    )


def rolling_window_counts(daily: np.ndarray, window_days: int) -> np.ndarray:
    """Sums over the trailing `window_days` (inclusive of the day) along axis 0, by cumulative sums."""
    cum = np.cumsum(daily, axis=0)
    shifted = np.zeros_like(cum)
    shifted[window_days:] = cum[:-window_days]
    return cum - shifted


def daily_counts(closure_day: np.ndarray, converted: np.ndarray, membership, n_days: int) -> SignalCounts:
    """Counts per (day, signal) over the accounts whose outcome window closed on that day.

    closure_day: per account, the index (0 … n_days−1) of the day its outcome window closed (−1 = outside);
    membership: accounts × signals sparse 0/1 matrix (the signal fired before the account's window end).
    The counts are two sparse products, Dᵀ·X and Dᵀ·(X∘y), with D the accounts × days one-hot of
    closure days.
    """
    inside = closure_day >= 0
    rows = np.flatnonzero(inside)
    day_onehot = sp.csr_matrix((np.ones(len(rows)), (closure_day[inside], rows)), shape=(n_days, len(closure_day)))
    y = np.asarray(converted, dtype=np.float64)
    fired = np.asarray((day_onehot @ membership).todense()) if membership.shape[1] else np.zeros((n_days, 0))
    fired_conv = (
        np.asarray((day_onehot @ membership.multiply(y[:, None]).tocsr()).todense())
        if membership.shape[1]
        else np.zeros((n_days, 0))
    )
    total = np.asarray(day_onehot @ np.ones(len(y))).ravel()
    total_conv = np.asarray(day_onehot @ y).ravel()
    return SignalCounts(fired_conv, fired, total_conv[:, None] - fired_conv, total[:, None] - fired)


def window_counts(
    closure_day: np.ndarray, converted: np.ndarray, membership, n_days: int, window_days: int
) -> SignalCounts:
    """Counts over the accounts whose outcome closed in the trailing window of each day (`daily_counts`
    summed over `window_days` by cumulative-sum differences)."""
    return daily_counts(closure_day, converted, membership, n_days).rolling(window_days)


@dataclass(frozen=True)
class SimulatedMonitoring:
    """Which simulated signals were flagged (`degrading` or `broken`) on which day (looks × signals)."""

    flagged: np.ndarray
    drift_day: int | None

    @property
    def false_alarm_rate(self) -> float:
        """Share of signals flagged on any day before the drift (on any day when nothing drifts)."""
        looks = self.flagged if self.drift_day is None else self.flagged[: self.drift_day]
        return float(looks.any(axis=0).mean()) if looks.shape[0] else 0.0

    @property
    def false_alarm_se(self) -> float:
        """Monte-Carlo standard error of `false_alarm_rate`: √(p(1 − p)/signals)."""
        p = self.false_alarm_rate
        return float(np.sqrt(p * (1 - p) / self.flagged.shape[1]))

    @property
    def detection_delays(self) -> np.ndarray:
        """Per signal, days from the drift (the first post-drift outcomes closing) to the first day flagged
        on or after it (inf when never flagged within the simulated days; empty without a drift)."""
        if self.drift_day is None:
            return np.array([])
        after = self.flagged[self.drift_day :]
        return np.where(after.any(axis=0), np.argmax(after, axis=0), np.inf).astype(np.float64)


def simulate_monitoring(
    n_signals: int = 500,
    days: int = 365,
    accounts_per_day: float = 20.0,
    prevalence: float = 0.25,
    base_rate: float = 0.08,
    lift: float = 2.5,
    window_days: int = 90,
    reference_accounts: int = 4000,
    config: HealthConfig = HealthConfig(),
    seed: int = 0,
    adjust_for_looks: bool = True,
    lift_after: float | None = None,
    drift_day: int | None = None,
) -> SimulatedMonitoring:
    """`days` daily looks at simulated signals by `config`'s rule; with `lift_after` and `drift_day`, the
    lift changes to `lift_after` for the outcomes closing from look `drift_day` on.

    Accounts reach their outcome at Poisson(`accounts_per_day`) a day; each has the signal with
    `prevalence`, converting at `base_rate` without and `base_rate × lift` with. The reference is
    estimated from `reference_accounts` earlier accounts, as discovery would. `window_days` days of
    outcomes before the first look fill the first rolling window (the sequential evidence starts at the
    first look). With `adjust_for_looks=False` the budget is spent on one look (`looks_per_year=1`), to
    show why the spending is needed. The same seed gives the same accounts whatever the rule.
    Vectorised over signals and days.
    """
    rng = np.random.default_rng(seed)
    p_with = min(base_rate * lift, 1.0)
    # reference (discovery) counts
    n1_ref = rng.binomial(reference_accounts, prevalence, n_signals)
    n2_ref = reference_accounts - n1_ref
    a_ref = rng.binomial(n1_ref, p_with)
    c_ref = rng.binomial(n2_ref, base_rate)
    # daily monitoring stream
    arrivals = rng.poisson(accounts_per_day, (days + window_days, n_signals))
    with_signal = rng.binomial(arrivals, prevalence)
    without = arrivals - with_signal
    p_with_by_day = np.full(days + window_days, p_with)
    if lift_after is not None and drift_day is not None:
        p_with_by_day[window_days + drift_day :] = min(base_rate * lift_after, 1.0)
    conv_with = rng.binomial(with_signal, p_with_by_day[:, None])
    conv_without = rng.binomial(without, base_rate)
    cfg = config if adjust_for_looks else dataclasses.replace(config, looks_per_year=1)
    result = health_over_days(
        SignalCounts(conv_with, with_signal, conv_without, without),
        window_days,
        SignalCounts(a_ref, n1_ref, c_ref, n2_ref),
        cfg,
        start=window_days,
    )
    return SimulatedMonitoring(
        flagged=result.flagged[window_days:], drift_day=drift_day if lift_after is not None else None
    )


def simulate_false_alarms(
    n_signals: int = 500,
    days: int = 365,
    accounts_per_day: float = 20.0,
    prevalence: float = 0.25,
    base_rate: float = 0.08,
    lift: float = 2.5,
    window_days: int = 90,
    reference_accounts: int = 4000,
    config: HealthConfig = HealthConfig(),
    seed: int = 0,
    adjust_for_looks: bool = True,
) -> float:
    """Share of stable signals (true lift constant) flagged `degrading` or `broken` on any of `days` daily
    looks (`simulate_monitoring` without a drift)."""
    return simulate_monitoring(
        n_signals,
        days,
        accounts_per_day,
        prevalence,
        base_rate,
        lift,
        window_days,
        reference_accounts,
        config,
        seed,
        adjust_for_looks,
    ).false_alarm_rate
