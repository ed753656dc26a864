"""Signal discovery in the warehouse: `beton.signal_cohort_counts`, `beton.signals` and `beton.signal_overrides`.

* **Counts.** `count_cohort` writes one cohort month's sufficient statistics of every candidate
  (the `signal_cohort_counts` partition); re-counting a month replaces exactly its rows.
* **Discovery.** `discover` reads every month's counts (discovered and custom,
  `beton.custom_signal_cohort_counts`) and their per-activity-band counts (discovered:
  `beton.signal_cohort_stratum_counts`; custom: `beton.custom_signal_stratum_counts`, both with their bands'
  totals), runs `core.discovery` (one Benjamini–Hochberg family over everything tested, one over every
  adjusted p-value) and replaces the discovered and custom rows of beton.signals.
* **One custom signal on its own** (`beton backtest`): `custom_signal_rows` tests it on discovery's
  temporal split, where q = p; `signals_table_rows` puts it in beton.signals' schema.
* **Overrides.** `enabled` is the recommendation (`enable`) unless the latest override for that
  signal says otherwise. Overrides live in `beton.signal_overrides` (append-only: who, when, why),
  which discovery never rewrites, so a user's decision survives every re-run. Everything
  downstream reads `enabled`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb
import numpy as np
import polars as pl

from beton_pipeline.core.candidates import (
    FeatureFrames,
    account_activity,
    activity_windows,
    candidate_matrix,
    signal_id,
    sufficient_statistics,
)
from beton_pipeline.core.discovery import (
    HoldoutSplit,
    PairCounts,
    StratumCounts,
    attach_holdout,
    cohort_labels,
    count_by_stratum,
    discover_from_cohort_counts,
    evaluate,
    matrix_pair_source,
    projected_arr,
    recommend,
    span_days,
    temporal_split,
)
from beton_pipeline.core.stats import benjamini_hochberg
from beton_pipeline.settings import Settings
from beton_pipeline.store.custom_signals import (
    CUSTOM_COUNTS_TABLE,
    Evaluated,
    custom_matrix,
    read_custom_stratum_counts,
)
from beton_pipeline.store.tables import as_of_time, eligible_cohort_months, read_feature_frames, replace_rows
from beton_pipeline.warehouse import table_exists, transaction

COHORT_COUNTS_TABLE = "beton.signal_cohort_counts"
STRATUM_COUNTS_TABLE = "beton.signal_cohort_stratum_counts"
STRATA_TABLE = "beton.signal_cohort_strata"
SIGNALS_TABLE = "beton.signals"
OVERRIDES_TABLE = "beton.signal_overrides"

SIGNALS_SCHEMA: dict[str, pl.DataType] = {
    "signal_id": pl.String(),
    "definition": pl.String(),
    "source": pl.String(),
    "kind": pl.String(),
    "family": pl.String(),
    "n_with": pl.Int64(),
    "conversions_with": pl.Int64(),
    "n_without": pl.Int64(),
    "conversions_without": pl.Int64(),
    "rate_with": pl.Float64(),
    "rate_without": pl.Float64(),
    "lift": pl.Float64(),
    "lift_ci_low": pl.Float64(),
    "lift_ci_high": pl.Float64(),
    "p_value": pl.Float64(),
    "q_value": pl.Float64(),
    "holdout_lift": pl.Float64(),
    "holdout_lift_ci_low": pl.Float64(),
    "holdout_lift_ci_high": pl.Float64(),
    "holdout_p_value": pl.Float64(),
    "holdout_n_with": pl.Int64(),
    "holdout_conversions_with": pl.Int64(),
    "holdout_n_total": pl.Int64(),
    "projected_arr": pl.Float64(),
    "recommendation": pl.String(),
    "recommendation_reason": pl.String(),
    "enabled": pl.Boolean(),
    "enabled_override": pl.Boolean(),
    "method": pl.String(),
    "is_family_best": pl.Boolean(),
    "alternatives": pl.String(),
    "candidate_key": pl.String(),
    "event": pl.String(),
    "property": pl.String(),
    "value": pl.String(),
    "window_days": pl.Int64(),
    "threshold": pl.Int64(),
    "confidence_level": pl.Float64(),
    "as_of": pl.Datetime("us"),
    "part_a_id": pl.String(),
    "part_b_id": pl.String(),
    "adjusted_lift": pl.Float64(),
    "adjusted_lift_ci_low": pl.Float64(),
    "adjusted_lift_ci_high": pl.Float64(),
    "adjusted_p_value": pl.Float64(),
    "adjusted_q_value": pl.Float64(),
    "activity_strata": pl.Int64(),
    "adjustment_method": pl.String(),
    "adjustment_status": pl.String(),
    "holdout_adjusted_lift": pl.Float64(),
    "holdout_adjusted_lift_ci_low": pl.Float64(),
    "holdout_adjusted_lift_ci_high": pl.Float64(),
    "holdout_adjusted_p_value": pl.Float64(),
}
"""beton.signals, column by column (README, "beton.signals")."""
SIGNAL_COLUMNS = list(SIGNALS_SCHEMA)

OVERRIDES_DDL = f"""
create schema if not exists beton;
create table if not exists {OVERRIDES_TABLE} (
    signal_id varchar not null,
    enabled boolean,  -- null: a reset (the recommendation decides again)
    changed_by varchar not null,
    changed_at timestamp not null,
    reason varchar
);
"""


class UnknownSignalError(KeyError):
    """No signal with that id in beton.signals."""


def latest_overrides(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """The latest override per signal: signal_id, enabled, changed_by, changed_at, reason.

    Reads only (works on a read-only connection): empty when no decision was ever recorded.
    """
    if not table_exists(con, "beton", "signal_overrides"):
        return pl.DataFrame(
            schema={
                "signal_id": pl.String,
                "enabled": pl.Boolean,
                "changed_by": pl.String,
                "changed_at": pl.Datetime("us"),
                "reason": pl.String,
            }
        )
    return (
        con.sql(
            f"select * from (select *, row_number() over (partition by signal_id order by changed_at desc) as rn "
            f"from {OVERRIDES_TABLE}) where rn = 1"
        )
        .pl()
        .drop("rn")
    )


def _with_enabled(frame: pl.DataFrame, overrides: pl.DataFrame) -> pl.DataFrame:
    """`enabled_override` from the latest override, and `enabled`: the override, else recommendation = enable."""
    joined = frame.join(
        overrides.select("signal_id", pl.col("enabled").alias("enabled_override")), on="signal_id", how="left"
    )
    return joined.with_columns(
        pl.coalesce(pl.col("enabled_override"), pl.col("recommendation") == "enable").alias("enabled")
    )


def _nan_to_null(frame: pl.DataFrame) -> pl.DataFrame:
    """NaN statistics (e.g. a lift with no account on one side) are stored as NULL."""
    return frame.with_columns(pl.col(c).fill_nan(None) for c in frame.columns if frame.schema[c] == pl.Float64)


# ------------------------------------------------------------------------------------------------
# signal_cohort_counts: one cohort month's sufficient statistics
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CohortCount:
    """What `count_cohort` counted: the month's eligible accounts, their conversions, the candidates seen."""

    cohort_month: str
    eligible_accounts: int
    conversions: int
    candidates_seen: int


def count_cohort(con: duckdb.DuckDBPyConnection, settings: Settings, month: str) -> CohortCount:
    """Count every candidate on the eligible accounts of cohort month `month` (`YYYY-MM`) with one sparse
    product and replace exactly that month's rows of beton.signal_cohort_counts; count them again per
    activity band (`core.discovery.count_by_stratum`, `discovery.activity_strata` bands of all events in
    each candidate's window, cut within this month) into beton.signal_cohort_stratum_counts, with the
    bands' totals in beton.signal_cohort_strata. The activity comes from the event features already read."""
    spec = settings.feature_spec()
    frames = read_feature_frames(con, settings.feature_windows, cohort_month=month)
    matrix = candidate_matrix(frames, spec)
    accounts = frames.accounts
    converted = accounts.get_column("converted").to_numpy()
    counts = sufficient_statistics(matrix, converted, accounts.get_column("arr").fill_null(0).to_numpy()).with_columns(
        pl.lit(month).alias("cohort_month")
    )
    stratified = count_by_stratum(
        matrix.matrix,
        matrix.candidates.get_column("key").to_numpy(),
        activity_windows(matrix.candidates, spec.observation_days),
        account_activity(frames, spec),
        np.full(accounts.height, month, dtype=object),
        converted,
        settings.discovery.activity_strata,
    )
    replace_rows(con, COHORT_COUNTS_TABLE, counts, "cohort_month = ?", [month])
    replace_rows(con, STRATUM_COUNTS_TABLE, stratified.counts, "cohort_month = ?", [month])
    replace_rows(con, STRATA_TABLE, stratified.strata, "cohort_month = ?", [month])
    conversions = int(accounts.get_column("converted").sum()) if accounts.height else 0
    return CohortCount(month, accounts.height, conversions, matrix.n_candidates)


# ------------------------------------------------------------------------------------------------
# signals: discovery over every cohort month's counts (discovered and custom)
# ------------------------------------------------------------------------------------------------
class MissingCohortMonthsError(RuntimeError):
    """Eligible cohort months without their signal_cohort_counts partition: discovery would miss accounts."""

    def __init__(self, months: list[str]):
        self.months = months
        super().__init__(
            f"signal_cohort_counts is missing cohort month(s) {', '.join(months)}: materialise those partitions first"
        )


@dataclass(frozen=True)
class Discovery:
    """What `discover` did: candidates tested, the rows written (with `recommendation_order`), the split,
    and the number of eligible cohort months counted."""

    tested: int
    written: pl.DataFrame
    split: HoldoutSplit
    cohort_months: int


def read_cohort_counts(con: duckdb.DuckDBPyConnection, months: set[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per-cohort counts of `months`, discovered candidates' and custom signals', and the custom signals'
    notes (key, note: e.g. SQL without fired_at).

    Raises MissingCohortMonthsError when one of `months` has no discovered-candidate counts yet."""
    counts = (
        con.sql(f"select * from {COHORT_COUNTS_TABLE}").pl()
        if table_exists(con, *COHORT_COUNTS_TABLE.split("."))
        else pl.DataFrame()
    )
    present = set(counts.get_column("cohort_month").unique().to_list()) if counts.height else set()
    missing = sorted(months - present)
    if missing:
        raise MissingCohortMonthsError(missing)
    counts = counts.filter(pl.col("cohort_month").is_in(sorted(months))) if counts.height else counts
    custom = (
        con.sql(f"select * from {CUSTOM_COUNTS_TABLE}").pl()
        if table_exists(con, *CUSTOM_COUNTS_TABLE.split("."))
        else pl.DataFrame()
    )
    if custom.height and counts.height:
        counts = pl.concat(
            [counts, custom.filter(pl.col("cohort_month").is_in(sorted(months))).select(counts.columns)],
            how="vertical_relaxed",
        )
    notes = (
        custom.select("key", "note").unique("key")
        if custom.height
        else pl.DataFrame(schema={"key": pl.String, "note": pl.String})
    )
    return counts, notes


def read_stratum_counts(con: duckdb.DuckDBPyConnection, months: set[str]) -> StratumCounts:
    """The per-activity-band counts and band totals of `months` (beton.signal_cohort_stratum_counts,
    beton.signal_cohort_strata).

    Raises MissingCohortMonthsError when one of `months` has no bands (e.g. counted by a beton that did
    not stratify yet): the adjustment would silently leave that month's accounts out."""
    if not (table_exists(con, *STRATA_TABLE.split(".")) and table_exists(con, *STRATUM_COUNTS_TABLE.split("."))):
        raise MissingCohortMonthsError(sorted(months))
    wanted = sorted(months)
    strata = con.sql(f"select * from {STRATA_TABLE} where list_contains(?, cohort_month)", params=[wanted]).pl()
    missing = sorted(months - set(strata.get_column("cohort_month").unique().to_list()))
    if missing:
        raise MissingCohortMonthsError(missing)
    counts = con.sql(f"select * from {STRATUM_COUNTS_TABLE} where list_contains(?, cohort_month)", params=[wanted]).pl()
    return StratumCounts(counts, strata)


def discover(con: duckdb.DuckDBPyConnection, settings: Settings) -> Discovery:
    """Test every candidate counted in every eligible cohort month (and every custom signal) and replace the
    discovered and custom rows of beton.signals; users' overrides are kept. Discovered candidates, pairs and
    custom signals are also tested among equally active accounts (`read_stratum_counts`,
    `store.custom_signals.read_custom_stratum_counts`, `core.discovery`)."""
    months = set(eligible_cohort_months(con))
    counts, notes = read_cohort_counts(con, months)
    if counts.is_empty():
        result, split = pl.DataFrame(), HoldoutSplit((), (), 0, 0)
    else:
        pairs = _warehouse_pair_source(con, settings)
        run = discover_from_cohort_counts(
            counts,
            pairs,
            settings.discovery_config(),
            settings.windows.holdout_fraction,
            read_stratum_counts(con, months),
            read_custom_stratum_counts(con, months),
        )
        result, split = run.signals.join(notes, on="key", how="left"), run.split
    written = write_discovered_signals(con, result, settings, as_of=as_of_time(con), split=split)
    return Discovery(tested=result.height, written=written, split=split, cohort_months=len(months))


def _warehouse_pair_source(con: duckdb.DuckDBPyConnection, settings: Settings):
    """Pair counts for the chosen singles, from account-level features read back from the marts, with their
    per-stratum counts (the same activity bands as `count_cohort`: cut within each cohort month)."""

    def source(top: list[str], split: HoldoutSplit) -> PairCounts:
        spec = settings.feature_spec()
        frames = read_feature_frames(con, settings.feature_windows)
        matrix = candidate_matrix(frames, spec, keys=top)
        accounts = frames.accounts
        return matrix_pair_source(
            matrix,
            cohort_labels(frames),
            accounts.get_column("converted").to_numpy(),
            accounts.get_column("arr").fill_null(0).to_numpy(),
            activity=account_activity(frames, spec),
            windows=activity_windows(matrix.candidates, spec.observation_days),
            n_bands=settings.discovery.activity_strata,
        )(top, split)

    return source


def write_discovered_signals(
    con: duckdb.DuckDBPyConnection, result: pl.DataFrame, settings: Settings, as_of, split
) -> pl.DataFrame:
    """Replace the discovered and custom rows of beton.signals with `result` (one family, one BH); returns what was written."""
    n_tested = result.height
    if n_tested == 0:
        empty = pl.DataFrame(schema=SIGNALS_SCHEMA)
        replace_rows(con, SIGNALS_TABLE, empty, "source in ('discovered', 'custom')")
        return empty.with_columns(pl.lit(None, pl.Int64).alias("recommendation_order"))
    if "part_a" not in result.columns:
        result = result.with_columns(pl.lit(None, pl.String).alias("part_a"), pl.lit(None, pl.String).alias("part_b"))
    frame = result.with_columns(
        pl.col("key").alias("candidate_key"),
        pl.col("part_a").map_elements(signal_id, return_dtype=pl.String).alias("part_a_id"),
        pl.col("part_b").map_elements(signal_id, return_dtype=pl.String).alias("part_b_id"),
        pl.format(
            "{}; q: Benjamini-Hochberg over {} candidates (discovered and custom); holdout: {} later cohort months{}",
            "method",
            pl.lit(n_tested),
            pl.lit(len(split.holdout_months)),
            (pl.lit("; ") + pl.col("note")).fill_null("") if "note" in result.columns else pl.lit(""),
        ).alias("method"),
        pl.col("alternatives")
        .map_elements(lambda a: json.dumps(list(a)), return_dtype=pl.String)
        .alias("alternatives"),
        pl.lit(settings.thresholds.confidence_level).alias("confidence_level"),
        pl.lit(as_of, pl.Datetime("us")).alias("as_of"),
        pl.when(pl.col("recommendation") == "enable")
        .then(0)
        .when(pl.col("recommendation") == "review")
        .then(1)
        .otherwise(2)
        .alias("recommendation_order"),
    )
    frame = _with_enabled(_nan_to_null(frame), latest_overrides(con))
    out = frame.select(SIGNAL_COLUMNS).cast(SIGNALS_SCHEMA).sort("signal_id")
    replace_rows(con, SIGNALS_TABLE, out, "source in ('discovered', 'custom')")
    return frame


def set_override(
    con: duckdb.DuckDBPyConnection,
    signal_id: str,
    enabled: bool,
    changed_by: str,
    reason: str | None,
    now: datetime | None = None,
) -> None:
    """Record a user's enable/disable decision and apply it to beton.signals at once."""
    if not table_exists(con, "beton", "signals"):
        raise UnknownSignalError(f"{signal_id}: beton.signals does not exist yet; run `beton run` first")
    known = con.sql(f"select count(*) from {SIGNALS_TABLE} where signal_id = ?", params=[signal_id]).fetchall()[0][0]
    if not known:
        raise UnknownSignalError(f"{signal_id}: no such signal in beton.signals (see `beton signals --all`)")
    con.execute(OVERRIDES_DDL)
    now = now or datetime.now(UTC).replace(tzinfo=None)
    with transaction(con):
        con.execute(
            f"insert into {OVERRIDES_TABLE} values (?, ?, ?, ?, ?)", [signal_id, enabled, changed_by, now, reason]
        )
        con.execute(
            f"update {SIGNALS_TABLE} set enabled = ?, enabled_override = ? where signal_id = ?",
            [enabled, enabled, signal_id],
        )


def read_signals(con: duckdb.DuckDBPyConnection, include_all: bool = False) -> pl.DataFrame:
    """beton.signals, best first: enabled, then by recommendation, q-value and lift. By default one row per family."""
    if not table_exists(con, "beton", "signals"):
        return pl.DataFrame(schema=SIGNALS_SCHEMA)
    where = "" if include_all else "where is_family_best or source = 'custom'"
    return con.sql(
        f"select * from {SIGNALS_TABLE} {where} order by enabled desc, "
        "case recommendation when 'enable' then 0 when 'review' then 1 else 2 end, q_value nulls last, lift desc nulls last"
    ).pl()


# ------------------------------------------------------------------------------------------------
# One custom signal on its own (`beton backtest`, the launchpad): q over this signal alone
# ------------------------------------------------------------------------------------------------
def custom_signal_rows(
    evaluated: Evaluated, frames: FeatureFrames, settings: Settings
) -> tuple[pl.DataFrame, HoldoutSplit]:
    """The beton.signals statistics of custom signals tested on their own, on discovery's temporal split:
    the same tests, holdout replication, projected ARR and recommendation rule as `discover`, with one
    Benjamini–Hochberg family over these signals only."""
    config = settings.discovery_config()
    months = cohort_labels(frames)
    split = temporal_split(months, settings.windows.holdout_fraction)
    converted = frames.accounts.get_column("converted").to_numpy().astype(bool)
    arr = frames.accounts.get_column("arr").fill_null(0).to_numpy().astype(np.float64)
    matrix = custom_matrix(evaluated, frames)

    def counts(in_months: tuple) -> pl.DataFrame:
        rows = np.flatnonzero(np.isin(months, list(in_months)))
        return sufficient_statistics(matrix.take_rows(rows), converted[rows], arr[rows])

    tested = evaluate(counts(split.discovery_months), config.confidence_level)
    tested = tested.with_columns(
        pl.Series("q_value", benjamini_hochberg(tested.get_column("p_value").to_numpy()), dtype=pl.Float64)
    )
    tested = attach_holdout(
        tested, counts(split.holdout_months) if split.holdout_months else pl.DataFrame(), config.confidence_level
    )
    tested = tested.with_columns(projected_arr(tested, span_days(split.discovery_months), config.acv))
    out = recommend(tested, config).with_columns(pl.lit("custom").alias("source"))
    n = len(evaluated.signals)
    notes = pl.DataFrame(
        {"signal_id": list(evaluated.notes), "_note": list(evaluated.notes.values())},
        schema={"signal_id": pl.String, "_note": pl.String},
    )
    out = (
        out.join(notes, on="signal_id", how="left")
        .with_columns(
            pl.format(
                "{}; q: Benjamini-Hochberg over {} custom signal(s) of this run; holdout: {} later cohort months",
                "method",
                pl.lit(n),
                pl.lit(len(split.holdout_months)),
            ).alias("method")
        )
        .with_columns(
            pl.when(pl.col("_note").is_not_null())
            .then(pl.format("{}; {}", "method", "_note"))
            .otherwise(pl.col("method"))
            .alias("method"),
            pl.when(pl.col("n_with") == 0)
            .then(pl.lit("fired for no account in the discovery cohorts"))
            .when(pl.col("n_without") == 0)
            .then(pl.lit("fired for every account in the discovery cohorts"))
            .otherwise(pl.col("recommendation_reason"))
            .alias("recommendation_reason"),
        )
        .drop("_note")
    )
    return out, split


def signals_table_rows(rows: pl.DataFrame, overrides: pl.DataFrame, confidence_level: float, as_of) -> pl.DataFrame:
    """`custom_signal_rows` in beton.signals' schema, `enabled` from the recommendation unless a user override says otherwise."""
    frame = rows.with_columns(
        pl.col("key").alias("candidate_key"),
        pl.lit("[]").alias("alternatives"),
        pl.lit(confidence_level).alias("confidence_level"),
        pl.lit(as_of, pl.Datetime("us")).alias("as_of"),
    )
    frame = _with_enabled(_nan_to_null(frame), overrides)
    frame = frame.with_columns(
        pl.lit(None).alias(c) for c in SIGNAL_COLUMNS if c not in frame.columns
    )  # e.g. pair parts
    return frame.select(SIGNAL_COLUMNS).cast(SIGNALS_SCHEMA).sort("signal_id")
