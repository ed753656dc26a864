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
