"""The live signals: the enabled discovered signals that monitoring and scoring use every day, and when
each fired for each account.

Custom signals (kind condition/sql) are tested and backtested, but not yet scored or monitored daily:
their firing times are not computed by `firings.signal_firings`.
"""

from __future__ import annotations

import duckdb
import polars as pl

from beton_pipeline.store.firings import signal_firings
from beton_pipeline.warehouse import table_exists

SIGNAL_COLUMNS = (
    "signal_id, definition, kind, candidate_key as key, event, property, value, window_days, threshold, "
    "part_a_id, part_b_id, lift, conversions_with, n_with, conversions_without, n_without"
)
"""What monitoring and scoring read of a signal: its definition (for `signal_firings`) and its reference counts."""


def _discovered_signals(con: duckdb.DuckDBPyConnection, where: str, params: list | None = None) -> pl.DataFrame:
    return con.sql(
        f"select {SIGNAL_COLUMNS} from beton.signals where {where} and source = 'discovered'", params=params
    ).pl()


def enabled_signals(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """The enabled discovered signals with their reference counts (empty when discovery has not run)."""
    if not table_exists(con, "beton", "signals"):
        return pl.DataFrame()
    return _discovered_signals(con, "enabled")


def enabled_firings(con: duckdb.DuckDBPyConnection, signals: pl.DataFrame) -> pl.DataFrame:
    """Firings (account_id, signal_id, fired_at) of `signals`; a pair's parts are evaluated too (enabled or
    not) and then dropped."""
    part_ids = (
        signals.select(pl.concat_list("part_a_id", "part_b_id")).to_series().explode().drop_nulls().unique().to_list()
    )
    missing = sorted(set(part_ids) - set(signals["signal_id"].to_list()))
    scope = signals
    if missing:
        parts = _discovered_signals(con, "signal_id in (select unnest(?))", [missing])
        scope = pl.concat([signals, parts], how="vertical_relaxed")
    fired = signal_firings(con, scope)
    return fired.filter(pl.col("signal_id").is_in(signals["signal_id"].to_list()))
