"""Live account scores: enabled signals, weighted by lift, decayed by age, calibrated to a probability.

For an account observed at time T (a live day, or a past moment for calibration):

    contribution_s = log(lift_s) · 0.5 ^ ((T − fired_at_s) / half_life_days)     for each enabled signal s fired before T
    raw(T)         = Σ_s contribution_s
    score(T)       = σ(β₀ + β₁·raw(T) + β₂·log(1 + age_days(T)))                  (logistic calibration)

`lift_s` is the signal's backtested (discovery) lift, so a signal that doubles conversion adds
log 2 to the raw score when fresh and half of it one half-life later. β are fitted by maximum
likelihood (unpenalised logistic regression) on historical accounts observed at several ages
(`calibration_ages_days`) while still in play, against whether they converted within the
conversion window: the score is the probability of converting, given what was known at that age.

**Health feeds the live scores.** On a live day D each contribution is multiplied by the factor of the
signal's health on D (`beton.signal_health`, `core.monitoring`):

| health on D | factor |
|---|---|
| `healthy`, `insufficient_data`, no health row | 1 |
| `degrading` | `degrading_weight` (0.5: the weight halves) |
| `broken` | 0 (the signal adds nothing) |

so the factors never increase from healthy to degrading to broken, and a signal that recovers gets its
weight back the day its health does. The factor depends on the day scored, not on when the signal
fired: an account that fired a signal in January and is scored in May gets May's factor. Each
down-weighted contribution says why, e.g. "weight halved: degrading since 2026-05-02", where the day
is the first of the signal's current run of days in that state. The calibration is fitted on the
full weights (the signals as discovered): health is known only for monitoring days, and a down-weighted
signal must lower the probability, not be re-learnt away.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from beton_pipeline.core.stats import wilson_interval

DAY_US = 86_400_000_000


@dataclass(frozen=True)
class ScoringConfig:
    """beton.yaml `scoring`."""

    half_life_days: float = 14.0
    calibration_ages_days: tuple[int, ...] = (1, 3, 7, 14, 21, 30, 45)
    lead_threshold: float = 0.15
    top_contributions: int = 3
    degrading_weight: float = 0.5
    max_rows_per_batch: int = 1_000_000
    """Live scores are computed over runs of days holding at most this many (account, day) rows in play."""

    def __post_init__(self) -> None:
        if not 0 <= self.degrading_weight <= 1:
            raise ValueError(f"degrading_weight must be in [0, 1], got {self.degrading_weight}")
        if self.max_rows_per_batch < 1:
            raise ValueError(f"max_rows_per_batch must be at least 1, got {self.max_rows_per_batch}")


@dataclass(frozen=True)
class Calibration:
    """σ(intercept + coef_raw·raw + coef_age·log1p(age_days)), fitted on `n` historical observations."""

    intercept: float
    coef_raw: float
    coef_age: float
    n: int

    def probability(self, raw: np.ndarray, age_days: np.ndarray) -> np.ndarray:
        z = (
            self.intercept
            + self.coef_raw * np.asarray(raw, float)
            + self.coef_age * np.log1p(np.asarray(age_days, float))
        )
        return 1.0 / (1.0 + np.exp(-z))


def contributions(
    firings: pl.DataFrame, weights: pl.DataFrame, observations: pl.DataFrame, half_life_days: float
) -> pl.DataFrame:
    """Per (observation, signal) contribution for firings strictly before the observation time.

    firings: account_id, signal_id, fired_at; weights: signal_id, weight (= log lift);
    observations: obs_id, account_id, observed_at. Returns obs_id, account_id, signal_id, fired_at,
    age_days, contribution.
    """
    joined = observations.join(firings, on="account_id").filter(pl.col("fired_at") < pl.col("observed_at"))
    return (
        joined.join(weights, on="signal_id")
        .with_columns(((pl.col("observed_at") - pl.col("fired_at")).dt.total_microseconds() / DAY_US).alias("age_days"))
        .with_columns((pl.col("weight") * (0.5 ** (pl.col("age_days") / half_life_days))).alias("contribution"))
        .select("obs_id", "account_id", "signal_id", "fired_at", "age_days", "contribution")
    )


HEALTH_SCHEMA = {"day": pl.Date, "signal_id": pl.String, "health": pl.String}
"""What the weighting reads of `beton.signal_health`."""


def health_factor(health: pl.Expr, degrading_weight: float) -> pl.Expr:
    """The weight factor of a signal in each health state (the module docstring's table): 0 when broken,
    `degrading_weight` when degrading, 1 otherwise (healthy, insufficient_data, or no health known)."""
    return (
        pl.when(health == "broken")
        .then(pl.lit(0.0))
        .when(health == "degrading")
        .then(pl.lit(float(degrading_weight)))
        .otherwise(pl.lit(1.0))
    )


def health_runs(health: pl.DataFrame) -> pl.DataFrame:
    """Each (day, signal_id) health row with `health_since`: the first day of the run of consecutive rows
    (of that signal, in day order) in the same state — the day it became what it is on `day`.

    health: day, signal_id, health (`HEALTH_SCHEMA`; other columns are dropped).
    """
    if health.is_empty():
        return pl.DataFrame(schema={**HEALTH_SCHEMA, "health_since": pl.Date})
    ordered = health.select(list(HEALTH_SCHEMA)).unique(["signal_id", "day"], keep="last").sort("signal_id", "day")
    run = (pl.col("health") != pl.col("health").shift(1)).fill_null(True).cum_sum().over("signal_id")
    return (
        ordered.with_columns(run.alias("_run"))
        .with_columns(pl.col("day").min().over("signal_id", "_run").alias("health_since"))
        .drop("_run")
    )


def _weight_note(factor: pl.Expr) -> pl.Expr:
    """'weight halved: degrading since 2026-05-02' (zero, halved, or × the factor); null at full weight."""
    how = (
        pl.when(factor == 0)
        .then(pl.lit("weight zero"))
        .when(factor == 0.5)
        .then(pl.lit("weight halved"))
        .otherwise(pl.format("weight × {}", factor.round(3)))
    )
    note = pl.format("{}: {} since {}", how, pl.col("health"), pl.col("health_since").dt.strftime("%Y-%m-%d"))
    return pl.when(factor < 1).then(note).otherwise(pl.lit(None, dtype=pl.String))


def weigh_by_health(contribs: pl.DataFrame, health: pl.DataFrame, degrading_weight: float) -> pl.DataFrame:
    """`contribs` (with `day`, `signal_id`, `contribution`) with each contribution multiplied by the factor
    of the signal's health on that day (`health_factor`); adds `health`, `health_since`, `weight_factor`
    and `weight_note` (why it was down-weighted, null at full weight).

    health: `beton.signal_health` rows (day, signal_id, health) up to the days scored; a (day, signal)
    without a row keeps its full weight.
    """
    runs = health_runs(health)
    joined = contribs.join(runs, on=["day", "signal_id"], how="left")
    factor = health_factor(pl.col("health"), degrading_weight)
    return joined.with_columns(factor.alias("weight_factor")).with_columns(
        (pl.col("contribution") * pl.col("weight_factor")).alias("contribution"),
        _weight_note(pl.col("weight_factor")).alias("weight_note"),
    )


def raw_scores(observations: pl.DataFrame, contribs: pl.DataFrame) -> np.ndarray:
    """Σ contributions per observation (0 when nothing fired), in `observations` order."""
    sums = contribs.group_by("obs_id").agg(pl.col("contribution").sum().alias("raw"))
    return observations.select("obs_id").join(sums, on="obs_id", how="left").get_column("raw").fill_null(0.0).to_numpy()


def fit_calibration(raw: np.ndarray, age_days: np.ndarray, converted: np.ndarray) -> Calibration:
    """Maximum-likelihood logistic fit of converted ~ raw + log1p(age) (see the module docstring)."""
    x = np.column_stack([np.asarray(raw, float), np.log1p(np.asarray(age_days, float))])
    y = np.asarray(converted, bool)
    if y.all() or not y.any():
        rate = float(np.clip(y.mean() if y.size else 0.5, 1e-6, 1 - 1e-6))
        return Calibration(float(np.log(rate / (1 - rate))), 0.0, 0.0, int(y.size))
    beta = logistic_mle(np.column_stack([np.ones(len(y)), x]), y)
    return Calibration(float(beta[0]), float(beta[1]), float(beta[2]), int(y.size))


def logistic_mle(x: np.ndarray, y: np.ndarray, max_iter: int = 100, tol: float = 1e-12) -> np.ndarray:
    """Unpenalised logistic regression by Newton–Raphson (IRLS): β ← β + (XᵀWX)⁻¹ Xᵀ(y − p), W = diag(p(1 − p)).

    Converges quadratically; stops when the largest step is below `tol` (bounded by `max_iter`).
    A tiny ridge (1e-9) keeps XᵀWX invertible when a column is constant.
    """
    beta = np.zeros(x.shape[1])
    y = y.astype(float)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        w = p * (1 - p)
        hessian = x.T @ (x * w[:, None]) + 1e-9 * np.eye(x.shape[1])
        step = np.linalg.solve(hessian, x.T @ (y - p))
        beta += step
        if np.max(np.abs(step)) < tol:
            break
    return beta


def calibration_observations(accounts: pl.DataFrame, ages_days: tuple[int, ...]) -> pl.DataFrame:
    """Historical observations: each account at each age while still in play (not yet converted, window open).

    accounts: account_id, started_at, converted_at (nullable), converted (bool), conversion_window_days.
    """
    ages = pl.DataFrame({"age_days": list(ages_days)}, schema={"age_days": pl.Int64})
    return (
        accounts.join(ages, how="cross")
        .filter(pl.col("age_days") < pl.col("conversion_window_days"))
        .with_columns((pl.col("started_at") + pl.duration(days=pl.col("age_days"))).alias("observed_at"))
        .filter(pl.col("converted_at").is_null() | (pl.col("converted_at") >= pl.col("observed_at")))
        .with_row_index("obs_id")
    )


def calibration_table(predicted: np.ndarray, observed: np.ndarray, bins: int = 10) -> pl.DataFrame:
    """Predicted vs observed conversion by predicted-score decile, with Wilson 95% intervals."""
    predicted, observed = np.asarray(predicted, float), np.asarray(observed, bool)
    order = np.argsort(predicted, kind="stable")
    decile = np.empty(len(predicted), dtype=np.int64)
    decile[order] = (np.arange(len(predicted)) * bins) // max(len(predicted), 1)
    frame = pl.DataFrame({"decile": decile + 1, "predicted": predicted, "observed": observed})
    table = (
        frame.group_by("decile")
        .agg(
            pl.len().alias("n"),
            pl.col("predicted").mean().alias("predicted_rate"),
            pl.col("observed").sum().alias("conversions"),
        )
        .sort("decile")
    )
    low, high = wilson_interval(table["conversions"].to_numpy(), table["n"].to_numpy())
    return table.with_columns(
        (pl.col("conversions") / pl.col("n")).alias("observed_rate"),
        pl.Series("observed_ci_low", low),
        pl.Series("observed_ci_high", high),
    )
