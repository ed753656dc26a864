"""Write a copy of a demo export with one of each quirk of real exports, for an end-to-end run.

    .venv/bin/beton demo --accounts 1500 --out /tmp/demo1500
    .venv/bin/python -m tests.sources.quirky_export /tmp/demo1500 /tmp/quirky1500
    BETON_SOURCE_DIR=/tmp/quirky1500 .venv/bin/beton run

The copy holds the same rows as the demo, written as real exports write them: events as Hive-style and
date-prefixed folders of `.parquet` and `.parquet.zst` parts beside a `_SUCCESS` marker and a broken
symlink; subscriptions as a TSV with `NULL` / `\\N` for empty dates and every third monthly plan billed
quarterly (3 × the amount, `plan_interval_count` 3: the same ARR); invoices as JSON Lines that omit
null keys; deals as one pretty-printed JSON array; and three CRM people whose company is gone. A run on
it must find the same conversions and ARR as on the demo, with the three people quarantined.
"""

import json
import os
import shutil
import sys
from pathlib import Path

import duckdb

DEAL_COLUMNS = ("record_id", "company_record_id", "name", "stage", "value", "currency", "owner")
DEAL_COLUMNS += ("created_at", "closed_at", "status")


def write_quirky_copy(src: Path, out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    (out / "events/date=2025-01").mkdir(parents=True)
    (out / "events/2025-02-01").mkdir(parents=True)
    for name in ("billing_customers.jsonl", "crm_companies.csv", "crm_deal_stage_changes.csv", "intent_signals.jsonl"):
        shutil.copy(src / name, out / name)
    con = duckdb.connect()
    con.execute(f"create table ev as select *, row_number() over () as rn from read_parquet('{src}/events/*.parquet')")
    con.execute(
        f"copy (select * exclude (rn) from ev where rn % 2 = 0) to '{out}/events/date=2025-01/part-0.parquet' "
        "(format parquet)"
    )
    con.execute(
        f"copy (select * exclude (rn) from ev where rn % 2 = 1) to '{out}/events/2025-02-01/part-1.parquet.zst' "
        "(format parquet, compression zstd)"
    )
    (out / "events/_SUCCESS").write_bytes(b"")
    os.symlink(out / "nowhere.parquet", out / "events/part-9.parquet")
    con.execute(f"create table subs as select * from read_csv('{src}/billing_subscriptions.csv.gz', all_varchar=true)")
    quarterly = "plan_interval = 'month' and hash(id) % 3 = 0"
    con.execute(
        f"""copy (select id, customer, status, created, coalesce(trial_end, 'NULL') as trial_end,
            coalesce(canceled_at, '\\N') as canceled_at,
            case when {quarterly} then (plan_amount::bigint * 3)::varchar else plan_amount end as plan_amount,
            plan_interval, case when {quarterly} then '3' else 'NULL' end as plan_interval_count, currency
        from subs) to '{out}/billing_subscriptions.tsv' (format csv, delimiter '\t', header true)"""
    )
    invoices = con.sql(f"select * from read_parquet('{src}/billing_invoices.parquet')")
    with (out / "billing_invoices.jsonl").open("w") as fh:
        for row in invoices.fetchall():
            record = {c: v for c, v in zip(invoices.columns, row, strict=True) if v is not None}
            fh.write(json.dumps({c: v.isoformat() if hasattr(v, "isoformat") else v for c, v in record.items()}) + "\n")
    columns = ", ".join(f"'{c}': 'VARCHAR'" for c in DEAL_COLUMNS)
    deals = con.sql(
        f"select {', '.join(DEAL_COLUMNS)} from read_json('{src}/crm_deals.jsonl.gz', format='newline_delimited', "
        f"columns={{{columns}}})"
    ).fetchall()
    (out / "crm_deals.json").write_text(json.dumps([dict(zip(DEAL_COLUMNS, d, strict=True)) for d in deals], indent=2))
    people = (src / "crm_people.csv").read_text().rstrip("\n")
    gone = "".join(f"\nper-gone-{i},gone{i}@left-co.io,rec-deleted-{i},2025-03-01T00:00:00Z" for i in range(3))
    (out / "crm_people.csv").write_text(people + gone + "\n")


if __name__ == "__main__":
    write_quirky_copy(Path(sys.argv[1]), Path(sys.argv[2]))
