"""The `risk_set` health rule: evidence of drift from conversions the day they happen, not the day an
outcome window closes.

**Daily risk sets, stratified by account age** (Cox 1972, discrete-time partial likelihood). On day t
an account is *at risk* from the day it started until it converts or its outcome window ends, whichever
comes first (both days included). Each day's risk set is cut by account age (t − start) into the bands
`AGE_BANDS_DAYS`, and within a band into the accounts whose signal fired *before* t (n₁) and the others
(n₂). Given the m conversions of that day and band, the number a among the n₁ follows Fisher's
noncentral hypergeometric distribution with parameter ψ, the odds ratio of the daily hazard (converting
that day, among those still at risk) with vs without the signal — whatever the baseline hazard of that
day and band, which cancels. The day's likelihood is the product over its bands, with one ψ common to
all days and bands; the bands stratify the baseline, so a shift of the risk set's age mix (a signal that
fires early predicts early conversions: hazards are not proportional over age) does not move the test.

* *Reference*: ψ̂ and its standard error by conditional maximum likelihood over the risk sets of the
  discovery cohorts (`conditional_log_odds_ratio`: Newton–Raphson on the exact conditional score and
  information; the same estimator as conditional logistic regression of the per-account-day rows
  grouped by day × band, Breslow & Day 1980).
* *Alarm*: the Shiryaev–Roberts statistics of `core.monitoring` (Shiryaev 1963, Roberts 1966, Pollak
  1985), unchanged, fed the daily log likelihood ratios Σ_bands log f(a; ψ₁)/f(a; ψ₀) — the null
  ψ₀ the reference's lower bound, the alternatives ψ = 1 and ψ₀^share, the level log(2 · looks/α).
* *The guarantee is measured, not proved.* The martingale argument needs each day's conversions, given
  the past, to follow the model at some ψ ≥ ψ₀. Within a band the hazard still varies with the time
  since the signal fired, so the stable-signal null holds only approximately; `simulate_rules` measures
  the false-alarm rate on account-level conversion times with such non-proportional hazards
  (`benchmarks/health_simulation.py`).

References: Cox (1972), *J. R. Statist. Soc. B* 34:187–220 (the discrete-time partial likelihood);
Breslow & Day (1980), *Statistical Methods in Cancer Research I*, ch. 7 (conditional logistic regression
on matched sets); Fisher (1935), *J. R. Statist. Soc.* 98:39–82 and Harkness (1965), *Ann. Math.
Statist.* 36:938–945 (the noncentral hypergeometric distribution); Shiryaev (1963), *Theory Probab.
Appl.* 8:22–46; Roberts (1966), *Technometrics* 8:411–430; Pollak (1985), *Ann. Statist.* 13:206–227.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from beton_pipeline.core.monitoring import (
    HealthConfig,
    SequentialEvidence,
    SignalCounts,
    fisher_noncentral_log_lr,
    health_over_days,
    noncentral_grid,
    noncentral_grid_moments,
    shiryaev_roberts_evidence,
)

AGE_BANDS_DAYS = (0, 7, 14, 30)
"""Lower edges (days of account age) of the age bands each day's risk set is stratified by; the last band
is open-ended."""
NEVER = np.iinfo(np.int64).max // 4
"""The day index of a signal that never fired (later than any day)."""
_CHUNK_ACCOUNTS = 1_000_000
"""Reference accounts simulated at once (`simulate_rules` takes fewer signals per chunk when they are many)."""


def age_band(age, band_edges=AGE_BANDS_DAYS) -> np.ndarray:
    """The band index of each account age (days) in `band_edges` (−1 below the first edge)."""
    return np.searchsorted(np.asarray(band_edges, dtype=np.int64), np.asarray(age, dtype=np.int64), side="right") - 1


def risk_set_counts(
    start, last, converted, fired, group, n_groups: int, n_days: int, band_edges=AGE_BANDS_DAYS
) -> SignalCounts:
    """Per (day, age band, group): conversions and accounts at risk whose signal fired before the day
    (a, n₁) and the others (c, n₂), as days × bands × groups arrays.

    Per account (day indices, any integers; days outside 0 … n_days − 1 are not counted): `start`, the
    day it started; `last`, the last day it is at risk (the day it converted if `converted`, else the last
    day of its outcome window); `fired`, the day its signal fired (`NEVER` if it did not; the signal counts
    from the day after); `group`, the signal (0 … n_groups − 1; an account appears once per signal).
    Vectorised: each account adds at most 2 × bands intervals to a difference array (one bincount), whose
    cumulative sum over days is the number at risk.
    """
    start, last, fired, group = (np.asarray(v, dtype=np.int64) for v in (start, last, fired, group))
    converted = np.asarray(converted, dtype=bool)
    edges = np.asarray(band_edges, dtype=np.int64)
    k = len(edges)
    lows = start[:, None] + edges[None, :]
    highs = np.concatenate([lows[:, 1:], np.full((start.size, 1), NEVER)], axis=1)
    lows = np.maximum(lows, start[:, None])
    highs = np.minimum(highs, (last + 1)[:, None])
    switch = np.minimum(fired, NEVER - 1)[:, None] + 1
    seg_lo = np.minimum(np.maximum(np.stack([lows, np.maximum(lows, switch)], axis=-1), 0), n_days)
    seg_hi = np.minimum(np.maximum(np.stack([np.minimum(highs, switch), highs], axis=-1), 0), n_days)
    keep = seg_lo < seg_hi
    cell = (np.arange(k)[None, :, None] * 2 + np.arange(2)[None, None, :]) * n_groups + group[:, None, None]
    cells = k * 2 * n_groups
    size = (n_days + 1) * cells
    diff = np.bincount((seg_lo * cells + cell)[keep], minlength=size) - np.bincount(
        (seg_hi * cells + cell)[keep], minlength=size
    )
    at_risk = np.cumsum(diff.reshape(n_days + 1, k, 2, n_groups), axis=0)[:n_days]
    band = age_band(last - start, edges)
    event = converted & (last >= 0) & (last < n_days) & (band >= 0)
    index = ((last * k + band) * 2 + (fired < last)) * n_groups + group
    events = np.bincount(index[event], minlength=n_days * cells).reshape(n_days, k, 2, n_groups)
    return SignalCounts(events[:, :, 1], at_risk[:, :, 1], events[:, :, 0], at_risk[:, :, 0])


@dataclass(frozen=True)
class ConditionalEstimate:
    """Per signal: the conditional maximum likelihood log odds ratio, its standard error and the conversions
    in informative strata (NaN estimate without any; ±inf when every such conversion is on one side)."""

    log_odds_ratio: np.ndarray
    se: np.ndarray
    conversions: np.ndarray


def conditional_log_odds_ratio(counts: SignalCounts, max_iter: int = 200, tol: float = 1e-13) -> ConditionalEstimate:
    """The common log odds ratio β = log ψ of strata of 2×2 tables by conditional maximum likelihood, per
    signal (the last axis; every other axis indexes strata, e.g. days × age bands).

    Maximises Σ_strata log f(a; n₁, n₂, m, ψ), f Fisher's noncentral hypergeometric pmf: the score is
    Σ (a − E_ψ[a]) and the information Σ Var_ψ[a] (`fisher_noncentral_moments`, exact). The log-likelihood
    is concave in β (an exponential family in β), so a Newton–Raphson step safeguarded by a bracket (a step
    that leaves it bisects it) converges from β = 0. se = 1/√information at the estimate. Strata with a
    one-point support (no conversion, or nobody on one side) carry no information.

    This is the conditional logistic regression of the strata's account rows (conversion ~ signal, grouped
    by stratum): its conditional likelihood with a binary covariate is this product (Breslow & Day 1980,
    ch. 7); for daily risk sets, Cox's (1972) discrete-time partial likelihood.
    """
    a, n1, c, n2 = (np.asarray(x, dtype=np.int64) for x in dataclasses.astuple(counts))
    n_signals = a.shape[-1] if a.ndim else 1
    a, n1, c, n2 = (x.reshape(-1, n_signals) for x in (a, n1, c, n2))
    m = a + c
    lo = np.maximum(0, m - n2)
    width = np.minimum(n1, m) - lo + 1
    rows, signal = np.nonzero(width > 1)
    a, n1, n2, m, lo, width = (x[rows, signal] for x in (a, n1, n2, m, lo, width))
    grid, k, _ = noncentral_grid(n1, n2, m)
    observed = np.bincount(signal, weights=a - lo, minlength=n_signals)
    highest = np.bincount(signal, weights=width - 1, minlength=n_signals)
    conversions = np.bincount(signal, weights=m, minlength=n_signals).astype(np.int64)
    finite = (observed > 0) & (observed < highest)
    beta = np.zeros(n_signals)
    lower = np.full(n_signals, -np.inf)
    upper = np.full(n_signals, np.inf)
    info = np.zeros(n_signals)
    active = finite.copy()
    for _iteration in range(max_iter):
        if not active.any():
            break
        mean, var = noncentral_grid_moments(grid, k, beta[signal])
        score = np.bincount(signal, weights=a - lo - mean, minlength=n_signals)
        info = np.bincount(signal, weights=var, minlength=n_signals)
        lower = np.where(active & (score > 0), np.maximum(lower, beta), lower)
        upper = np.where(active & (score < 0), np.minimum(upper, beta), upper)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.clip(score / info, -2.0, 2.0)
        proposal = beta + step
        outside = (proposal < lower) | (proposal > upper) | ~np.isfinite(proposal)
        bisect = np.where(np.isfinite(lower) & np.isfinite(upper), (lower + upper) / 2, proposal)
        proposal = np.where(outside, bisect, proposal)
        moved = np.abs(proposal - beta)
        beta = np.where(active, proposal, beta)
        active &= moved > tol * np.maximum(1.0, np.abs(beta))
    _, var = noncentral_grid_moments(grid, k, beta[signal])
    info = np.bincount(signal, weights=var, minlength=n_signals)
    estimate = np.where(finite, beta, np.where(highest == 0, np.nan, np.where(observed == 0, -np.inf, np.inf)))
    with np.errstate(divide="ignore"):
        se = np.where(finite & (info > 0), 1 / np.sqrt(info), np.nan)
    return ConditionalEstimate(log_odds_ratio=estimate, se=se, conversions=conversions)


def risk_set_log_lr(daily: SignalCounts, log_odds_null, log_odds_alt) -> np.ndarray:
    """Per (day, signal): Σ over the age bands of log f(a; ψ₁) − log f(a; ψ₀) (`fisher_noncentral_log_lr`) of
    `daily` (days × bands × signals risk-set counts); the log odds are per signal. 0 on days without a
    conversion, or without accounts at risk on one side, in every band."""
    a, n1, c, n2 = (np.asarray(x, dtype=np.int64) for x in dataclasses.astuple(daily))
    null = np.asarray(log_odds_null, dtype=np.float64)
    alt = np.asarray(log_odds_alt, dtype=np.float64)
    return fisher_noncentral_log_lr(a, n1, n2, a + c, null, alt).sum(axis=1)


def risk_set_evidence(
    daily: SignalCounts, reference: ConditionalEstimate, config: HealthConfig, start: int = 0
) -> SequentialEvidence:
    """The risk_set rule's `degrading` and `broken` statistics (log R, days × signals) from the daily
    risk sets (days × bands × signals) and the reference hazard odds ratio, from day index `start`
    (`core.monitoring.shiryaev_roberts_evidence` on `risk_set_log_lr`). `broken` takes `min_lift` as the
    hazard odds ratio a working signal keeps."""
    return shiryaev_roberts_evidence(
        lambda null, alt: risk_set_log_lr(daily, null, alt), reference.log_odds_ratio, reference.se, config, start
    )


# --- simulation: account-level conversion times with hazards that are not proportional --------------------


@dataclass(frozen=True)
class SimulatedRules:
    """Which simulated signals each rule flagged on which look (rule → looks × signals), and the drift."""

    flagged: dict[str, np.ndarray]
    drift_look: int | None
    """The look on which the first post-drift outcomes close (None: every signal stable)."""
    change_look: int | None
    """The look on which the first post-drift accounts start (conversions can show the drift from then)."""

    def false_alarm_rate(self, rule: str) -> float:
        """Share of signals the rule flagged on any look before the drift starts (any look without one)."""
        flagged = self.flagged[rule] if self.change_look is None else self.flagged[rule][: self.change_look]
        return float(flagged.any(axis=0).mean()) if flagged.shape[0] else 0.0

    def false_alarm_se(self, rule: str) -> float:
        """Monte-Carlo standard error of `false_alarm_rate`: √(p(1 − p)/signals)."""
        p = self.false_alarm_rate(rule)
        return float(np.sqrt(p * (1 - p) / self.flagged[rule].shape[1]))

    def detection_delays(self, rule: str) -> np.ndarray:
        """Per signal, days from the first post-drift outcomes closing to the first look flagged since the
        drift started (negative: flagged before any post-drift outcome closed; inf: never)."""
        if self.drift_look is None:
            return np.array([])
        after = self.flagged[rule][self.change_look :]
        first = np.where(after.any(axis=0), np.argmax(after, axis=0), np.inf)
        return (first + self.change_look - self.drift_look).astype(np.float64)


def _conversion_days(rng, n, p, max_days) -> np.ndarray:
    """Geometric(p) days (0, 1, …) truncated to 0 … max_days − 1, by inversion."""
    q = 1 - p
    u = rng.random(n) * (1 - q**max_days)
    return np.minimum(np.floor(np.log1p(-u) / np.log(q)), max_days - 1).astype(np.int64)


def _accounts(rng, starts, group, prevalence, base_rate, lifts, conversion_window_days):
    """Each account's signal firing day and conversion (last at-risk day, converted): see `simulate_rules`."""
    n = starts.size
    has = rng.random(n) < prevalence
    fired = np.where(has, starts + rng.integers(0, 14, n), NEVER)
    baseline = rng.random(n) < base_rate
    baseline_day = starts + _conversion_days(rng, n, 0.1, 30)
    extra_p = np.clip(base_rate * (lifts - 1) / (1 - base_rate), 0, 1)
    extra = has & (rng.random(n) < extra_p)
    extra_day = np.where(has, fired, 0) + 1 + _conversion_days(rng, n, 0.25, conversion_window_days)
    day = np.minimum(np.where(baseline, baseline_day, NEVER), np.where(extra, extra_day, NEVER))
    converted = day < starts + conversion_window_days
    last = np.where(converted, day, starts + conversion_window_days - 1)
    return has, fired, converted, last


def simulate_rules(
    configs: dict[str, HealthConfig],
    n_signals: int = 500,
    days: int = 365,
    accounts_per_day: float = 20.0,
    prevalence: float = 0.25,
    base_rate: float = 0.08,
    lift: float = 2.5,
    conversion_window_days: int = 60,
    window_days: int = 90,
    reference_accounts: int = 4000,
    seed: int = 0,
    lift_after: float | None = None,
    drift_day: int | None = None,
    growth: float = 1.0,
    chunk: int = 200,
) -> SimulatedRules:
    """`days` daily looks at simulated signals by each rule of `configs`, all on the same simulated accounts.

    Accounts start at Poisson(`accounts_per_day`) a day. Each has the signal with `prevalence`; it fires
    on a day uniform in its first 14. Every account converts with `base_rate` at a baseline time (a
    geometric day, mean about 9, within its first 30); an account with the signal also converts, with the
    probability that brings its conversion rate to `base_rate × lift`, a few days after the signal fired
    (geometric, mean 3). So the signal predicts *early* conversions: the hazards with and without it are
    not proportional over account age, as in the demo. An account converts if either time falls within its
    `conversion_window_days`; its outcome closes at the end of that window.

    The reference is estimated from `reference_accounts` earlier accounts per signal: their 2×2 counts
    (bonferroni, sequential) and their risk sets' conditional estimate (risk_set). `window_days +
    conversion_window_days` days of accounts before the first look fill the first rolling window; the
    sequential statistics start at the first look. With `lift_after` and `drift_day`, accounts whose
    outcome closes from look `drift_day` on (who start `conversion_window_days` earlier) have `lift_after`.
    With `growth` ≠ 1 the daily volume grows geometrically by that factor over the simulated days (starting
    at `accounts_per_day`), so the age mix of each day's risk set shifts over time (more young accounts).
    Vectorised over accounts, in chunks of `chunk` signals; the same seed gives the same accounts.
    """
    rng = np.random.default_rng(seed)
    # about `_CHUNK_ACCOUNTS` simulated accounts at a time, whatever the reference size
    chunk = max(1, min(chunk, _CHUNK_ACCOUNTS // max(reference_accounts, 1)))
    cw = conversion_window_days
    first_look = window_days + cw
    n_days = first_look + days
    ref_days = int(np.ceil(reference_accounts / accounts_per_day))
    change_start = None if lift_after is None or drift_day is None else first_look + drift_day - cw
    flagged: dict[str, list[np.ndarray]] = {name: [] for name in configs}
    for lo in range(0, n_signals, chunk):
        g = min(chunk, n_signals - lo)
        # reference accounts: their own timeline, all closed before monitoring
        ref_start = rng.integers(0, ref_days, (reference_accounts, g)).ravel()
        ref_group = np.tile(np.arange(g), reference_accounts)
        has, fired, converted, last = _accounts(
            rng, ref_start, ref_group, prevalence, base_rate, np.full(ref_start.size, lift), cw
        )
        reference = SignalCounts(
            *(
                np.bincount(ref_group, weights=w, minlength=g).astype(np.int64)
                for w in (has & converted, has, ~has & converted, ~has)
            )
        )
        ref_risk = conditional_log_odds_ratio(
            risk_set_counts(ref_start, last, converted, fired, ref_group, g, ref_days + cw)
        )
        # the monitored stream
        rate = accounts_per_day * growth ** (np.arange(n_days) / n_days)
        arrivals = rng.poisson(rate[:, None], (n_days, g))
        start = np.repeat(np.tile(np.arange(n_days), g), arrivals.T.ravel())
        group = np.repeat(np.arange(g), arrivals.sum(axis=0))
        lifts = np.full(start.size, lift)
        if change_start is not None:
            lifts[start >= change_start] = lift_after
        has, fired, converted, last = _accounts(rng, start, group, prevalence, base_rate, lifts, cw)
        closure = start + cw
        inside = closure < n_days
        index = closure[inside] * g + group[inside]
        daily = SignalCounts(
            *(
                np.bincount(index, weights=w[inside], minlength=n_days * g).reshape(n_days, g).astype(np.int64)
                for w in (has & converted, has, ~has & converted, ~has)
            )
        )
        risk = risk_set_counts(start, last, converted, fired, group, g, n_days)
        for name, config in configs.items():
            evidence = risk_set_evidence(risk, ref_risk, config, first_look) if config.method == "risk_set" else None
            result = health_over_days(daily, window_days, reference, config, start=first_look, evidence=evidence)
            flagged[name].append(result.flagged[first_look:])
    return SimulatedRules(
        flagged={name: np.concatenate(parts, axis=1) for name, parts in flagged.items()},
        drift_look=None if change_start is None else drift_day,
        change_look=None if change_start is None else max(0, drift_day - cw),
    )
