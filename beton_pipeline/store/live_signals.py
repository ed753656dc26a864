"""The live signals: the enabled signals that monitoring and scoring use every day, discovered and custom,
and when each fired for each account.

Discovered signals' firing times are computed here from their definitions (`firings.signal_firings`).
Custom signals (kind condition/sql) fire by the rules of `core.conditions.firing_times_many`; the
`custom_signals` asset, which evaluates them, stores their firings in `beton.custom_signal_firings`, read
here. Both kinds carry their reference counts in `beton.signals`, so health and scores treat them alike.
"""

from __future__ import annotations

import duckdb
import polars as pl

from beton_pipeline.store.custom_signals import FIRINGS_TABLE
from beton_pipeline.store.firings import FIRING_SCHEMA, signal_firings
from beton_pipeline.warehouse import table_exists

SIGNAL_COLUMNS = (
    "signal_id, definition, kind, candidate_key as key, event, property, value, window_days, threshold, "
    "part_a_id, part_b_id, lift, conversions_with, n_with, conversions_without, n_without, source"
)
"""What monitoring and scoring read of a signal: its definition (for `signal_firings`), its reference counts
and its source (`discovered` or `custom`)."""

LIVE_SOURCES = ("discovered", "custom")


def _signals(con: duckdb.DuckDBPyConnection, where: str, params: list | None = None) -> pl.DataFrame:
    sources = ", ".join(f"'{s}'" for s in LIVE_SOURCES)
    return con.sql(
        f"select {SIGNAL_COLUMNS} from beton.signals where {where} and source in ({sources}) order by source, signal_id",
        params=params,
    ).pl()


def enabled_signals(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """The enabled signals, discovered and custom, with their reference counts (empty when discovery has not run)."""
    if not table_exists(con, "beton", "signals"):
        return pl.DataFrame()
    return _signals(con, "enabled")


def custom_firings(con: duckdb.DuckDBPyConnection, signal_ids: list[str]) -> pl.DataFrame:
    """The stored firings of the custom signals `signal_ids` (none before the first `custom_signals` run)."""
    if not signal_ids or not table_exists(con, *FIRINGS_TABLE.split(".")):
        return pl.DataFrame(schema=FIRING_SCHEMA)
    return (
        con.sql(
            f"select account_id, signal_id, fired_at from {FIRINGS_TABLE} where signal_id in (select unnest(?))",
            params=[signal_ids],
        )
        .pl()
        .cast(FIRING_SCHEMA)
    )


def enabled_firings(con: duckdb.DuckDBPyConnection, signals: pl.DataFrame) -> pl.DataFrame:
    """Firings (account_id, signal_id, fired_at) of `signals`: discovered ones computed (a pair's parts are
    evaluated too, enabled or not, and then dropped), custom ones read from beton.custom_signal_firings."""
    is_custom = pl.col("source") == "custom" if "source" in signals.columns else pl.lit(False)
    custom = signals.filter(is_custom)
    discovered = signals.filter(~is_custom)
    part_ids = (
        discovered.select(pl.concat_list("part_a_id", "part_b_id"))
        .to_series()
        .explode()
        .drop_nulls()
        .unique()
        .to_list()
    )
    missing = sorted(set(part_ids) - set(discovered["signal_id"].to_list()))
    scope = discovered
    if missing:
        parts = _signals(con, "signal_id in (select unnest(?))", [missing])
        scope = pl.concat([discovered, parts], how="vertical_relaxed")
    fired = signal_firings(con, scope) if scope.height else pl.DataFrame(schema=FIRING_SCHEMA)
    fired = fired.filter(pl.col("signal_id").is_in(discovered["signal_id"].to_list()))
    return pl.concat([fired, custom_firings(con, custom["signal_id"].to_list())])
