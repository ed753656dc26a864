"""`beton.signals` and `beton.signal_overrides`: writing discovery results and honouring users' choices.

`enabled` is the recommendation (`enable`) unless the latest override for that signal says otherwise.
Overrides live in `beton.signal_overrides` (append-only: who, when, why), which discovery never
rewrites, so a user's decision survives every re-run. Everything downstream reads `enabled`.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import duckdb
import polars as pl

from beton_pipeline.core.candidates import signal_id
from beton_pipeline.settings import Settings
from beton_pipeline.store.tables import replace_rows
from beton_pipeline.warehouse import table_exists

SIGNALS_TABLE = "beton.signals"
OVERRIDES_TABLE = "beton.signal_overrides"

SIGNALS_SCHEMA: dict[str, pl.DataType] = {
    "signal_id": pl.String(), "definition": pl.String(), "source": pl.String(), "kind": pl.String(), "family": pl.String(),
    "n_with": pl.Int64(), "conversions_with": pl.Int64(), "n_without": pl.Int64(), "conversions_without": pl.Int64(),
    "rate_with": pl.Float64(), "rate_without": pl.Float64(),
    "lift": pl.Float64(), "lift_ci_low": pl.Float64(), "lift_ci_high": pl.Float64(), "p_value": pl.Float64(), "q_value": pl.Float64(),
    "holdout_lift": pl.Float64(), "holdout_lift_ci_low": pl.Float64(), "holdout_lift_ci_high": pl.Float64(), "holdout_p_value": pl.Float64(),
    "holdout_n_with": pl.Int64(), "holdout_conversions_with": pl.Int64(), "holdout_n_total": pl.Int64(),
    "projected_arr": pl.Float64(), "recommendation": pl.String(), "recommendation_reason": pl.String(),
    "enabled": pl.Boolean(), "enabled_override": pl.Boolean(),
    "method": pl.String(), "is_family_best": pl.Boolean(), "alternatives": pl.String(),
    "candidate_key": pl.String(), "event": pl.String(), "property": pl.String(), "value": pl.String(),
    "window_days": pl.Int64(), "threshold": pl.Int64(), "confidence_level": pl.Float64(), "as_of": pl.Datetime("us"),
    "part_a_id": pl.String(), "part_b_id": pl.String(),
}
"""beton.signals, column by column (README, "beton.signals")."""
SIGNAL_COLUMNS = list(SIGNALS_SCHEMA)

OVERRIDES_DDL = f"""
create schema if not exists beton;
create table if not exists {OVERRIDES_TABLE} (
    signal_id varchar not null,
    enabled boolean not null,
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
            schema={"signal_id": pl.String, "enabled": pl.Boolean, "changed_by": pl.String, "changed_at": pl.Datetime("us"), "reason": pl.String}
        )
    return con.sql(
        f"select * from (select *, row_number() over (partition by signal_id order by changed_at desc) as rn "
        f"from {OVERRIDES_TABLE}) where rn = 1"
    ).pl().drop("rn")


def _with_enabled(frame: pl.DataFrame, overrides: pl.DataFrame) -> pl.DataFrame:
    joined = frame.join(
        overrides.select("signal_id", pl.col("enabled").alias("enabled_override")), on="signal_id", how="left"
    )
    return joined.with_columns(
        pl.coalesce(pl.col("enabled_override"), pl.col("recommendation") == "enable").alias("enabled")
    )


def write_discovered_signals(con: duckdb.DuckDBPyConnection, result: pl.DataFrame, settings: Settings, as_of, split) -> pl.DataFrame:
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
            "method", pl.lit(n_tested), pl.lit(len(split.holdout_months)),
            (pl.lit("; ") + pl.col("note")).fill_null("") if "note" in result.columns else pl.lit(""),
        ).alias("method"),
        pl.col("alternatives").map_elements(lambda a: json.dumps(list(a)), return_dtype=pl.String).alias("alternatives"),
        pl.lit(settings.thresholds.confidence_level).alias("confidence_level"),
        pl.lit(as_of, pl.Datetime("us")).alias("as_of"),
        pl.when(pl.col("recommendation") == "enable").then(0).when(pl.col("recommendation") == "review").then(1).otherwise(2).alias("recommendation_order"),
    )
    float_cols = [c for c in frame.columns if frame.schema[c] == pl.Float64]
    frame = frame.with_columns(pl.col(c).fill_nan(None) for c in float_cols)
    frame = _with_enabled(frame, latest_overrides(con))
    out = frame.select(SIGNAL_COLUMNS).cast(SIGNALS_SCHEMA).sort("signal_id")
    replace_rows(con, SIGNALS_TABLE, out, "source in ('discovered', 'custom')")
    return frame


def set_override(
    con: duckdb.DuckDBPyConnection, signal_id: str, enabled: bool, changed_by: str, reason: str | None, now: datetime | None = None
) -> None:
    """Record a user's enable/disable decision and apply it to beton.signals at once."""
    if not table_exists(con, "beton", "signals"):
        raise UnknownSignalError(f"{signal_id}: beton.signals does not exist yet; run `beton run` first")
    known = con.sql(f"select count(*) from {SIGNALS_TABLE} where signal_id = ?", params=[signal_id]).fetchall()[0][0]
    if not known:
        raise UnknownSignalError(f"{signal_id}: no such signal in beton.signals (see `beton signals --all`)")
    con.execute(OVERRIDES_DDL)
    now = now or datetime.now(timezone.utc).replace(tzinfo=None)
    con.execute("begin transaction")
    con.execute(f"insert into {OVERRIDES_TABLE} values (?, ?, ?, ?, ?)", [signal_id, enabled, changed_by, now, reason])
    con.execute(f"update {SIGNALS_TABLE} set enabled = ?, enabled_override = ? where signal_id = ?", [enabled, enabled, signal_id])
    con.execute("commit")


def read_signals(con: duckdb.DuckDBPyConnection, include_all: bool = False) -> pl.DataFrame:
    """beton.signals, best first: enabled, then by recommendation, q-value and lift. By default one row per family."""
    if not table_exists(con, "beton", "signals"):
        return pl.DataFrame(schema=SIGNALS_SCHEMA)
    where = "" if include_all else "where is_family_best or source = 'custom'"
    return con.sql(
        f"select * from {SIGNALS_TABLE} {where} order by enabled desc, "
        "case recommendation when 'enable' then 0 when 'review' then 1 else 2 end, q_value nulls last, lift desc nulls last"
    ).pl()
