"""Compare beton's output tables in two warehouses, row by row (a refactor must leave them identical).

    python benchmarks/compare_warehouses.py BEFORE.duckdb AFTER.duckdb [--table beton.signals ...]

Every beton.* table of either warehouse (or the --table ones) is compared; every column except run
timestamps and durations (`VOLATILE`) is compared after
sorting by all compared columns; floats must agree to 1e-12 (relative) or be both null/NaN.
Exit status 0 when every table is identical, 1 otherwise (the differences are printed).
"""

from __future__ import annotations

import argparse
import sys

import duckdb
import numpy as np
import polars as pl

VOLATILE = {
    "computed_at",
    "created_at",
    "updated_at",
    "run_id",
    "claimed_at",
    "attempted_at",
    "planned_at",
    "quarantined_at",
    "loaded_at",
    "trained_at",
    "next_attempt_at",
    "sent_at",
    "finished_at",
    "started_at",
    "fit_seconds",
    "duration_ms",
    "ingested_at",
    "created_run_id",
    "last_run_id",
}
"""Columns that record when or how long something ran: they differ between two runs of the same code."""


def beton_tables(path: str) -> set[str]:
    with duckdb.connect(path, read_only=True) as con:
        return {
            r[0]
            for r in con.sql(
                "select schema_name || '.' || table_name from duckdb_tables() where schema_name = 'beton'"
            ).fetchall()
        }


def read(path: str, table: str) -> pl.DataFrame | None:
    with duckdb.connect(path, read_only=True) as con:
        schema, name = table.split(".")
        exists = con.sql(
            "select count(*) from information_schema.tables where table_schema = $1 and table_name = $2",
            params=[schema, name],
        ).fetchall()[0][0]
        return con.sql(f"select * from {table}").pl() if exists else None


def compare(
    before: pl.DataFrame, after: pl.DataFrame, rtol: float = 1e-12, ignore: frozenset[str] | set[str] = VOLATILE
) -> list[str]:
    """What differs between two tables: every column but `ignore`, after sorting by all of them; floats to `rtol`
    (relative) or both null/NaN. Empty when they are the same."""
    problems = []
    if set(before.columns) != set(after.columns):
        problems.append(
            f"columns differ: only before {sorted(set(before.columns) - set(after.columns))}, only after {sorted(set(after.columns) - set(before.columns))}"
        )
    columns = [c for c in before.columns if c in after.columns and c not in ignore]
    if before.height != after.height:
        problems.append(f"rows: {before.height} before, {after.height} after")
        return problems
    sortable = [c for c in columns if not isinstance(before.schema[c], (pl.List, pl.Struct, pl.Object))]
    a = before.select(columns).sort(sortable, nulls_last=True)
    b = after.select(columns).sort(sortable, nulls_last=True)
    for c in columns:
        x, y = a[c], b[c]
        if x.dtype.is_float() and y.dtype.is_float():
            xv, yv = x.to_numpy(), y.to_numpy()
            both_nan = np.isnan(xv) & np.isnan(yv)
            close = np.isclose(xv, yv, rtol=rtol, atol=0.0) | both_nan
            if not close.all():
                i = int(np.argmin(close))
                problems.append(f"{c}: {int((~close).sum())} value(s) differ, e.g. {xv[i]!r} vs {yv[i]!r}")
        elif not x.equals(y, check_names=False):
            diff = pl.DataFrame({"before": x.cast(pl.String), "after": y.cast(pl.String)}).filter(
                pl.col("before").ne_missing(pl.col("after"))
            )
            problems.append(f"{c}: {diff.height} value(s) differ, e.g. {diff.row(0)}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--table", action="append", dest="tables")
    args = parser.parse_args()
    same = True
    for table in args.tables or sorted(beton_tables(args.before) | beton_tables(args.after)):
        before, after = read(args.before, table), read(args.after, table)
        if before is None and after is None:
            print(f"{table}: in neither warehouse")
            continue
        if before is None or after is None:
            print(f"{table}: only in the {'after' if before is None else 'before'} warehouse")
            same = False
            continue
        problems = compare(before, after)
        print(f"{table}: {before.height} rows, " + ("identical" if not problems else "DIFFERENT"))
        for p in problems:
            print(f"  - {p}")
        same &= not problems
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
