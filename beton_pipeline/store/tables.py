"""Reading the marts into polars and writing beton's output tables, idempotently.

Every write replaces exactly the rows it owns (a partition, or one `source`) inside one transaction,
so re-running a partition or a backfill never duplicates rows.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl

from beton_pipeline.core.candidates import FeatureFrames
from beton_pipeline.warehouse import transaction

ACCOUNT_COLUMNS = """
    o.account_id, o.cohort_month, o.started_at, o.converted, o.arr, o.is_eligible,
    f.industry, f.employee_band, f.plan_interval
"""


def read_feature_frames(
    con: duckdb.DuckDBPyConnection,
    windows: tuple[int, ...],
    cohort_month: str | None = None,
    eligible_only: bool = True,
) -> FeatureFrames:
    """The discovery inputs for eligible accounts (optionally one cohort month, `YYYY-MM`)."""
    where = ["o.has_events"]
    params: list = []
    if eligible_only:
        where.append("o.is_eligible")
    if cohort_month is not None:
        where.append("strftime(o.cohort_month, '%Y-%m') = ?")
        params.append(cohort_month)
    cond = " and ".join(where)
    accounts = con.sql(
        f"select {ACCOUNT_COLUMNS} from marts.account_outcomes o join marts.account_features f using (account_id) "
        f"where {cond} order by o.account_id",
        params=params,
    ).pl()
    counts = ", ".join(f"e.n_first_{d}d" for d in windows)
    scope = f"join marts.account_outcomes o using (account_id) where {cond}"
    events = con.sql(
        f"select e.account_id, e.event_name, {counts} from marts.account_event_features e {scope}", params=params
    ).pl()
    properties = con.sql(
        f"select e.account_id, e.event_name, e.property_name, e.property_value, {counts} "
        f"from marts.account_property_features e {scope}",
        params=params,
    ).pl()
    intent = con.sql(
        f"select e.account_id, e.signal_type, e.n_before_start, e.n_before_window_end from marts.account_intent_features e {scope}",
        params=params,
    ).pl()
    return FeatureFrames(accounts=accounts, events=events, properties=properties, intent=intent)


def eligible_cohort_months(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Cohort months (`YYYY-MM`) that have at least one eligible account."""
    rows = con.sql(
        "select distinct strftime(cohort_month, '%Y-%m') from marts.account_outcomes where is_eligible order by 1"
    ).fetchall()
    return [r[0] for r in rows]


def sql_beside(module_file: str, name: str) -> str:
    """The text of the SQL file `name` in the directory of `module_file` (a store module's `__file__`).

    SQL that must stay in Python (it joins runtime lists such as the enabled signals) lives in `.sql`
    files beside its store module, so it reads, diffs and lints as SQL."""
    return (Path(module_file).parent / name).read_text(encoding="utf-8")


def as_of_time(con: duckdb.DuckDBPyConnection):
    """The run's as-of time: the marts' `as_of_at` (latest in `marts.account_outcomes`; None when empty).

    Every beton.* table stamps its rows with this, so a run's outputs agree on "now"."""
    return con.sql("select max(as_of_at) from marts.account_outcomes").fetchall()[0][0]


def replace_rows(
    con: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame, where: str, params: list | None = None
) -> None:
    """In one transaction: create `table` from `frame`'s schema if missing, delete rows matching `where`, insert `frame`."""
    schema = table.split(".")[0]
    con.execute(f"create schema if not exists {schema}")
    con.register("_beton_frame", frame.to_arrow())
    try:
        con.execute(f"create table if not exists {table} as select * from _beton_frame limit 0")
        _add_missing_columns(con, table)
        with transaction(con):
            con.execute(f"delete from {table} where {where}", params or [])
            con.execute(f"insert into {table} by name select * from _beton_frame")
    finally:
        con.unregister("_beton_frame")


def _add_missing_columns(con: duckdb.DuckDBPyConnection, table: str) -> None:
    """Columns a newer beton writes that an older table lacks are added (NULL for old rows)."""
    have = {r[0] for r in con.sql(f"describe {table}").fetchall()}
    for name, typ, *_ in con.sql("describe _beton_frame").fetchall():
        if name not in have:
            con.execute(f'alter table {table} add column "{name}" {typ}')
