"""The next day's run: `beton run` again on a warehouse after one more day of events arrives, against a full
run on the same data, and whether both leave the same tables (`make bench-daily`; BENCHMARKS.md, "How to run").

    .venv/bin/python benchmarks/daily.py --size 10M         # three `beton run`s of the size
    .venv/bin/python benchmarks/daily.py --size smoke       # a quick look (~54k events)

1. The split (`split_last_day`, kept under `<root>/data/<dataset>-daily/`): every table of the benchmark
   dataset as it is (linked), but the events: each part without the events of the data's last day, and that
   day's events in one more part, `events/part-zzzz-<day>.parquet`, set aside. Only events arrive with the
   day; the CRM and billing exports are the whole period's from the start. A row whose timestamp is not
   an ISO time (the demo's bad rows) stays where it was.
2. `beton run` on the split without the day: a new warehouse and Dagster home (not timed here).
3. The day's part put in `events/`, then `beton run` again on that warehouse and Dagster home: **the daily
   run**, timed stage by stage like every run of `make bench`.
4. `beton run` on the same files into a new warehouse and Dagster home: **the full run**.
5. The warehouses of 3 and 4 compared table by table (`raw.*` and `beton.*`, `compare_warehouses`; the playbook
   deliveries on the days the full run delivered: `LOGS`).

Everything lives under `<root>` (default `.bench/`): `runs/<size>-daily/` and `runs/<size>-daily-full/`
hold the warehouses; the result is `results/<UTC time>-daily.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import duckdb  # noqa: E402
import polars as pl  # noqa: E402

from benchmarks import compare_warehouses  # noqa: E402
from benchmarks.datasets import ensure_dataset  # noqa: E402
from benchmarks.run import BENCH_ROOT, GIB, SIZES, log, machine_info, run_pipeline_once, worker_timeout  # noqa: E402

DAY_PART = "part-zzzz-{day}.parquet"
"""The day's events: named to sort after every part of the dataset, as the next day's export part would."""

ISO_TIME = 'try_cast("timestamp" as timestamptz)'
"""A row's event time where it is an ISO time (epoch numbers and bad rows give NULL and stay put)."""


def split_last_day(source: Path, out: Path) -> tuple[Path, str, int]:
    """`out`: `source` without its last day of events, and that day's part (not yet in `out/events/`).

    Returns (the day's part, the day, its events). Reused while `source`'s parameters file is unchanged."""
    stamp = out / "split-of.json"
    params = (source / "bench-params.json").read_text()
    parts = sorted((source / "events").glob("*.parquet"))
    if stamp.exists() and json.loads(stamp.read_text())["params"] == params:
        info = json.loads(stamp.read_text())
        return out / "day" / DAY_PART.format(day=info["day"]), info["day"], info["events"]
    shutil.rmtree(out, ignore_errors=True)
    (out / "events").mkdir(parents=True)
    (out / "day").mkdir()
    for item in source.iterdir():
        if item.name != "events":
            (out / item.name).symlink_to(item.resolve())
    con = duckdb.connect()
    con.execute("set TimeZone = 'UTC'")
    files = [str(p) for p in parts]
    (day,) = con.execute(f"select max({ISO_TIME})::date from read_parquet(?)", [files]).fetchall()[0]
    last = f"{ISO_TIME} >= '{day}'::timestamptz"
    for part in parts:
        con.execute(
            f"copy (select * from read_parquet(?) where not coalesce({last}, false)) to '{out / 'events' / part.name}' "
            "(format parquet, compression zstd)",
            [str(part)],
        )
    day_part = out / "day" / DAY_PART.format(day=day)
    con.execute(
        f"copy (select * from read_parquet(?) where {last}) to '{day_part}' (format parquet, compression zstd)", [files]
    )
    (events,) = con.execute("select count(*) from read_parquet(?)", [str(day_part)]).fetchall()[0]
    con.close()
    stamp.write_text(json.dumps({"params": params, "day": str(day), "events": events}) + "\n")
    return day_part, str(day), events


LOGS = {"beton.playbook_actions": "day"}
"""Tables that log what each run did rather than describe the data: `beton run` delivers the playbooks of its
latest day only, so the daily warehouse also holds the run before's deliveries (for the day before). They are
compared on the days the full run wrote."""


def compare(daily: Path, full: Path) -> dict[str, list[str]]:
    """Per `raw.*` and `beton.*` table of either warehouse: the differences (empty: identical)."""
    tables: set[str] = set()
    for path in (daily, full):
        with duckdb.connect(str(path), read_only=True) as con:
            tables |= {
                f"{s}.{t}"
                for s, t in con.sql(
                    "select schema_name, table_name from duckdb_tables() where schema_name in ('raw', 'beton')"
                ).fetchall()
            }
    out = {}
    for table in sorted(tables):
        a, b = compare_warehouses.read(str(daily), table), compare_warehouses.read(str(full), table)
        if table in LOGS and a is not None and b is not None:
            a = a.filter(pl.col(LOGS[table]).is_in(b[LOGS[table]].unique().implode()))
        out[table] = (
            [f"only in the {'full' if a is None else 'daily'} run's warehouse"]
            if a is None or b is None
            else compare_warehouses.compare(b, a)
        )
    return out


def measure(label: str, root: Path) -> dict:
    spec = SIZES[label]
    source, _ = ensure_dataset(spec, root / "data", log=log)
    split = root / "data" / f"{source.name}-daily"
    day_part, day, day_events = split_last_day(source, split)
    (split / "events" / day_part.name).unlink(missing_ok=True)
    log(f"{label}: the last day {day} holds {day_events:,} events; the run before it …")
    daily_work, full_work = root / "runs" / f"{label}-daily", root / "runs" / f"{label}-daily-full"
    for work in (daily_work, full_work):
        work.mkdir(parents=True, exist_ok=True)
    timeout = worker_timeout(spec)
    before = run_pipeline_once(split, daily_work, timeout=timeout)
    shutil.copy(day_part, split / "events" / day_part.name)
    log(f"{label}: the daily run (load average {os.getloadavg()[0]:.1f}) …")
    daily = run_pipeline_once(split, daily_work, timeout=timeout, fresh=False)
    log(f"{label}: the daily run: {daily['wall_seconds']:.1f} s; the full run …")
    full = run_pipeline_once(split, full_work, timeout=timeout)
    log(f"{label}: the full run: {full['wall_seconds']:.1f} s; comparing the warehouses …")
    differences = compare(daily_work / "warehouse.duckdb", full_work / "warehouse.duckdb")
    return {
        "size": label,
        "day": day,
        "day_events": day_events,
        "before": before,
        "daily": daily,
        "full": full,
        "ratio": daily["wall_seconds"] / full["wall_seconds"],
        "differences": differences,
    }


def report(result: dict) -> str:
    daily, full = result["daily"], result["full"]
    lines = [
        f"# The next day's run, {result['size']} (day {result['day']}: {result['day_events']:,} events)",
        "",
        "| stage | daily run (s) | full run (s) |",
        "|---|---|---|",
    ]
    for stage in full["stage_seconds"]:
        lines.append(f"| {stage} | {daily['stage_seconds'].get(stage, 0.0):.1f} | {full['stage_seconds'][stage]:.1f} |")
    for step in ("raw_events", "beton_dbt_models", "lead_score_model", "signal_health", "account_scores"):
        if step in full["step_seconds"]:
            lines.append(
                f"| step `{step}` | {daily['step_seconds'].get(step, 0.0):.1f} | {full['step_seconds'][step]:.1f} |"
            )
    lines += [
        f"| **`beton run`** | **{daily['wall_seconds']:.1f}** | **{full['wall_seconds']:.1f}** |",
        f"| peak RSS (GiB) | {daily['peak_rss_bytes'] / GIB:.2f} | {full['peak_rss_bytes'] / GIB:.2f} |",
        "",
        f"Daily / full: **{result['ratio']:.0%}** (goal ≤ 10 %: {'met' if result['ratio'] <= 0.10 else '**not met**'}).",
        "",
    ]
    same = [t for t, d in result["differences"].items() if not d]
    different = {t: d for t, d in result["differences"].items() if d}
    lines.append(f"Tables identical to the full run's: {len(same)} of {len(result['differences'])}.")
    for table, problems in different.items():
        lines.append(f"- `{table}`: " + "; ".join(problems[:3]))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="10M", choices=sorted(SIZES))
    parser.add_argument("--root", type=Path, default=BENCH_ROOT)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    machine = machine_info()
    result = measure(args.size, args.root)
    text = report(result)
    out = args.root / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (out / f"{stamp}-daily.json").write_text(json.dumps({"machine": machine, **result}, indent=1, default=str) + "\n")
    (out / f"{stamp}-daily.md").write_text(text)
    print(text)
    log(f"results: {out / stamp}-daily.json and .md ({(time.perf_counter() - started) / 60:.1f} min)")
    return 0 if all(not d for d in result["differences"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
