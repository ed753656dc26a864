"""A small `marts.account_outcomes` (and `intermediate.int_accounts`) in a real DuckDB file, for the
store tests of the daily tables: accounts start one a day, some convert, each outcome window is 60 days
(the default `windows.conversion_window_days`)."""

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
        con.execute("create or replace table intermediate.int_accounts as select account_id, 'Company ' || account_id as company_name from o")
        con.unregister("o")
