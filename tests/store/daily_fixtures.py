"""A small warehouse in a real DuckDB file for the store tests of the daily tables: `marts.account_outcomes`
(and `intermediate.int_accounts`), where accounts start one a day, some convert, and each outcome window
is 60 days (the default `windows.conversion_window_days`); and a small `beton.signals`."""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl

FIRST_START = datetime(2025, 1, 1)
WINDOW_DAYS = 60
AS_OF = datetime(2025, 6, 30, 12)


def outcomes_frame(n_accounts: int = 90, converts_every: int = 4, convert_after_days: int = 10) -> pl.DataFrame:
    """Account i starts on day i; every `converts_every`-th converts `convert_after_days` later with ARR 1,000·(i+1)."""
    rows = []
    for i in range(n_accounts):
        started = FIRST_START + timedelta(days=i)
        converted = i % converts_every == 0
        converted_at = started + timedelta(days=convert_after_days) if converted else None
        window_end = started + timedelta(days=WINDOW_DAYS)
        rows.append(
            {
                "account_id": f"acc_{i:03d}",
                "started_at": started,
                "converted_at": converted_at,
                "converted": converted,
                "is_eligible": window_end <= AS_OF,
                "arr": 1000.0 * (i + 1) if converted else None,
                "outcome_window_end_at": window_end,
                "cohort_month": date(started.year, started.month, 1),
                "domain": f"acc{i}.example",
                "is_crm_company": i % 2 == 0,
                "has_events": True,
                "converted_before_start": False,
                "as_of_at": AS_OF,
            }
        )
    return pl.DataFrame(rows, schema_overrides={"converted_at": pl.Datetime("us"), "arr": pl.Float64})


def create_outcomes(path: Path, outcomes: pl.DataFrame) -> None:
    """Write `outcomes` as marts.account_outcomes and their names as intermediate.int_accounts."""
    with duckdb.connect(str(path)) as con:
        con.execute("create schema if not exists marts; create schema if not exists intermediate")
        con.register("o", outcomes.to_arrow())
        con.execute("create or replace table marts.account_outcomes as select * from o")
        con.execute(
            "create or replace table intermediate.int_accounts as select account_id, 'Company ' || account_id as company_name from o"
        )
        con.unregister("o")


@contextmanager
def outcomes_warehouse(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to a new warehouse file under `tmp_path` holding `outcomes_frame()`."""
    path = tmp_path / "warehouse.duckdb"
    create_outcomes(path, outcomes_frame())
    with duckdb.connect(str(path)) as con:
        yield con


def create_signals(con: duckdb.DuckDBPyConnection, enabled: bool) -> None:
    """beton.signals with a discovered signal and a custom one (both `enabled` or not), and a disabled one."""
    con.execute("create schema if not exists beton")
    con.execute(
        """
        create or replace table beton.signals as
        select * from (values
            ('s1', 'discovered', ?, 'event_count', 'event:invited:first_14d:>=2', 'invited ≥ 2 in 14 days', 'invited', 2),
            ('s2', 'discovered', false, 'event_count', 'event:exported:first_14d:>=1', 'exported ≥ 1 in 14 days', 'exported', 1),
            ('c1', 'custom', ?, 'condition', 'custom:c1', 'custom c1', null, null)
        ) t(signal_id, source, enabled, kind, candidate_key, definition, event, threshold)
        """,
        [enabled, enabled],
    )
    added = {
        "property": "varchar",
        "value": "varchar",
        "window_days": "integer default 14",
        "part_a_id": "varchar",
        "part_b_id": "varchar",
        "lift": "double default 2.0",
        "conversions_with": "integer default 20",
        "n_with": "integer default 100",
        "conversions_without": "integer default 50",
        "n_without": "integer default 500",
    }
    for column, kind in added.items():
        con.execute(f"alter table beton.signals add column {column} {kind}")
