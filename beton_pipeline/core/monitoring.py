"""Signal health: is an enabled signal still working, checked every day without crying wolf.

Each day D, for every enabled signal, beton re-measures the signal on the accounts whose outcome
window closed in the `window_days` before D (a rolling window; point-in-time features), and compares
the window's lift with the signal's reference (its discovery lift and CI from `beton.signals`).

**Repeated looks.** A test run every day at a fixed level α would raise a false alarm on almost
every stable signal within a year. beton spends α by a **Bonferroni alpha-spending rule over the
looks of each year**: every daily look of a signal is tested at α / `looks_per_year` (365 by
default), so the probability that a stable signal is ever flagged in a year of daily checks is at
most α, whatever the dependence between overlapping windows (union bound). `simulate_false_alarms`
measures it.

**Rules** (one-sided tests at level α_look = α / looks_per_year, z = Φ⁻¹(1 − α_look)):

* `insufficient_data` — fewer than `min_fired` accounts with (or without) the signal in the window,
  or fewer than `min_conversions` conversions in it.
* `broken` — the window's lift is credibly below `min_lift`: exp(log L_w + z·se_w) < min_lift,
  se_w = √(1/a − 1/n₁ + 1/c − 1/n₂) (Katz), Haldane +0.5 when a or c is 0.
* `degrading` — the window's lift is credibly below the reference:
  (log L_w − log L_ref) / √(se_w² + se_ref²) < −z.
* `healthy` — otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from beton_pipeline.core.stats import log_lift_and_variance

HEALTH_STATES = ("healthy", "degrading", "broken", "insufficient_data")


@dataclass(frozen=True)
class HealthConfig:
    """Monitoring settings (beton.yaml `monitoring`)."""

    alpha: float = 0.05
    looks_per_year: int = 365
    min_fired: int = 30
    min_conversions: int = 10
    min_lift: float = 1.3

    @property
    def alpha_per_look(self) -> float:
        return self.alpha / self.looks_per_year


@dataclass(frozen=True)
class HealthResult:
    """Per (day, signal) row: window lift, its standard error, the test statistic and the health."""

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


def assess_health(
    a,
    n1,
    c,
    n2,
    reference_lift,
    reference_log_se,
    config: HealthConfig = HealthConfig(),
    confidence_level: float = 0.95,
) -> HealthResult:
    """Health of each (day, signal) from its window counts and its reference lift (rules in the module docstring).

    a/n1: conversions/accounts with the signal in the window; c/n2: without. Vectorised over rows.
    The reported CI is the ordinary two-sided `confidence_level` Katz interval (for display); the
    health tests use the spent level α / looks_per_year.
    """
    a, n1, c, n2 = (np.asarray(x, dtype=np.float64) for x in (a, n1, c, n2))
    log_lift, se = log_lift_and_se(a, n1, c, n2)
    z_look = stats.norm.isf(config.alpha_per_look)
    z_ci = stats.norm.isf((1 - confidence_level) / 2)
    ref_log = np.log(np.asarray(reference_lift, dtype=np.float64))
    ref_se = np.asarray(reference_log_se, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        z_ref = (log_lift - ref_log) / np.sqrt(se**2 + np.nan_to_num(ref_se) ** 2)
        upper_look = log_lift + z_look * se
    insufficient = (n1 < config.min_fired) | (n2 < config.min_fired) | ((a + c) < config.min_conversions)
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


def rolling_window_counts(daily: np.ndarray, window_days: int) -> np.ndarray:
    """Sums over the trailing `window_days` (inclusive of the day) along axis 0, by cumulative sums."""
    cum = np.cumsum(daily, axis=0)
    shifted = np.zeros_like(cum)
    shifted[window_days:] = cum[:-window_days]
    return cum - shifted


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
    """Share of stable signals (true lift constant) flagged `degrading` or `broken` on any day of a year.

    Accounts reach their outcome at Poisson(`accounts_per_day`) a day; each has the signal with
    `prevalence`, converting at `base_rate` without and `base_rate × lift` with. The reference is
    estimated from `reference_accounts` earlier accounts, as discovery would. With
    `adjust_for_looks=False` every look is tested at α instead (to show why the spending is needed).
    Vectorised over signals and days.
    """
    rng = np.random.default_rng(seed)
    p_with = min(base_rate * lift, 1.0)
    # reference (discovery) counts
    n1_ref = rng.binomial(reference_accounts, prevalence, n_signals)
    n2_ref = reference_accounts - n1_ref
    a_ref = rng.binomial(n1_ref, p_with)
    c_ref = rng.binomial(n2_ref, base_rate)
    ref_log, ref_se = log_lift_and_se(a_ref, n1_ref, c_ref, n2_ref)
    # daily monitoring stream
    arrivals = rng.poisson(accounts_per_day, (days + window_days, n_signals))
    with_signal = rng.binomial(arrivals, prevalence)
    without = arrivals - with_signal
    conv_with = rng.binomial(with_signal, p_with)
    conv_without = rng.binomial(without, base_rate)
    roll = [
        rolling_window_counts(x, window_days)[window_days:] for x in (conv_with, with_signal, conv_without, without)
    ]
    cfg = (
        config
        if adjust_for_looks
        else HealthConfig(
            alpha=config.alpha,
            looks_per_year=1,
            min_fired=config.min_fired,
            min_conversions=config.min_conversions,
            min_lift=config.min_lift,
        )
    )
    result = assess_health(
        roll[0].ravel(),
        roll[1].ravel(),
        roll[2].ravel(),
        roll[3].ravel(),
        np.broadcast_to(np.exp(ref_log), roll[0].shape).ravel(),
        np.broadcast_to(ref_se, roll[0].shape).ravel(),
        cfg,
    )
    alarm = np.isin(result.health, ("degrading", "broken")).reshape(roll[0].shape)
    return float(alarm.any(axis=0).mean())


@dataclass(frozen=True)
class WindowCounts:
    """Rolling-window counts per (day, signal): a/n1 with the signal, c/n2 without (days × signals arrays)."""

    conversions_with: np.ndarray
    n_with: np.ndarray
    conversions_without: np.ndarray
    n_without: np.ndarray


def window_counts(
    closure_day: np.ndarray, converted: np.ndarray, membership, n_days: int, window_days: int
) -> WindowCounts:
    """Counts over the accounts whose outcome closed in the trailing window of each day.

    closure_day: per account, the index (0 … n_days−1) of the day its outcome window closed (−1 = outside);
    membership: accounts × signals sparse 0/1 matrix (the signal fired before the account's window end).
    The daily counts are two sparse products, Dᵀ·X and Dᵀ·(X∘y), with D the accounts × days one-hot of
    closure days; the rolling sums are cumulative-sum differences.
    """
    import scipy.sparse as sp

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
    roll = lambda x: rolling_window_counts(x, window_days)  # noqa: E731
    n_with, a = roll(fired), roll(fired_conv)
    n_all, c_all = roll(total), roll(total_conv)
    return WindowCounts(a, n_with, c_all[:, None] - a, n_all[:, None] - n_with)
