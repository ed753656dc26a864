"""Time one table's ingest (`sources.ingest.ingest_table`) alone, and compare two ingest versions' output.

    # seconds and peak RSS of ingesting the events of a source directory into a fresh warehouse file
    /usr/bin/time -v .venv/bin/python benchmarks/ingest_table.py time SOURCE_DIR --warehouse /tmp/w.duckdb

    # the same with an older copy of sources/ingest.py (e.g. `git show main:beton_pipeline/sources/ingest.py`)
    /usr/bin/time -v .venv/bin/python benchmarks/ingest_table.py time SOURCE_DIR --warehouse /tmp/old.duckdb \
        --ingest-module /tmp/ingest_main.py

    # the raw tables and the quarantine of two warehouses written by `time`: equal as multisets?
    .venv/bin/python benchmarks/ingest_table.py compare /tmp/old.duckdb /tmp/w.duckdb

    # a source directory of events with planted bad rows of every reason, in CSV, CSV.gz, JSONL and Parquet parts
    .venv/bin/python benchmarks/ingest_table.py planted /tmp/planted

`time` ingests the tables named by `--tables` (default: events) in contract order, each into a fresh
warehouse file, and prints one JSON line per table: seconds, rows read / loaded / quarantined / exact
duplicates. `compare` prints, per raw table and for the quarantine (without `ingested_at`), the rows
only in the first warehouse and only in the second, and exits 1 when any differ.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import duckdb  # noqa: E402

from beton_pipeline.sources.contract import TABLES, TABLES_BY_NAME  # noqa: E402


def _ingest_module(path: str | None):
    if path is None:
        from beton_pipeline.sources import ingest

        return ingest
    spec = importlib.util.spec_from_file_location("_beton_ingest_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def run_time(args: argparse.Namespace) -> int:
    ingest = _ingest_module(args.ingest_module)
    warehouse = Path(args.warehouse)
    for p in (warehouse, warehouse.with_name(warehouse.name + ".wal")):
        p.unlink(missing_ok=True)
    wanted = [spec.name for spec in TABLES] if args.tables == "all" else args.tables.split(",")
    con = duckdb.connect(str(warehouse))
    con.execute("set TimeZone = 'UTC'")
    if args.memory_limit:
        con.execute(f"set memory_limit = '{args.memory_limit}'")
    if args.preserve_insertion_order is not None:
        con.execute(f"set preserve_insertion_order = {args.preserve_insertion_order}")
    for spec in TABLES:
        if spec.name not in wanted:
            continue
        start = time.perf_counter()
        chunking = {} if args.max_chunk_bytes is None else {"max_chunk_bytes": args.max_chunk_bytes}
        r = ingest.ingest_table(con, Path(args.source_dir), TABLES_BY_NAME[spec.name], **chunking)
        seconds = time.perf_counter() - start
        print(
            json.dumps(
                {
                    "table": spec.name,
                    "seconds": round(seconds, 2),
                    "rows_read": r.rows_read,
                    "rows_loaded": r.rows_loaded,
                    "rows_quarantined": r.rows_quarantined,
                    "exact_duplicates_dropped": r.exact_duplicates_dropped,
                    "balanced": r.balanced,
                    "quarantine_reasons": r.quarantine_reasons,
                }
            ),
            flush=True,
        )
    con.close()
    return 0


def _diff(con: duckdb.DuckDBPyConnection, a: str, b: str) -> tuple[int, int]:
    only_a = con.sql(f"select count(*) from (select * from {a} except all select * from {b})").fetchall()[0][0]
    only_b = con.sql(f"select count(*) from (select * from {b} except all select * from {a})").fetchall()[0][0]
    return only_a, only_b


def run_compare(args: argparse.Namespace) -> int:
    con = duckdb.connect()
    con.execute(f"attach '{args.first}' as a (read_only); attach '{args.second}' as b (read_only)")
    differ = False
    names = [
        r[0]
        for r in con.sql(
            "select table_name from duckdb_tables() where database_name = 'a' and schema_name = 'raw' order by 1"
        ).fetchall()
    ]
    for name in names:
        n = con.sql(f"select count(*) from a.raw.{name}").fetchall()[0][0]
        only_a, only_b = _diff(con, f"a.raw.{name}", f"b.raw.{name}")
        differ |= bool(only_a or only_b)
        print(f"raw.{name}: {n} rows; only in first {only_a}, only in second {only_b}")
    q = "select source_table, source_file, line_number, raw_row, reason from {}.beton.quarantine"
    n = con.sql("select count(*) from a.beton.quarantine").fetchall()[0][0]
    only_a, only_b = _diff(con, f"({q.format('a')})", f"({q.format('b')})")
    differ |= bool(only_a or only_b)
    print(f"beton.quarantine: {n} rows; only in first {only_a}, only in second {only_b}")
    return 1 if differ else 0


PLANTED_POOLS = {
    "uuid": ["u" + str(i) for i in range(40)] + ["", None, "  "],
    "event": ["signup", "login", "", None],
    "timestamp": [
        "2025-02-01T09:00:00Z",
        "2025-02-01 10:00:00+02:00",
        " 2025-03-01T00:00:00-05:30 ",
        "2025-02-01T09:00:00",
        "1738400000",
        "1738400000.5",
        "1738400000000",
        "not a date",
        "1980-01-01",
        "2999-01-01",
        "",
        None,
    ],
    "distinct_id": ["d1", "d2", "a@b.example", "", None],
    "properties": ['{"a": 1}', '{"a":1}', ' {"b": [1, 2]} ', "[1,2]", '"text"', "null", "{bad", "", None],
    "person_properties": ['{"email": "a@b.example"}', "[1]", "{bad", "", None],
}
"""Values of each events column, good and bad: drawn at random so that exact duplicates, repeated keys
and invalid first rows collide (every row reason of the events, epoch and zone-offset timestamps)."""


def run_planted(args: argparse.Namespace) -> int:
    import csv
    import gzip
    import io
    import random

    import polars as pl

    rng = random.Random(args.seed)
    rows = [{c: rng.choice(pool) for c, pool in PLANTED_POOLS.items()} for _ in range(args.rows)]
    rows += rows[: args.rows // 10]  # exact duplicates, within and across parts
    rows.append({**rows[0], "uuid": "huge", "properties": '{"blob": "' + "x" * 1_100_000 + '"}'})
    rng.shuffle(rows)
    parts = [rows[i::4] for i in range(4)]
    out = Path(args.out_dir) / "events"
    out.mkdir(parents=True, exist_ok=True)

    def csv_text(part: list[dict]) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(PLANTED_POOLS))
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in part)
        return buf.getvalue()

    (out / "part-1.csv").write_text(csv_text(parts[0]))
    (out / "part-2.csv.gz").write_bytes(gzip.compress(csv_text(parts[1]).encode()))
    (out / "part-3.jsonl").write_text(
        "".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in parts[2])
    )
    pl.DataFrame(parts[3], schema=dict.fromkeys(PLANTED_POOLS, pl.Utf8)).write_parquet(out / "part-4.parquet")
    print(f"{len(rows)} event rows in 4 parts under {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("time", help="ingest tables of a source directory into a fresh warehouse file")
    t.add_argument("source_dir")
    t.add_argument("--warehouse", required=True)
    t.add_argument("--tables", default="events", help="comma-separated table names, or all (default: events)")
    t.add_argument("--ingest-module", help="path of another copy of sources/ingest.py to run instead")
    t.add_argument("--memory-limit", help="DuckDB memory_limit of the connection (e.g. 1GB); spills to <warehouse>.tmp")
    t.add_argument(
        "--max-chunk-bytes", type=int, help="ingest.max_chunk_bytes (default: the module's; not for an older copy)"
    )
    t.add_argument("--preserve-insertion-order", choices=["true", "false"], help="DuckDB setting of the connection")
    c = sub.add_parser("compare", help="compare the raw tables and quarantine of two warehouses")
    c.add_argument("first")
    c.add_argument("second")
    pl_ = sub.add_parser("planted", help="write events with planted bad rows of every reason")
    pl_.add_argument("out_dir")
    pl_.add_argument("--rows", type=int, default=3000)
    pl_.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    return {"time": run_time, "compare": run_compare, "planted": run_planted}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
