"""Warehouse side of account scoring: score every account in play on each day by its enabled signals,
each weighted by its health that day (`beton.signal_health`, so health is computed first: the
`account_scores` asset depends on `signal_health`; `core.scoring`), check the calibration on the later
cohorts, and compute the revenue numbers; writes
`beton.account_scores` and `beton.revenue_metrics` (replacing exactly the days computed) and
`beton.score_calibration`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date

import duckdb
import polars as pl

from beton_pipeline.core.discovery import temporal_split
from beton_pipeline.core.scoring import (
    calibration_observations,
    calibration_table,
    contributions,
    fit_calibration,
    raw_scores,
    weigh_by_health,
)
from beton_pipeline.settings import Settings
from beton_pipeline.store.daily import partition_days, write_days
from beton_pipeline.store.live_signals import enabled_firings, enabled_signals
from beton_pipeline.store.monitoring import health_history
from beton_pipeline.store.tables import replace_rows

OUTCOMES_SQL = (
    "select o.account_id, o.started_at, o.converted_at, o.converted, o.is_eligible, o.arr, o.outcome_window_end_at, "
    "strftime(o.cohort_month, '%Y-%m') as cohort_month, o.domain, o.is_crm_company, a.company_name "
    "from marts.account_outcomes o join intermediate.int_accounts a using (account_id) "
    "where o.has_events and not o.converted_before_start"
)
"""Every account whose outcome can be judged, with what a score row shows of it."""


@dataclass(frozen=True)
class ScoresResult:
    """Scores per day and account in play, the calibration check (empty without a holdout cohort), the
    revenue numbers per day, and the days they cover."""

    scores: pl.DataFrame
    calibration: pl.DataFrame
    revenue: pl.DataFrame
    days: list[date] = field(default_factory=list)
    days_without_health: list[date] = field(default_factory=list)
    """Days scored with enabled signals but no `beton.signal_health` row of theirs: scored at full weight."""


def _weights(signals: pl.DataFrame) -> pl.DataFrame:
    return signals.filter(pl.col("lift").is_not_null() & (pl.col("lift") > 0)).select(
        "signal_id", pl.col("lift").log().alias("weight")
    )


def _json_list(frame: pl.DataFrame, by: str, k: int | None, name: str) -> pl.DataFrame:
    """Per `by`: a JSON list of {signal_id, definition, fired_at, contribution, health, weight_factor,
    weight_note}, largest contribution first (`weight_note` says why a signal counts less, else null)."""
    encoded = frame.sort([by, "contribution", "signal_id"], descending=[False, True, False]).with_columns(
        pl.struct(
            "signal_id",
            "definition",
            pl.col("fired_at").dt.strftime("%Y-%m-%dT%H:%M:%SZ").alias("fired_at"),
            pl.col("contribution").round(4),
            "health",
            "weight_factor",
            "weight_note",
        )
        .struct.json_encode()
        .alias("_j")
    )
    agg = pl.col("_j").head(k) if k else pl.col("_j")
    return (
        encoded.group_by(by)
        .agg(agg.str.join(",").alias(name))
        .with_columns(pl.format("[{}]", pl.col(name)).alias(name))
    )


def compute_account_scores(con: duckdb.DuckDBPyConnection, settings: Settings, days: list[date]) -> ScoresResult:
    """Scores for the accounts in play on each of `days`, the calibration check, and the revenue numbers."""
    cfg = settings.scoring_config()
    signals = enabled_signals(con)
    outcomes = con.sql(OUTCOMES_SQL).pl()
    window = settings.windows.conversion_window_days
    if signals.is_empty():
        firings = pl.DataFrame(schema={"account_id": pl.String, "signal_id": pl.String, "fired_at": pl.Datetime("us")})
    else:
        firings = enabled_firings(con, signals)
    weights = (
        _weights(signals)
        if not signals.is_empty()
        else pl.DataFrame(schema={"signal_id": pl.String, "weight": pl.Float64})
    )
    definitions = (
        signals.select("signal_id", "definition", "kind", "key")
        if not signals.is_empty()
        else pl.DataFrame(schema={"signal_id": pl.String, "definition": pl.String, "kind": pl.String, "key": pl.String})
    )

    # Calibration: fit on the discovery cohorts, check on the later (holdout) cohorts, then refit on all for live use.
    eligible = outcomes.filter(pl.col("is_eligible")).with_columns(pl.lit(window).alias("conversion_window_days"))
    obs = calibration_observations(eligible, cfg.calibration_ages_days)
    raw = raw_scores(obs, contributions(firings, weights, obs, cfg.half_life_days))
    split = temporal_split(eligible["cohort_month"].to_numpy(), settings.windows.holdout_fraction)
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
        .with_columns(
            ((pl.col("observed_at") - pl.col("started_at")).dt.total_microseconds() / 86_400_000_000).alias("age_days")
        )
    )
    enabled_ids = [] if signals.is_empty() else signals.get_column("signal_id").to_list()
    health = health_history(con, max(days)).filter(pl.col("signal_id").is_in(enabled_ids))
    contribs = weigh_by_health(
        contributions(firings, weights, in_play, cfg.half_life_days).join(in_play.select("obs_id", "day"), on="obs_id"),
        health,
        cfg.degrading_weight,
    ).join(definitions, on="signal_id")
    covered = set(health.get_column("day").to_list())
    days_without_health = [d for d in days if d not in covered] if enabled_ids else []
    live_raw = raw_scores(in_play, contribs)
    scores = in_play.with_columns(
        pl.Series("raw_score", live_raw), pl.Series("score", live.probability(live_raw, in_play["age_days"].to_numpy()))
    )
    scores = scores.with_columns(
        pl.col("score").rank("ordinal", descending=True).over("day").cast(pl.Int64).alias("score_rank")
    )
    # Every signal that fired is listed (a broken one with contribution 0 and why); the top and intent lists
    # hold only the signals that count that day.
    counting = contribs.filter(pl.col("weight_factor") > 0)
    fired_json = _json_list(contribs, "obs_id", None, "signals_fired")
    top_json = _json_list(counting, "obs_id", cfg.top_contributions, "top_contributions")
    intent_json = _json_list(counting.filter(pl.col("kind") == "intent"), "obs_id", None, "intent_contributions")
    n_fired = contribs.group_by("obs_id").agg(pl.len().alias("n_signals_fired"))
    scores = (
        scores.join(fired_json, on="obs_id", how="left")
        .join(top_json, on="obs_id", how="left")
        .join(intent_json, on="obs_id", how="left")
        .join(n_fired, on="obs_id", how="left")
        .select(
            "day",
            "account_id",
            "score",
            "raw_score",
            "score_rank",
            pl.col("age_days").round(3),
            pl.col("n_signals_fired").fill_null(0).cast(pl.Int64),
            pl.col("signals_fired").fill_null("[]"),
            pl.col("top_contributions").fill_null("[]"),
            pl.col("intent_contributions").fill_null("[]"),
            "domain",
            "company_name",
            "is_crm_company",
        )
        .sort("day", "score_rank")
    )
    revenue = _revenue_metrics(outcomes, firings, scores, days, cfg.lead_threshold)
    return ScoresResult(
        scores=scores,
        calibration=calibration,
        revenue=revenue,
        days=list(days),
        days_without_health=days_without_health,
    )


def _revenue_metrics(
    outcomes: pl.DataFrame, firings: pl.DataFrame, scores: pl.DataFrame, days: list[date], lead_threshold: float
) -> pl.DataFrame:
    """Per day: leads surfaced, conversion rate and signal accuracy over outcomes closed in the last 30 days,
    and pipeline influenced (ARR of accounts converted in the last 30 days whose enabled signals fired before)."""
    first_fired = firings.group_by("account_id").agg(pl.col("fired_at").min().alias("first_fired_at"))
    o = outcomes.join(first_fired, on="account_id", how="left")
    day_frame = pl.DataFrame({"day": days}, schema={"day": pl.Date}).with_columns(
        (pl.col("day").cast(pl.Datetime("us")) + pl.duration(days=1)).alias("end"),
        (pl.col("day").cast(pl.Datetime("us")) - pl.duration(days=29)).alias("start"),
    )
    closed = o.join(day_frame, how="cross").filter(
        (pl.col("outcome_window_end_at") >= pl.col("start")) & (pl.col("outcome_window_end_at") < pl.col("end"))
    )
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
        pl.col("arr")
        .filter(pl.col("first_fired_at") < pl.col("converted_at"))
        .sum()
        .alias("pipeline_influenced_arr_30d"),
    )
    leads = scores.group_by("day").agg(
        pl.len().alias("accounts_in_play"), (pl.col("score") >= lead_threshold).sum().alias("leads_surfaced")
    )
    return (
        day_frame.select("day")
        .join(leads, on="day", how="left")
        .join(closed_stats, on="day", how="left")
        .join(influenced, on="day", how="left")
        .with_columns(
            pl.col("accounts_in_play", "leads_surfaced", "outcomes_closed_30d", "conversions_30d")
            .fill_null(0)
            .cast(pl.Int64),
            pl.col("pipeline_influenced_arr_30d").fill_null(0.0),
        )
        .sort("day")
    )


def refresh_account_scores(
    con: duckdb.DuckDBPyConnection, settings: Settings, partition_keys: Iterable[str]
) -> ScoresResult:
    """Score the partition days the data covers and replace those days' rows of beton.account_scores and
    beton.revenue_metrics, and beton.score_calibration when there is a holdout to check on. Without
    days, nothing is computed or written (`days` is empty)."""
    days = partition_days(con, partition_keys)
    if not days:
        return ScoresResult(scores=pl.DataFrame(), calibration=pl.DataFrame(), revenue=pl.DataFrame())
    result = compute_account_scores(con, settings, days)
    write_days(con, "beton.account_scores", result.scores, days)
    write_days(con, "beton.revenue_metrics", result.revenue, days)
    if not result.calibration.is_empty():
        replace_rows(con, "beton.score_calibration", result.calibration, "true")
    return result
