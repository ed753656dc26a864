"""Per-signal backtests: how each signal did, cohort month by cohort month (`beton.signal_backtests`).

A *period* is a monthly cohort (accounts whose first product event fell in that month) whose
outcome window has closed, so every account in it has a known outcome. The signal's definition is
fixed; it is re-measured on each period in time order, so a reader sees whether it held up after the
months discovery looked at (each row says `discovery` or `holdout`; months after the split are
out-of-sample too).

Per signal × period, with fired = accounts the signal fired for, converted = those that converted:

* precision = converted / fired (the conversion rate among fired accounts);
* recall = converted / all conversions of the period (the share of converters the signal caught);
* lift = precision / rate among the accounts it did not fire for, with a Katz log CI and a two-sided
  p-value (`core.stats.compare_proportions`: pooled z-test, Fisher exact below expected count 5;
  Haldane–Anscombe +0.5 per cell in the CI when a count is 0);
* projected ARR = (rate_with − rate_without) × fired × periods per year × ARR per conversion, with a
  CI from the Newcombe hybrid-score interval of the rate difference times the same factor (ARR per
  conversion = mean observed ARR of the period's converted fired accounts, else `acv`; it is treated
  as known, so the CI covers the rate difference's uncertainty only). An association, not a causal
  estimate.

**Verdict** (one per signal, repeated on its rows). A period has *enough data* when at least
`min_fired` accounts fired, at least `min_not_fired` did not, and at least one account converted.
Lift > 1 means rate_with > rate_without (which also counts an infinite lift when nobody without the
signal converted).

* `insufficient_data`: fewer than `min_periods` (3) periods with enough data;
* `consistent`: lift > 1 in at least `consistent_share` (75 %) of the periods with enough data, and
  the periods agree: Cochran's Q test of homogeneity of the per-period log lifts gives
  p ≥ `heterogeneity_alpha` (0.05);
* `unstable`: otherwise (the signal often fails to beat the rest, or its lift changes between
  periods more than chance allows, as when a behaviour's effect fades).

Cochran's Q (DerSimonian & Laird 1986; Cochran 1954), over the k periods with enough data, with
the Katz log lift and its variance per period (Haldane–Anscombe +0.5 per cell when a count is 0,
as in the CI): w_i = 1 / var_i, pooled = Σ w_i·log_i / Σ w_i, Q = Σ w_i (log_i − pooled)²,
p = P(χ²_{k−1} ≥ Q).

Counting is vectorised: with X the accounts × signals membership, P the accounts × periods one-hot
matrix and y the conversions, fired = XᵀP, converted = Xᵀ(P·y), ARR = Xᵀ(P·y·arr) — three sparse
products for all signals and periods at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp
from scipy import stats as sp_stats

from beton_pipeline.core.stats import compare_proportions, log_lift_and_variance, newcombe_diff_interval

VERDICTS = ("consistent", "unstable", "insufficient_data")


@dataclass(frozen=True)
class BacktestConfig:
    """Backtest settings: the CI level, what counts as enough data, the verdict rule and revenue scaling."""

    confidence_level: float = 0.95
    min_fired: int = 10
    min_not_fired: int = 10
    min_periods: int = 3
    consistent_share: float = 0.75
    heterogeneity_alpha: float = 0.05
    periods_per_year: float = 12.0
    acv: float = 12_000.0


BACKTEST_SCHEMA: dict[str, pl.DataType] = {
    "signal_id": pl.String(),
    "cohort_month": pl.String(),
    "split": pl.String(),
    "cohort_accounts": pl.Int64(),
    "cohort_conversions": pl.Int64(),
    "fired": pl.Int64(),
    "converted": pl.Int64(),
    "not_fired": pl.Int64(),
    "converted_not_fired": pl.Int64(),
    "precision": pl.Float64(),
    "recall": pl.Float64(),
    "base_rate": pl.Float64(),
    "rate_without": pl.Float64(),
    "lift": pl.Float64(),
    "lift_ci_low": pl.Float64(),
    "lift_ci_high": pl.Float64(),
    "p_value": pl.Float64(),
    "method": pl.String(),
    "arr_per_conversion": pl.Float64(),
    "projected_arr": pl.Float64(),
    "projected_arr_ci_low": pl.Float64(),
    "projected_arr_ci_high": pl.Float64(),
    "enough_data": pl.Boolean(),
    "lift_above_1": pl.Boolean(),
}
"""The per-period columns `backtest_periods` returns (before the verdict and labels are added)."""


def _as_sparse(fired) -> sp.csr_matrix:
    if sp.issparse(fired):
        return sp.csr_matrix(fired, dtype=np.float64)
    arr = np.asarray(fired, dtype=bool)
    if arr.ndim == 1:
        arr = arr[:, None]
    return sp.csr_matrix(arr.astype(np.float64))


def backtest_periods(
    fired,
    signal_ids: list[str],
    period: np.ndarray,
    converted: np.ndarray,
    arr: np.ndarray,
    config: BacktestConfig = BacktestConfig(),
    holdout_periods: tuple = (),
) -> pl.DataFrame:
    """One row per signal × period (periods in sorted order) with the counts and metrics of the module docstring.

    `fired` is accounts × signals (bool array or sparse; a 1-D array is one signal), `period` the
    accounts' period labels (e.g. `YYYY-MM`), `converted` booleans, `arr` the ARR of converted
    accounts (NaN/0 otherwise). `holdout_periods` are labelled `holdout`, the rest `discovery`.
    """
    x = _as_sparse(fired)
    n_accounts, n_signals = x.shape
    if len(signal_ids) != n_signals:
        raise ValueError(f"{len(signal_ids)} signal ids for {n_signals} signal columns")
    period = np.asarray(period).astype(str)
    if not (len(period) == len(converted) == len(arr) == n_accounts):
        raise ValueError("fired, period, converted and arr must describe the same accounts")
    labels, codes = np.unique(period, return_inverse=True)
    n_periods = len(labels)
    if n_signals == 0 or n_periods == 0:
        return pl.DataFrame(schema=BACKTEST_SCHEMA)
    y = np.asarray(converted, dtype=bool).astype(np.float64)
    arr_y = np.where(y > 0, np.nan_to_num(np.asarray(arr, dtype=np.float64)), 0.0)
    one_hot = sp.csr_matrix((np.ones(n_accounts), (np.arange(n_accounts), codes)), shape=(n_accounts, n_periods))
    fired_n = np.asarray((x.T @ one_hot).todense())  # signals × periods
    fired_conv = np.asarray((x.T @ one_hot.multiply(y[:, None])).todense())
    fired_arr = np.asarray((x.T @ one_hot.multiply(arr_y[:, None])).todense())
    cohort_n = np.bincount(codes, minlength=n_periods).astype(np.float64)
    cohort_conv = np.bincount(codes, weights=y, minlength=n_periods)

    # Long form: signal-major, periods in sorted order.
    n1 = np.rint(fired_n).astype(np.int64).ravel()
    a = np.rint(fired_conv).astype(np.int64).ravel()
    arr_with = fired_arr.ravel()
    total = np.tile(np.rint(cohort_n).astype(np.int64), n_signals)
    conversions = np.tile(np.rint(cohort_conv).astype(np.int64), n_signals)
    n2 = total - n1
    c = conversions - a
    r = compare_proportions(a, n1, c, n2, confidence_level=config.confidence_level)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(conversions > 0, a / np.maximum(conversions, 1), np.nan)
        arr_per_conversion = np.where((a > 0) & (arr_with > 0), arr_with / np.maximum(a, 1), config.acv)
    diff_low, diff_high = newcombe_diff_interval(a, n1, c, n2, config.confidence_level)
    scale = n1 * config.periods_per_year * arr_per_conversion
    diff = r.rate_with - r.rate_without
    enough = (n1 >= config.min_fired) & (n2 >= config.min_not_fired) & (conversions > 0)
    above = np.nan_to_num(diff, nan=0.0) > 0
    holdout = set(map(str, holdout_periods))
    split = np.array(["holdout" if p in holdout else "discovery" for p in labels], dtype=object)  # periods: tens
    return pl.DataFrame(
        {
            "signal_id": np.repeat(np.asarray(signal_ids, dtype=object), n_periods),
            "cohort_month": np.tile(labels.astype(object), n_signals),
            "split": np.tile(split, n_signals),
            "cohort_accounts": total,
            "cohort_conversions": conversions,
            "fired": n1,
            "converted": a,
            "not_fired": n2,
            "converted_not_fired": c,
            "precision": r.rate_with,
            "recall": recall,
            "base_rate": np.where(total > 0, conversions / np.maximum(total, 1), np.nan),
            "rate_without": r.rate_without,
            "lift": r.lift,
            "lift_ci_low": r.lift_ci_low,
            "lift_ci_high": r.lift_ci_high,
            "p_value": r.p_value,
            "method": r.method.astype(str),
            "arr_per_conversion": arr_per_conversion,
            "projected_arr": diff * scale,
            "projected_arr_ci_low": diff_low * scale,
            "projected_arr_ci_high": diff_high * scale,
            "enough_data": enough,
            "lift_above_1": above & enough,
        },
        schema=BACKTEST_SCHEMA,
    ).with_columns(pl.col(pl.Float64).fill_nan(None))


def cochran_q(
    log_lift: np.ndarray, variance: np.ndarray, group: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cochran's Q per group (inverse-variance weights): Q = Σw·x² − (Σw·x)²/Σw, df = k − 1, p = P(χ²_df ≥ Q).

    Returns (q, df, p) arrays of length `n_groups`; p is NaN where a group has fewer than 2 rows.
    """
    w = 1.0 / variance
    sw = np.bincount(group, weights=w, minlength=n_groups)
    swx = np.bincount(group, weights=w * log_lift, minlength=n_groups)
    swx2 = np.bincount(group, weights=w * log_lift**2, minlength=n_groups)
    k = np.bincount(group, minlength=n_groups)
    with np.errstate(all="ignore"):
        q = np.maximum(swx2 - swx**2 / sw, 0.0)
    df = k - 1
    p = np.where(df >= 1, sp_stats.chi2.sf(q, np.maximum(df, 1)), np.nan)
    return np.where(df >= 1, q, np.nan), df, p


def verdicts(periods: pl.DataFrame, config: BacktestConfig = BacktestConfig()) -> pl.DataFrame:
    """One row per signal: period counts, Cochran's Q p of the lifts, verdict and its reason (rule in the module docstring)."""
    summary = periods.group_by("signal_id", maintain_order=True).agg(
        pl.len().alias("periods"),
        pl.col("enough_data").sum().cast(pl.Int64).alias("periods_with_data"),
        pl.col("lift_above_1").sum().cast(pl.Int64).alias("periods_lift_above_1"),
        pl.col("fired").sum().alias("fired_total"),
        pl.col("converted").sum().alias("converted_total"),
        pl.col("cohort_conversions").sum().alias("conversions_total"),
        pl.col("cohort_accounts").sum().alias("accounts_total"),
    )
    enough = periods.filter(pl.col("enough_data"))
    index = summary.select("signal_id").with_row_index("_g")
    enough = enough.join(index, on="signal_id", how="inner")
    log_lift, variance = log_lift_and_variance(
        *(enough.get_column(c).to_numpy() for c in ("converted", "fired", "converted_not_fired", "not_fired"))
    )
    _, _, q_p = cochran_q(log_lift, variance, enough.get_column("_g").to_numpy().astype(np.int64), summary.height)
    summary = summary.with_columns(pl.Series("heterogeneity_p", q_p, dtype=pl.Float64).fill_nan(None))
    share = pl.col("periods_lift_above_1") / pl.col("periods_with_data")
    agree = pl.col("heterogeneity_p").fill_null(1.0) >= config.heterogeneity_alpha
    enough_rule = f"≥ {config.min_fired} fired, ≥ {config.min_not_fired} not fired, ≥ 1 conversion"
    above = pl.format(
        f"lift > 1 in {{}} of {{}} periods with enough data ({enough_rule})",
        "periods_lift_above_1",
        "periods_with_data",
    )
    return summary.with_columns(
        pl.when(pl.col("periods_with_data") < config.min_periods)
        .then(pl.lit("insufficient_data"))
        .when((share >= config.consistent_share) & agree)
        .then(pl.lit("consistent"))
        .otherwise(pl.lit("unstable"))
        .alias("verdict"),
        pl.when(pl.col("periods_with_data") < config.min_periods)
        .then(
            pl.format(
                f"{{}} of {{}} periods have enough data ({enough_rule}); {config.min_periods} needed",
                "periods_with_data",
                "periods",
            )
        )
        .when(share < config.consistent_share)
        .then(pl.format(f"{{}}; consistent needs ≥ {config.consistent_share:.0%}", above))
        .when(~agree)
        .then(
            pl.format(
                "{}, but the lift changes between periods (Cochran's Q p = {})",
                above,
                pl.col("heterogeneity_p").round_sig_figs(2),
            )
        )
        .otherwise(
            pl.format(
                "{}; the periods agree (Cochran's Q p = {})",
                above,
                pl.col("heterogeneity_p").round_sig_figs(2).fill_null(float("nan")),
            )
        )
        .alias("verdict_reason"),
        (pl.col("converted_total") / pl.col("fired_total")).fill_nan(None).alias("precision_total"),
        (pl.col("converted_total") / pl.col("conversions_total")).fill_nan(None).alias("recall_total"),
    )


def backtest(
    fired,
    signal_ids: list[str],
    period: np.ndarray,
    converted: np.ndarray,
    arr: np.ndarray,
    config: BacktestConfig = BacktestConfig(),
    holdout_periods: tuple = (),
) -> pl.DataFrame:
    """`backtest_periods` with each signal's verdict, verdict reason and period counts joined onto its rows."""
    periods = backtest_periods(fired, signal_ids, period, converted, arr, config, holdout_periods)
    if periods.is_empty():
        return periods.with_columns(
            pl.lit(None, pl.String).alias("verdict"),
            pl.lit(None, pl.String).alias("verdict_reason"),
            pl.lit(None, pl.Int64).alias("periods_with_data"),
            pl.lit(None, pl.Int64).alias("periods_lift_above_1"),
            pl.lit(None, pl.Float64).alias("heterogeneity_p"),
        )
    summary = verdicts(periods, config).select(
        "signal_id", "verdict", "verdict_reason", "periods_with_data", "periods_lift_above_1", "heterogeneity_p"
    )
    return periods.join(summary, on="signal_id", how="left", maintain_order="left")
