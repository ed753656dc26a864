"""Warehouse side of account scoring: score every account in play on each day by its enabled signals,
each weighted by its health that day (`beton.signal_health`, so health is computed first: the
`account_scores` asset depends on `signal_health`; `core.scoring`), check the calibration on the later
cohorts, and compute the revenue numbers; writes
`beton.account_scores` and `beton.revenue_metrics` (replacing exactly the days computed) and
`beton.score_calibration`.

**Memory is bounded by a setting, not by the data.** An account is in play on the days of one interval
(from the day it started to the day before it converted or its outcome window closes), so its rows are
generated from that interval intersected with the days asked for (`expand_intervals`), never from an
accounts × days cross join; an outcome counts in the revenue numbers on the 30 days from the day it
closed (or converted), at most 30 rows each. The days are scored in batches of consecutive requested days
whose in-play rows stay under `scoring.max_rows_per_batch` (`day_batches`; a single day above it is a batch
of its own); the calibration is fitted once, and each batch replaces its days' rows (one transaction per
batch) before the next is computed, so every day is always whole (see `refresh_account_scores`).

**Explanations are typed lists.** `signals_fired`, `top_contributions` and `intent_contributions` are lists of
`SCORE_ENTRY` structs (DuckDB `STRUCT(...)[]`), aggregated in polars: no JSON is encoded when scoring, and
DuckDB's dictionary compression stores the repeated definitions nearly for free. A table an older beton
wrote (JSON text) is converted in place before the first write (`upgrade_explanation_columns`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date

import duckdb
import numpy as np
import polars as pl

from beton_pipeline.core.discovery import temporal_split
from beton_pipeline.core.scoring import (
    Calibration,
    ScoringConfig,
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
from beton_pipeline.warehouse import transaction

OUTCOMES_SQL = (
    "select o.account_id, o.started_at, o.converted_at, o.converted, o.is_eligible, o.arr, o.outcome_window_end_at, "
    "strftime(o.cohort_month, '%Y-%m') as cohort_month, o.domain, o.is_crm_company, a.company_name "
    "from marts.account_outcomes o join intermediate.int_accounts a using (account_id) "
    "where o.has_events and not o.converted_before_start order by o.account_id"
)
"""Every account whose outcome can be judged, with what a score row shows of it; in account_id order, so that
whatever depends on the order of the rows (the calibration's deciles among equal predictions, sums of floats)
is the same on every run over the same data."""

REVENUE_WINDOW_DAYS = 30
"""The revenue numbers of day D count the outcomes closed (conversions) on D and the 29 days before it."""

_EPOCH = date(1970, 1, 1)
_EMPTY = (np.iinfo(np.int32).max, np.iinfo(np.int32).min)
"""(first, last) of an interval that holds no day."""


@dataclass(frozen=True)
class ScoresResult:
    """Scores per day and account in play, the calibration check (empty without a holdout cohort), the
    revenue numbers per day, and the days they cover.

    `refresh_account_scores` writes the scores batch by batch and keeps none of them: its `scores` is empty
    and `n_scores` counts the rows written."""

    scores: pl.DataFrame
    calibration: pl.DataFrame
    revenue: pl.DataFrame
    days: list[date] = field(default_factory=list)
    days_without_health: list[date] = field(default_factory=list)
    """Days scored with enabled signals but no `beton.signal_health` row of theirs: scored at full weight."""
    n_scores: int = 0
    """Score rows computed (written, by `refresh_account_scores`)."""
    n_batches: int = 0
    """Batches of days the scores were computed in (`scoring.max_rows_per_batch`)."""


# --------------------------------------------------------------------------------------------
# Intervals of days, without a cross join


def _day_numbers(days: Iterable[date]) -> np.ndarray:
    return np.fromiter(((d - _EPOCH).days for d in days), dtype=np.int64)


def _bounds(first: pl.Expr, last: pl.Expr, frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(first, last) day numbers (days since 1970-01-01) of `frame`'s intervals; a null bound gives an empty one."""
    first, last = first.cast(pl.Int64), last.cast(pl.Int64)
    empty = first.is_null() | last.is_null()
    b = frame.select(
        pl.when(empty).then(pl.lit(_EMPTY[0], pl.Int64)).otherwise(first).alias("first"),
        pl.when(empty).then(pl.lit(_EMPTY[1], pl.Int64)).otherwise(last).alias("last"),
    )
    return b["first"].to_numpy(), b["last"].to_numpy()


def expand_intervals(first: np.ndarray, last: np.ndarray, days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (row, day) with `first[row] <= days[j] <= last[row]`, as (row indices, indices into `days`),
    row-major (each row's days in order), without materialising rows × days.

    `days` must be sorted and distinct; each row's days are the slice `searchsorted(days, first, "left")`
    to `searchsorted(days, last, "right")` of `days`, so the work is the size of the answer."""
    start = np.searchsorted(days, first, side="left")
    n = np.maximum(np.searchsorted(days, last, side="right") - start, 0)
    rows = np.repeat(np.arange(first.size), n)
    offsets = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    return rows, np.repeat(start, n) + offsets


def interval_counts(first: np.ndarray, last: np.ndarray, days: np.ndarray) -> np.ndarray:
    """How many intervals [first, last] hold each of `days` (sorted): #(first <= d) − #(last < d), over
    the non-empty intervals (first <= last)."""
    keep = first <= last
    lo, hi = np.sort(first[keep]), np.sort(last[keep])
    return np.searchsorted(lo, days, side="right") - np.searchsorted(hi, days, side="left")


def day_batches(counts: np.ndarray, max_rows: int) -> list[tuple[int, int]]:
    """Consecutive runs [start, stop) of days whose `counts` sum to at most `max_rows` (greedy, in order);
    a day counting more than `max_rows` on its own is a batch of one. Together they cover every day once."""
    batches, start, total = [], 0, 0
    for i, c in enumerate(np.asarray(counts, dtype=np.int64).tolist()):
        if i > start and total + c > max_rows:
            batches.append((start, i))
            start, total = i, 0
        total += c
    if len(counts):
        batches.append((start, len(counts)))
    return batches


def _observed_at(day: pl.Expr) -> pl.Expr:
    """The end of `day` (its observations see everything before midnight)."""
    return day.cast(pl.Datetime("us")) + pl.duration(days=1)


IN_PLAY = (
    (pl.col("started_at") < pl.col("observed_at"))
    & (pl.col("converted_at").is_null() | (pl.col("converted_at") >= pl.col("observed_at")))
    & (pl.col("outcome_window_end_at") > pl.col("observed_at"))
)
"""An account is in play at `observed_at`: started before it, not converted yet, outcome window still open."""


def in_play_bounds(outcomes: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The first and last day each outcome is in play (`IN_PLAY` at the end of the day), as day numbers:
    from the day it started to the day before it converted, and to the last day whose end is before the
    window closes (the day before the close, or two days before when it closes at midnight)."""
    last_open = (pl.col("outcome_window_end_at") - pl.duration(microseconds=1)).dt.date() - pl.duration(days=1)
    last_unconverted = pl.col("converted_at").dt.date() - pl.duration(days=1)
    last = (
        pl.when(pl.col("outcome_window_end_at").is_null())
        .then(None)
        .otherwise(pl.min_horizontal(last_open, last_unconverted))
    )
    return _bounds(pl.col("started_at").dt.date(), last, outcomes)


def in_play(outcomes: pl.DataFrame, days: list[date]) -> pl.DataFrame:
    """`outcomes` × `days` where the account is in play at the end of the day (`IN_PLAY`), with `day`,
    `observed_at` and `age_days`, in outcome order (each outcome's days in order), numbered `obs_id`.
    Generated from each outcome's interval (`in_play_bounds`, `expand_intervals`), not a cross join;
    `IN_PLAY` is applied to what is generated, so the rule is written once."""
    ordered = sorted(set(days))
    first, last = in_play_bounds(outcomes)
    rows, at = expand_intervals(first, last, _day_numbers(ordered))
    day = pl.Series("day", np.asarray(ordered, dtype="datetime64[D]")[at] if len(ordered) else [], dtype=pl.Date)
    return (
        outcomes[rows]
        .with_columns(day)
        .with_columns(_observed_at(pl.col("day")).alias("observed_at"))
        .filter(IN_PLAY)
        .with_row_index("obs_id")
        .with_columns(
            ((pl.col("observed_at") - pl.col("started_at")).dt.total_microseconds() / 86_400_000_000).alias("age_days")
        )
    )


def _trailing(frame: pl.DataFrame, at: str, days: list[date]) -> pl.DataFrame:
    """(row of `frame`, day) for each of `days` (sorted) whose trailing 30 days [day − 29, day + 1) hold
    `frame[at]`: the 30 days from the day of `at`. `frame`'s columns with `day`, in `frame`'s order."""
    first, last = _bounds(pl.col(at).dt.date(), pl.col(at).dt.date() + pl.duration(days=REVENUE_WINDOW_DAYS - 1), frame)
    rows, idx = expand_intervals(first, last, _day_numbers(days))
    day = pl.Series("day", np.asarray(days, dtype="datetime64[D]")[idx] if days else [], dtype=pl.Date)
    start = pl.col("day").cast(pl.Datetime("us")) - pl.duration(days=REVENUE_WINDOW_DAYS - 1)
    return frame[rows].with_columns(day).filter((pl.col(at) >= start) & (pl.col(at) < _observed_at(pl.col("day"))))


def revenue_metrics(
    outcomes: pl.DataFrame, first_fired: pl.DataFrame, scores: pl.DataFrame, days: list[date], lead_threshold: float
) -> pl.DataFrame:
    """Per day: leads surfaced, conversion rate and signal accuracy over outcomes closed in the last 30 days,
    and pipeline influenced (ARR of accounts converted in the last 30 days whose enabled signals fired before).

    first_fired: account_id, first_fired_at (each account's first enabled firing); scores: day, score."""
    ordered = sorted(set(days))
    o = outcomes.join(first_fired, on="account_id", how="left")
    signalled = pl.col("first_fired_at").is_not_null()
    closed_stats = (
        _trailing(o, "outcome_window_end_at", ordered)
        .group_by("day")
        .agg(
            pl.len().alias("outcomes_closed_30d"),
            pl.col("converted").mean().alias("conversion_rate_30d"),
            pl.col("converted").filter(signalled).mean().alias("signal_accuracy_30d"),
        )
    )
    influenced = (
        _trailing(o.filter(pl.col("converted")), "converted_at", ordered)
        .group_by("day")
        .agg(
            pl.len().alias("conversions_30d"),
            pl.col("arr")
            .filter(pl.col("first_fired_at") < pl.col("converted_at"))
            .sum()
            .alias("pipeline_influenced_arr_30d"),
        )
    )
    leads = scores.group_by("day").agg(
        pl.len().alias("accounts_in_play"), (pl.col("score") >= lead_threshold).sum().alias("leads_surfaced")
    )
    return (
        pl.DataFrame({"day": ordered}, schema={"day": pl.Date})
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


# --------------------------------------------------------------------------------------------
# Scoring


def _weights(signals: pl.DataFrame) -> pl.DataFrame:
    return signals.filter(pl.col("lift").is_not_null() & (pl.col("lift") > 0)).select(
        "signal_id", pl.col("lift").log().alias("weight")
    )


SCORE_ENTRY = pl.Struct(
    {
        "signal_id": pl.String,
        "definition": pl.String,
        "fired_at": pl.Datetime("us"),
        "contribution": pl.Float64,
        "health": pl.String,
        "weight_factor": pl.Float64,
        "weight_note": pl.String,
    }
)
"""One entry of `signals_fired`, `top_contributions` and `intent_contributions` (DuckDB: a `STRUCT(...)[]`
column): a signal that fired, when (UTC), what it adds to the raw score (rounded to 4 decimals), its health
that day, the factor its health put on its weight and why (`weight_note`, null at full weight)."""

EXPLANATION_COLUMNS = ("signals_fired", "top_contributions", "intent_contributions")
"""The `beton.account_scores` columns that are lists of `SCORE_ENTRY`."""

_NO_ENTRIES = pl.lit([], dtype=pl.List(SCORE_ENTRY))


def _entry_lists(frame: pl.DataFrame, by: str, k: int | None, name: str) -> pl.DataFrame:
    """Per `by`: the list of its `SCORE_ENTRY`s, largest contribution first (ties by signal id), the first
    `k` only when `k` is given."""
    entry = pl.struct(
        "signal_id", "definition", "fired_at", pl.col("contribution").round(4), "health", "weight_factor", "weight_note"
    ).cast(SCORE_ENTRY)
    ordered = frame.sort([by, "contribution", "signal_id"], descending=[False, True, False])
    # group_by keeps each group's rows in frame order, so the lists keep the sort.
    return ordered.group_by(by).agg((entry.head(k) if k else entry).alias(name))


@dataclass(frozen=True)
class _Scoring:
    """What every batch of days shares: read once, the calibration fitted once."""

    cfg: ScoringConfig
    outcomes: pl.DataFrame
    firings: pl.DataFrame
    first_fired: pl.DataFrame
    weights: pl.DataFrame
    definitions: pl.DataFrame
    health: pl.DataFrame
    live: Calibration
    calibration: pl.DataFrame
    days_without_health: list[date]


def _prepare(con: duckdb.DuckDBPyConnection, settings: Settings, days: list[date]) -> _Scoring:
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

    enabled_ids = [] if signals.is_empty() else signals.get_column("signal_id").to_list()
    health = health_history(con, max(days)).filter(pl.col("signal_id").is_in(enabled_ids))
    covered = set(health.get_column("day").to_list())
    return _Scoring(
        cfg=cfg,
        outcomes=outcomes,
        firings=firings,
        first_fired=firings.group_by("account_id").agg(pl.col("fired_at").min().alias("first_fired_at")),
        weights=weights,
        definitions=definitions,
        health=health,
        live=fit_calibration(raw, age, conv),
        calibration=calibration,
        days_without_health=[d for d in days if d not in covered] if enabled_ids else [],
    )


def _score_days(s: _Scoring, days: list[date]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Scores of the accounts in play at the end of each of `days` (ranked within each day), and the
    revenue numbers of those days."""
    cfg = s.cfg
    observed = in_play(s.outcomes, days)
    contribs = weigh_by_health(
        contributions(s.firings, s.weights, observed, cfg.half_life_days).join(
            observed.select("obs_id", "day"), on="obs_id"
        ),
        s.health,
        cfg.degrading_weight,
    ).join(s.definitions, on="signal_id")
    live_raw = raw_scores(observed, contribs)
    scores = observed.with_columns(
        pl.Series("raw_score", live_raw),
        pl.Series("score", s.live.probability(live_raw, observed["age_days"].to_numpy())),
    )
    # Rank 1 = the highest score of the day; equal scores in account_id order, so that a rerun ranks them alike
    # (an ordinal rank by score alone breaks ties by row order, which the joins above do not fix).
    scores = scores.sort(["day", "score", "account_id"], descending=[False, True, False]).with_columns(
        (pl.int_range(1, pl.len() + 1).over("day")).cast(pl.Int64).alias("score_rank")
    )
    # Every signal that fired is listed (a broken one with contribution 0 and why); the top and intent lists
    # hold only the signals that count that day.
    counting = contribs.filter(pl.col("weight_factor") > 0)
    fired = _entry_lists(contribs, "obs_id", None, "signals_fired")
    top = _entry_lists(counting, "obs_id", cfg.top_contributions, "top_contributions")
    intent = _entry_lists(counting.filter(pl.col("kind") == "intent"), "obs_id", None, "intent_contributions")
    n_fired = contribs.group_by("obs_id").agg(pl.len().alias("n_signals_fired"))
    scores = (
        scores.join(fired, on="obs_id", how="left")
        .join(top, on="obs_id", how="left")
        .join(intent, on="obs_id", how="left")
        .join(n_fired, on="obs_id", how="left")
        .select(
            "day",
            "account_id",
            "score",
            "raw_score",
            "score_rank",
            pl.col("age_days").round(3),
            pl.col("n_signals_fired").fill_null(0).cast(pl.Int64),
            pl.col(*EXPLANATION_COLUMNS).fill_null(_NO_ENTRIES),
            "domain",
            "company_name",
            "is_crm_company",
        )
        .sort("day", "score_rank")
    )
    revenue = revenue_metrics(s.outcomes, s.first_fired, scores, days, cfg.lead_threshold)
    return scores, revenue


def _batches(s: _Scoring, days: list[date]) -> list[list[date]]:
    """`days` (sorted, distinct) in runs whose in-play rows stay under `max_rows_per_batch` (`day_batches`)."""
    ordered = sorted(set(days))
    counts = interval_counts(*in_play_bounds(s.outcomes), _day_numbers(ordered))
    return [ordered[a:b] for a, b in day_batches(counts, s.cfg.max_rows_per_batch)]


def compute_account_scores(con: duckdb.DuckDBPyConnection, settings: Settings, days: list[date]) -> ScoresResult:
    """Scores for the accounts in play on each of `days`, the calibration check, and the revenue numbers,
    all in memory (batch by batch, then concatenated; `refresh_account_scores` writes them instead)."""
    s = _prepare(con, settings, days)
    parts = [_score_days(s, batch) for batch in _batches(s, days)]
    return ScoresResult(
        scores=pl.concat([p[0] for p in parts]),
        calibration=s.calibration,
        revenue=pl.concat([p[1] for p in parts]),
        days=list(days),
        days_without_health=s.days_without_health,
        n_scores=sum(p[0].height for p in parts),
        n_batches=len(parts),
    )


SCORES_TABLE = "beton.account_scores"
REVENUE_TABLE = "beton.revenue_metrics"


class ExplanationUpgradeError(RuntimeError):
    """An older `beton.account_scores` whose JSON-text explanation columns could not be converted."""


def _duckdb_types(con: duckdb.DuckDBPyConnection, schema: dict[str, pl.DataType]) -> dict[str, str]:
    """The DuckDB type of each column of a polars `schema`, as DuckDB maps it when beton writes a frame."""
    con.register("_beton_types", pl.DataFrame(schema=schema).to_arrow())
    try:
        return {name: typ for name, typ, *_ in con.sql("describe _beton_types").fetchall()}
    finally:
        con.unregister("_beton_types")


def upgrade_explanation_columns(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Convert the JSON-text explanation columns of a `beton.account_scores` written by an older beton
    (VARCHAR) to `SCORE_ENTRY` lists in place, in one transaction; returns the columns converted.

    Without this a typed insert into the old table would store each list's text form (DuckDB casts
    LIST to VARCHAR implicitly). The JSON is read with `from_json` into the entry's fields: `fired_at`
    ("2026-05-02T10:00:00Z") becomes a TIMESTAMP, a field an older entry lacks (`health`, `weight_factor`,
    `weight_note` before health weighted the scores) is null."""
    schema, table = SCORES_TABLE.split(".")
    old = [
        name
        for (name,) in con.execute(
            "select column_name from information_schema.columns where table_schema = ? and table_name = ? "
            "and data_type = 'VARCHAR' and list_contains(?, column_name)",
            [schema, table, list(EXPLANATION_COLUMNS)],
        ).fetchall()
    ]
    if not old:
        return []
    entry = _duckdb_types(con, SCORE_ENTRY.to_schema())
    typed = _duckdb_types(con, {"entries": pl.List(SCORE_ENTRY)})["entries"]
    shape = json.dumps([entry]).replace("'", "''")
    try:
        with transaction(con):
            for name in old:
                con.execute(
                    f'alter table {SCORES_TABLE} alter column "{name}" type {typed} using from_json("{name}", \'{shape}\')'
                )
    except duckdb.Error as exc:
        raise ExplanationUpgradeError(
            f"{SCORES_TABLE} was written by an older beton (JSON text in {', '.join(old)}) and could not be "
            f"converted to lists of entries ({exc}); it is unchanged. Drop the table (`drop table {SCORES_TABLE}`) "
            "and score again to rebuild it."
        ) from exc
    return old


def refresh_account_scores(
    con: duckdb.DuckDBPyConnection, settings: Settings, partition_keys: Iterable[str]
) -> ScoresResult:
    """Score the partition days the data covers and replace those days' rows of beton.account_scores and
    beton.revenue_metrics, and beton.score_calibration when there is a holdout to check on. Without
    days, nothing is computed or written (`days` is empty).

    The days are scored in batches (`scoring.max_rows_per_batch` in-play rows at most, bar a single larger
    day) and each batch replaces its days' rows (`write_days`: one transaction per batch) before the next is
    computed. So every day is always whole, its old rows or its new ones; a run that fails part-way leaves
    the days of its written batches new and the others old, and running it again replaces them all. (One
    transaction over the whole run would keep every uncommitted row in memory until the commit: at 10M
    events it took the peak from 3.4 to 5.5 GiB, growing with the run, which is what the batches avoid.)
    The scores are not kept (`scores` is empty, `n_scores` counts the rows written); `revenue` holds every
    day's numbers."""
    days = partition_days(con, partition_keys)
    if not days:
        return ScoresResult(scores=pl.DataFrame(), calibration=pl.DataFrame(), revenue=pl.DataFrame())
    upgrade_explanation_columns(con)
    s = _prepare(con, settings, days)
    batches = _batches(s, days)
    revenue, n_scores = [], 0
    for batch in batches:
        scores, rev = _score_days(s, batch)
        write_days(con, SCORES_TABLE, scores, batch)
        write_days(con, REVENUE_TABLE, rev, batch)
        revenue.append(rev)
        n_scores += scores.height
        del scores  # before the next batch is computed: one batch in memory at a time
    if not s.calibration.is_empty():
        replace_rows(con, "beton.score_calibration", s.calibration, "true")
    return ScoresResult(
        scores=pl.DataFrame(),
        calibration=s.calibration,
        revenue=pl.concat(revenue),
        days=list(days),
        days_without_health=s.days_without_health,
        n_scores=n_scores,
        n_batches=len(batches),
    )
