"""Warehouse side of monitoring and scoring: read enabled signals and accounts, compute, write.

Pure statistics live in `core.monitoring` and `core.scoring`; this module gathers their inputs with
SQL (firings: `firings.signal_firings`) and writes `beton.signal_health`, `beton.account_scores`,
`beton.score_calibration` and `beton.revenue_metrics`, replacing exactly the days it computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

import duckdb
import numpy as np
import polars as pl
import scipy.sparse as sp

from beton_pipeline.core.discovery import choose_holdout
from beton_pipeline.core.monitoring import assess_health, log_lift_and_se, window_counts
from beton_pipeline.core.scoring import (
    calibration_observations,
    calibration_table,
    contributions,
    fit_calibration,
    raw_scores,
)
from beton_pipeline.settings import Settings
from beton_pipeline.store.firings import signal_firings
from beton_pipeline.store.tables import replace_rows
from beton_pipeline.warehouse import table_exists

ENABLED_SIGNALS_SQL = """
select signal_id, definition, kind, candidate_key as key, event, property, value, window_days, threshold,
       part_a_id, part_b_id, lift, conversions_with, n_with, conversions_without, n_without
from beton.signals where enabled and source = 'discovered'
"""
# Custom signals (kind condition/sql) are tested and backtested, but not yet scored or monitored daily:
# their firing times are not computed by `firings.signal_firings`.


def enabled_signals(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """The enabled signals with their reference counts (empty when discovery has not run)."""
    if not table_exists(con, "beton", "signals"):
        return pl.DataFrame()
    return con.sql(ENABLED_SIGNALS_SQL).pl()


def enabled_firings(con: duckdb.DuckDBPyConnection, signals: pl.DataFrame, settings: Settings) -> pl.DataFrame:
    """Firings of the enabled signals; a pair's parts are evaluated too (enabled or not) and then dropped."""
    part_ids = [i for i in signals.select(pl.concat_list("part_a_id", "part_b_id")).to_series().explode().drop_nulls().unique().to_list()]
    missing = sorted(set(part_ids) - set(signals["signal_id"].to_list()))
    scope = signals
    if missing:
        parts = con.sql(ENABLED_SIGNALS_SQL.replace("where enabled", "where signal_id in (select unnest(?))"), params=[missing]).pl()
        scope = pl.concat([signals, parts], how="vertical_relaxed")
    fired = signal_firings(con, scope, settings.property_transforms())
    return fired.filter(pl.col("signal_id").is_in(signals["signal_id"].to_list()))


def data_days(con: duckdb.DuckDBPyConnection) -> tuple[date, date] | None:
    """The first day an outcome window closed and the as-of day: the days monitoring can speak for."""
    row = con.sql(
        "select min(outcome_window_end_at)::date, max(as_of_at)::date from marts.account_outcomes where has_events"
    ).fetchall()[0]
    if row[0] is None or row[1] is None or row[0] > row[1]:
        return None
    return row[0], row[1]


def _membership(accounts: pl.DataFrame, firings: pl.DataFrame, signal_order: list[str]) -> sp.csr_matrix:
    acc_index = accounts.select("account_id").with_row_index("_r")
    sig_index = pl.DataFrame({"signal_id": signal_order}).with_row_index("_c")
    coords = firings.select("account_id", "signal_id").unique().join(acc_index, on="account_id").join(sig_index, on="signal_id")
    return sp.csr_matrix(
        (np.ones(coords.height), (coords["_r"].to_numpy(), coords["_c"].to_numpy())), shape=(accounts.height, len(signal_order))
    )


def compute_signal_health(con: duckdb.DuckDBPyConnection, settings: Settings, days: list[date]) -> pl.DataFrame:
    """beton.signal_health rows for `days` × enabled signals (see core.monitoring for the rules)."""
    signals = enabled_signals(con)
    if signals.is_empty() or not days:
        return pl.DataFrame()
    window = settings.monitoring.window_days
    first = min(days) - timedelta(days=window)
    n_days = (max(days) - first).days + 1
    accounts = con.sql(
        "select account_id, outcome_window_end_at::date as closed_on, converted from marts.account_outcomes "
        "where has_events and not converted_before_start order by account_id"
    ).pl()
    firings = enabled_firings(con, signals, settings)
    order = signals["signal_id"].to_list()
    member = _membership(accounts, firings, order)
    offset = (accounts["closed_on"].to_numpy().astype("datetime64[D]") - np.datetime64(first, "D")).astype(np.int64)
    closure = np.where((offset >= 0) & (offset < n_days), offset, -1).astype(np.int64)
    counts = window_counts(closure, accounts["converted"].to_numpy(), member, n_days, window)
    wanted = np.array([(d - first).days for d in days])
    a, n1 = counts.conversions_with[wanted], counts.n_with[wanted]
    c, n2 = counts.conversions_without[wanted], counts.n_without[wanted]
    ref_log, ref_se = log_lift_and_se(signals["conversions_with"], signals["n_with"], signals["conversions_without"], signals["n_without"])
    shape = a.shape
    result = assess_health(
        a.ravel(), n1.ravel(), c.ravel(), n2.ravel(),
        np.broadcast_to(np.exp(ref_log), shape).ravel(), np.broadcast_to(ref_se, shape).ravel(),
        settings.health_config(), settings.thresholds.confidence_level,
    )
    k = len(order)
    return pl.DataFrame(
        {
            "day": np.repeat(np.array(days, dtype="datetime64[D]"), k),
            "signal_id": np.tile(order, len(days)),
            "definition": np.tile(signals["definition"].to_numpy(), len(days)),
            "window_days": window,
            "n_with": n1.ravel().astype(np.int64),
            "conversions_with": a.ravel().astype(np.int64),
            "n_without": n2.ravel().astype(np.int64),
            "conversions_without": c.ravel().astype(np.int64),
            "precision": np.where(n1.ravel() > 0, a.ravel() / np.maximum(n1.ravel(), 1), np.nan),
            "lift": result.lift,
            "lift_ci_low": result.lift_ci_low,
            "lift_ci_high": result.lift_ci_high,
            "backtest_lift": np.tile(signals["lift"].to_numpy(), len(days)),
            "z_vs_backtest": result.z_vs_reference,
            "alpha_per_look": settings.health_config().alpha_per_look,
            "health": result.health.astype(str),
        }
    ).with_columns(pl.col("day").cast(pl.Date)).with_columns(pl.col(pl.Float64).fill_nan(None))


@dataclass(frozen=True)
class ScoresResult:
    scores: pl.DataFrame
    calibration: pl.DataFrame
    revenue: pl.DataFrame


def _weights(signals: pl.DataFrame) -> pl.DataFrame:
    return signals.filter(pl.col("lift").is_not_null() & (pl.col("lift") > 0)).select(
        "signal_id", pl.col("lift").log().alias("weight")
    )


def _json_list(frame: pl.DataFrame, by: str, k: int | None, name: str) -> pl.DataFrame:
    """Per `by`: a JSON list of {signal_id, definition, fired_at, contribution}, largest contribution first."""
    encoded = frame.sort([by, "contribution"], descending=[False, True]).with_columns(
        pl.struct(
            "signal_id", "definition", pl.col("fired_at").dt.strftime("%Y-%m-%dT%H:%M:%SZ").alias("fired_at"), pl.col("contribution").round(4)
        ).struct.json_encode().alias("_j")
    )
    agg = pl.col("_j").head(k) if k else pl.col("_j")
    return encoded.group_by(by).agg(agg.str.join(",").alias(name)).with_columns(pl.format("[{}]", pl.col(name)).alias(name))


def compute_account_scores(con: duckdb.DuckDBPyConnection, settings: Settings, days: list[date]) -> ScoresResult:
    """Scores for the accounts in play on each of `days`, the calibration check, and the revenue numbers."""
    cfg = settings.scoring_config()
    signals = enabled_signals(con)
    outcomes = con.sql(
        "select o.account_id, o.started_at, o.converted_at, o.converted, o.is_eligible, o.arr, o.outcome_window_end_at, "
        "strftime(o.cohort_month, '%Y-%m') as cohort_month, o.domain, o.is_crm_company, a.company_name "
        "from marts.account_outcomes o join intermediate.int_accounts a using (account_id) where o.has_events and not o.converted_before_start"
    ).pl()
    window = settings.windows.conversion_window_days
    if signals.is_empty():
        firings = pl.DataFrame(schema={"account_id": pl.String, "signal_id": pl.String, "fired_at": pl.Datetime("us")})
    else:
        firings = enabled_firings(con, signals, settings)
    weights = _weights(signals) if not signals.is_empty() else pl.DataFrame(schema={"signal_id": pl.String, "weight": pl.Float64})
    definitions = signals.select("signal_id", "definition", "kind", "key") if not signals.is_empty() else pl.DataFrame(
        schema={"signal_id": pl.String, "definition": pl.String, "kind": pl.String, "key": pl.String}
    )

    # Calibration: fit on the discovery cohorts, check on the later (holdout) cohorts, then refit on all for live use.
    eligible = outcomes.filter(pl.col("is_eligible")).with_columns(pl.lit(window).alias("conversion_window_days"))
    obs = calibration_observations(eligible, cfg.calibration_ages_days)
    raw = raw_scores(obs, contributions(firings, weights, obs, cfg.half_life_days))
    sizes = eligible.group_by("cohort_month").agg(pl.len().alias("n_eligible"))
    split = choose_holdout(sizes, settings.windows.holdout_fraction)
    in_holdout = obs["cohort_month"].is_in(list(split.holdout_months)).to_numpy()
    conv = obs["converted"].to_numpy()
    age = obs["age_days"].to_numpy()
    check = fit_calibration(raw[~in_holdout], age[~in_holdout], conv[~in_holdout])
    calibration = (
        calibration_table(check.probability(raw[in_holdout], age[in_holdout]), conv[in_holdout])
        if in_holdout.any()
        else pl.DataFrame()
    )
    live = fit_calibration(raw, age, conv)

    # Live scores: every account in play at the end of each day.
    day_frame = pl.DataFrame({"day": days}, schema={"day": pl.Date}).with_columns(
        (pl.col("day").cast(pl.Datetime("us")) + pl.duration(days=1)).alias("observed_at")
    )
    in_play = (
        outcomes.join(day_frame, how="cross")
        .filter(
            (pl.col("started_at") < pl.col("observed_at"))
            & (pl.col("converted_at").is_null() | (pl.col("converted_at") >= pl.col("observed_at")))
            & (pl.col("outcome_window_end_at") > pl.col("observed_at"))
        )
        .with_row_index("obs_id")
        .with_columns(((pl.col("observed_at") - pl.col("started_at")).dt.total_microseconds() / 86_400_000_000).alias("age_days"))
    )
    contribs = contributions(firings, weights, in_play, cfg.half_life_days).join(definitions, on="signal_id")
    live_raw = raw_scores(in_play, contribs)
    scores = in_play.with_columns(
        pl.Series("raw_score", live_raw), pl.Series("score", live.probability(live_raw, in_play["age_days"].to_numpy()))
    )
    scores = scores.with_columns(pl.col("score").rank("ordinal", descending=True).over("day").cast(pl.Int64).alias("score_rank"))
    fired_json = _json_list(contribs, "obs_id", None, "signals_fired")
    top_json = _json_list(contribs, "obs_id", cfg.top_contributions, "top_contributions")
    intent_json = _json_list(contribs.filter(pl.col("kind") == "intent"), "obs_id", None, "intent_contributions")
    n_fired = contribs.group_by("obs_id").agg(pl.len().alias("n_signals_fired"))
    scores = (
        scores.join(fired_json, on="obs_id", how="left")
        .join(top_json, on="obs_id", how="left")
        .join(intent_json, on="obs_id", how="left")
        .join(n_fired, on="obs_id", how="left")
        .select(
            "day", "account_id", "score", "raw_score", "score_rank", pl.col("age_days").round(3),
            pl.col("n_signals_fired").fill_null(0).cast(pl.Int64),
            pl.col("signals_fired").fill_null("[]"), pl.col("top_contributions").fill_null("[]"), pl.col("intent_contributions").fill_null("[]"),
            "domain", "company_name", "is_crm_company",
        )
        .sort("day", "score_rank")
    )
    revenue = _revenue_metrics(outcomes, firings, scores, days, cfg.lead_threshold)
    return ScoresResult(scores=scores, calibration=calibration, revenue=revenue)


def _revenue_metrics(outcomes: pl.DataFrame, firings: pl.DataFrame, scores: pl.DataFrame, days: list[date], lead_threshold: float) -> pl.DataFrame:
    """Per day: leads surfaced, conversion rate and signal accuracy over outcomes closed in the last 30 days,
    and pipeline influenced (ARR of accounts converted in the last 30 days whose enabled signals fired before)."""
    first_fired = firings.group_by("account_id").agg(pl.col("fired_at").min().alias("first_fired_at"))
    o = outcomes.join(first_fired, on="account_id", how="left")
    day_frame = pl.DataFrame({"day": days}, schema={"day": pl.Date}).with_columns(
        (pl.col("day").cast(pl.Datetime("us")) + pl.duration(days=1)).alias("end"),
        (pl.col("day").cast(pl.Datetime("us")) - pl.duration(days=29)).alias("start"),
    )
    closed = o.join(day_frame, how="cross").filter((pl.col("outcome_window_end_at") >= pl.col("start")) & (pl.col("outcome_window_end_at") < pl.col("end")))
    signalled = pl.col("first_fired_at").is_not_null()
    closed_stats = closed.group_by("day").agg(
        pl.len().alias("outcomes_closed_30d"),
        pl.col("converted").mean().alias("conversion_rate_30d"),
        pl.col("converted").filter(signalled).mean().alias("signal_accuracy_30d"),
    )
    converted = o.join(day_frame, how="cross").filter(
        pl.col("converted") & (pl.col("converted_at") >= pl.col("start")) & (pl.col("converted_at") < pl.col("end"))
    )
    influenced = converted.group_by("day").agg(
        pl.len().alias("conversions_30d"),
        pl.col("arr").filter(pl.col("first_fired_at") < pl.col("converted_at")).sum().alias("pipeline_influenced_arr_30d"),
    )
    leads = scores.group_by("day").agg(pl.len().alias("accounts_in_play"), (pl.col("score") >= lead_threshold).sum().alias("leads_surfaced"))
    return (
        day_frame.select("day")
        .join(leads, on="day", how="left")
        .join(closed_stats, on="day", how="left")
        .join(influenced, on="day", how="left")
        .with_columns(
            pl.col("accounts_in_play", "leads_surfaced", "outcomes_closed_30d", "conversions_30d").fill_null(0).cast(pl.Int64),
            pl.col("pipeline_influenced_arr_30d").fill_null(0.0),
        )
        .sort("day")
    )


def write_days(con: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame, days: list[date]) -> None:
    """Replace exactly `days`' rows of `table` with `frame` (one transaction)."""
    if frame.is_empty() and not table_exists(con, *table.split(".")):
        return
    replace_rows(con, table, frame, "day between ? and ?", [min(days), max(days)])


def clamp_days(keys: list[str], bounds: tuple[date, date] | None) -> list[date]:
    """Partition keys as dates, keeping only days the data can speak for."""
    if bounds is None:
        return []
    lo, hi = bounds
    out = [datetime.strptime(k, "%Y-%m-%d").date() for k in keys]
    return [d for d in out if lo <= d <= hi]
