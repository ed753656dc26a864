"""The daily tables (beton.signal_health, beton.account_scores, beton.revenue_metrics): which days the
data can speak for, and replacing exactly a set of days' rows (one daily partition per day)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta

import duckdb
import polars as pl

from beton_pipeline.store.tables import replace_rows
from beton_pipeline.warehouse import table_exists


def data_days(con: duckdb.DuckDBPyConnection) -> tuple[date, date] | None:
    """The first day an outcome window closed and the as-of day: the days monitoring can speak for
    (None when no account with events has both)."""
    row = con.sql(
        "select min(outcome_window_end_at)::date, max(as_of_at)::date from marts.account_outcomes where has_events"
    ).fetchall()[0]
    if row[0] is None or row[1] is None or row[0] > row[1]:
        return None
    return row[0], row[1]


def clamp_days(keys: Iterable[str], bounds: tuple[date, date] | None) -> list[date]:
    """Partition keys (`YYYY-MM-DD`) as dates, keeping only days within `bounds` (none without bounds)."""
    if bounds is None:
        return []
    lo, hi = bounds
    out = [datetime.strptime(k, "%Y-%m-%d").date() for k in keys]
    return [d for d in out if lo <= d <= hi]


def partition_days(con: duckdb.DuckDBPyConnection, keys: Iterable[str]) -> list[date]:
    """The days of partition `keys` the warehouse's data covers (`clamp_days` over `data_days`)."""
    return clamp_days(keys, data_days(con))


def monitoring_day_keys(bounds: tuple[date, date] | None, start: date) -> list[str]:
    """The daily partition keys (`YYYY-MM-DD`) monitoring has: every day from the later of `start`
    (`monitoring.start_date`) and the first data day through the as-of day, in order (none without data)."""
    if bounds is None:
        return []
    first, last = max(bounds[0], start), bounds[1]
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def write_days(
    con: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame, days: list[date], create_empty: bool = False
) -> None:
    """Replace exactly the rows of `days` in `table` with `frame`, in one transaction (creates `table`
    from `frame` when missing; for an empty frame and no table, nothing unless `create_empty`). Days between
    them that were not computed (a run over a few scattered partitions) keep their rows."""
    if frame.is_empty() and not create_empty and not table_exists(con, *table.split(".")):
        return
    replace_rows(con, table, frame, "list_contains(?::date[], day)", [sorted(days)])
