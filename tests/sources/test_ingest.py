"""Ingest: every contract format loads the same rows; bad rows are quarantined with reasons; counts balance."""

import gzip
import json
import shutil
from pathlib import Path

import duckdb
import pytest

from beton_pipeline.sources.contract import TABLES, TABLES_BY_NAME
from beton_pipeline.sources.files import table_files
from beton_pipeline.sources.ingest import SourceError, find_table_files, ingest_table

FIXTURE = Path(__file__).parent.parent / "fixtures" / "contract_dir"


def ingest_all(source_dir: Path) -> tuple[duckdb.DuckDBPyConnection, dict]:
    con = duckdb.connect()
    results = {spec.name: ingest_table(con, source_dir, spec) for spec in TABLES}
    return con, results


def test_fixture_loads_with_reasons_and_balanced_counts():
    con, results = ingest_all(FIXTURE)
    for result in results.values():
        assert result.balanced, result
    events = results["events"]
    assert (events.rows_read, events.rows_loaded, events.exact_duplicates_dropped) == (12, 7, 1)
    reasons = dict(
        con.sql("select reason, count(*) from beton.quarantine where source_table = 'events' group by 1").fetchall()
    )
    assert reasons == {
        "timestamp is empty": 1,
        "duplicate uuid: an earlier row with the same key was kept (first wins)": 1,
        "properties: malformed JSON": 1,
        "malformed JSON line": 1,
    }
    # First wins: e-001 keeps its first content ($identify), the later dashboard_viewed copy is quarantined.
    assert con.sql("select event from raw.raw_events where uuid = 'e-001'").fetchall() == [("$identify",)]
    invoices = results["billing_invoices"]
    assert invoices.rows_quarantined == 2
    assert "amount_paid: below 0" in invoices.quarantine_reasons


def test_timestamps_in_every_style_become_utc():
    con, _ = ingest_all(FIXTURE)
    got = dict(con.sql("select uuid, timestamp::varchar from raw.raw_events").fetchall())
    assert got["e-001"] == "2025-02-01 09:00:00"  # ISO with Z
    assert got["e-003"] == "2025-02-01 10:20:00"  # epoch seconds
    assert got["e-004"] == "2025-02-02 10:00:00"  # no zone means UTC
    assert got["e-005"] == "2025-02-03 09:00:00"  # +01:00 offset
    assert con.sql("select domain from raw.raw_crm_companies where record_id = 'rec-acme'").fetchall() == [("acme.io",)]


def _rewrite(source: Path, target: Path, fmt: str) -> None:
    """Write every fixture table in one format (via DuckDB), to show each loads identically."""
    target.mkdir(parents=True, exist_ok=True)
    con, _ = ingest_all(source)
    for spec in TABLES:
        cols = ", ".join(f'"{c}"' for c in spec.column_names)
        rel = f"(select {cols} from {spec.raw_table} order by _source_file, _line_number)"
        if fmt == "parquet":
            con.execute(f"copy {rel} to '{target / (spec.name + '.parquet')}' (format parquet)")
        elif fmt == "csv.gz":
            con.execute(
                f"copy {rel} to '{target / (spec.name + '.csv.gz')}' (format csv, header true, compression gzip)"
            )
        elif fmt == "jsonl.gz":
            rows = con.sql(f"select * from {rel}").fetchall()
            with gzip.open(target / f"{spec.name}.jsonl.gz", "wt") as fh:
                for row in rows:
                    record = {
                        c: (v.isoformat() if hasattr(v, "isoformat") else v)
                        for c, v in zip(spec.column_names, row, strict=True)
                    }
                    for c in spec.columns:
                        if c.kind == "json" and record[c.name] is not None:
                            record[c.name] = json.loads(record[c.name])  # a real JSON object, as JSONL exports write it
                    fh.write(json.dumps(record) + "\n")


@pytest.mark.parametrize("fmt", ["parquet", "csv.gz", "jsonl.gz"])
def test_every_format_loads_the_same_rows(tmp_path, fmt):
    _rewrite(FIXTURE, tmp_path, fmt)
    con_a, _ = ingest_all(FIXTURE)
    con_b, results = ingest_all(tmp_path)
    for spec in TABLES:
        cols = ", ".join(f'"{c}"' for c in spec.column_names)
        a = sorted(map(str, con_a.sql(f"select {cols} from {spec.raw_table}").fetchall()))
        b = sorted(map(str, con_b.sql(f"select {cols} from {spec.raw_table}").fetchall()))
        assert a == b, spec.name
        assert results[spec.name].rows_quarantined == 0


def test_split_parts_are_all_read(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "src")
    lines = (tmp_path / "src/events/part-0001.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "src/events/part-0001.jsonl").write_text("".join(lines[:6]))
    (tmp_path / "src/events/part-0002.jsonl").write_text("".join(lines[6:]))
    assert len(find_table_files(tmp_path / "src", "events")) == 2
    con, results = ingest_all(tmp_path / "src")
    assert results["events"].rows_loaded == 7 and results["events"].balanced


def test_missing_required_table_names_the_table(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "src")
    (tmp_path / "src/crm_people.csv").unlink()
    with pytest.raises(SourceError, match="required table 'crm_people' not found"):
        ingest_table(duckdb.connect(), tmp_path / "src", TABLES_BY_NAME["crm_people"])


def test_missing_optional_table_gives_an_empty_table(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "src")
    (tmp_path / "src/crm_deals.jsonl").unlink()
    con = duckdb.connect()
    result = ingest_table(con, tmp_path / "src", TABLES_BY_NAME["crm_deals"])
    assert result.rows_loaded == 0 and con.sql("select count(*) from raw.raw_crm_deals").fetchall() == [(0,)]


def test_missing_required_column_names_file_and_column(tmp_path):
    (tmp_path / "crm_people.csv").write_text("record_id,company_record_id,created_at\np1,c1,2025-01-01\n")
    with pytest.raises(SourceError, match=r"crm_people.csv: missing required column\(s\) email"):
        ingest_table(duckdb.connect(), tmp_path, TABLES_BY_NAME["crm_people"])


def test_zero_byte_file_is_a_clear_error(tmp_path):
    (tmp_path / "crm_people.csv").write_bytes(b"")
    with pytest.raises(SourceError, match="file is empty"):
        ingest_table(duckdb.connect(), tmp_path, TABLES_BY_NAME["crm_people"])


def test_reingest_replaces_rows_and_quarantine(tmp_path):
    con = duckdb.connect()
    for _ in range(3):
        for spec in TABLES:
            ingest_table(con, FIXTURE, spec)
    assert con.sql("select count(*) from raw.raw_events").fetchall() == [(7,)]
    assert con.sql("select count(*) from beton.quarantine where source_table = 'events'").fetchall() == [(4,)]


# --- Quirks of real exports: where the files are and what they are named --------------------------
def _events_copy(tmp_path: Path) -> tuple[Path, duckdb.DuckDBPyConnection]:
    """A copy of the fixture, and a connection holding its loaded events (to write them in other layouts)."""
    src = tmp_path / "src"
    shutil.copytree(FIXTURE, src)
    con = duckdb.connect()
    ingest_table(con, src, TABLES_BY_NAME["events"])
    return src, con


EVENT_COLUMNS = "uuid, event, timestamp::varchar as timestamp, distinct_id, properties, person_properties"


def test_posthog_parts_hive_folders_and_zst_are_all_read_and_the_rest_listed_as_skipped(tmp_path):
    src, con = _events_copy(tmp_path)
    (src / "events/part-0001.jsonl").unlink()
    con.execute(f"create table expected as select {EVENT_COLUMNS} from raw.raw_events order by uuid")
    rows = "(from expected order by uuid)"
    # Older parts as .parquet, newer ones as PostHog writes them with zstd (.parquet.zst), in Hive and
    # date-prefixed sub-folders, beside marker files, a spreadsheet and a broken symlink.
    (src / "events/date=2025-01").mkdir()
    (src / "events/2025-02-03").mkdir()
    con.execute(f"copy (from {rows} limit 3) to '{src}/events/date=2025-01/part-0.parquet' (format parquet)")
    con.execute(
        f"copy (from {rows} offset 3 limit 2) to '{src}/events/2025-02-03/part-1.parquet.zst' "
        "(format parquet, compression zstd)"
    )
    con.execute(
        f"copy (from {rows} offset 5) to '{src}/events/part-2.csv.zst' (format csv, header true, compression zstd)"
    )
    (src / "events/_SUCCESS").write_bytes(b"")
    (src / "events/notes.xlsx").write_bytes(b"PK")
    (src / "events/part-3.parquet").symlink_to(tmp_path / "gone.parquet")
    found = table_files(src, "events")
    assert [p.relative_to(src).as_posix() for p in found.read] == [
        "events/part-2.csv.zst",
        "events/2025-02-03/part-1.parquet.zst",
        "events/date=2025-01/part-0.parquet",
    ]
    reasons = {p.name: reason for p, reason in found.skipped}
    assert reasons["_SUCCESS"] == "hidden or marker file (name starts with '.' or '_')"
    assert reasons["notes.xlsx"].startswith("unsupported file type (read are: .parquet, .parquet.zst, .csv")
    assert reasons["part-3.parquet"] == f"broken symlink (points to {tmp_path / 'gone.parquet'}, which does not exist)"
    assert len(found.skipped) == 3

    result = ingest_table(con, src, TABLES_BY_NAME["events"])
    assert (result.rows_read, result.rows_loaded, result.rows_quarantined) == (7, 7, 0)
    assert result.skipped_files == tuple(found.skipped_text)
    loaded = f"select {EVENT_COLUMNS} from raw.raw_events"
    assert sorted(con.sql(loaded).fetchall()) == sorted(con.sql("from expected").fetchall())


def test_optional_tables_as_json_tsv_and_csv_gz_and_zst(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIXTURE, src)
    deals = [json.loads(line) for line in (src / "crm_deals.jsonl").read_text().splitlines() if line.strip()]
    (src / "crm_deals.jsonl").unlink()
    (src / "crm_deals.json").write_text(json.dumps(deals, indent=2))  # a pretty-printed JSON array
    stages = (src / "crm_deal_stage_changes.csv").read_text()
    (src / "crm_deal_stage_changes.csv").unlink()
    (src / "crm_deal_stage_changes.tsv").write_text(stages.replace(",", "\t"))
    intent = (src / "intent_signals.csv").read_bytes()
    (src / "intent_signals.csv").unlink()
    con = duckdb.connect()
    con.execute(
        f"copy (select * from read_csv('{FIXTURE}/intent_signals.csv', all_varchar=true)) "
        f"to '{src}/intent_signals.csv.zst' (format csv, header true, compression zstd)"
    )
    con_a, before = ingest_all(FIXTURE)
    con_b, after = ingest_all(src)
    for table in ("crm_deals", "crm_deal_stage_changes", "intent_signals"):
        spec = TABLES_BY_NAME[table]
        cols = ", ".join(f'"{c}"' for c in spec.column_names)
        a = sorted(map(str, con_a.sql(f"select {cols} from {spec.raw_table}").fetchall()))
        b = sorted(map(str, con_b.sql(f"select {cols} from {spec.raw_table}").fetchall()))
        assert a == b and a, table
        assert after[table].rows_read == before[table].rows_read and after[table].balanced
    assert intent  # the fixture's intent table was not empty


def test_a_zstd_stream_around_parquet_is_refused_with_what_to_do(tmp_path):
    src, con = _events_copy(tmp_path)
    (src / "events/part-0001.jsonl").unlink()
    con.execute(
        f"copy (select {EVENT_COLUMNS} from raw.raw_events) to '{tmp_path}/x.csv.zst' (format csv, compression zstd)"
    )
    (tmp_path / "x.csv.zst").rename(src / "events/part-0.parquet.zst")
    with pytest.raises(SourceError) as raised:
        ingest_table(con, src, TABLES_BY_NAME["events"])
    assert str(raised.value) == (
        f"{src}/events/part-0.parquet.zst: a zstd stream around the file, not a Parquet file with zstd pages as "
        "PostHog writes; decompress it (zstd -d) and name it .parquet"
    )


def test_a_table_of_skipped_files_only_is_not_found_and_says_why(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIXTURE, src)
    (src / "crm_people.csv").rename(src / "crm_people.xlsx")
    with pytest.raises(SourceError) as raised:
        ingest_table(duckdb.connect(), src, TABLES_BY_NAME["crm_people"])
    assert f"skipped: {src}/crm_people.xlsx: unsupported file type" in str(raised.value)


# --- Dangling references: quarantined with the value and the table named, counts balance -----------
def test_dangling_references_are_quarantined_with_their_reason(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIXTURE, src)
    with (src / "crm_people.csv").open("a") as fh:
        fh.write("\nper-gone,gone@left.io,rec-deleted,2025-01-10T00:00:00Z\nper-none,solo@free.io,,2025-01-10\n")
    with (src / "billing_subscriptions.csv").open("a") as fh:
        fh.write("sub_9,cus_9,active,1738400000,,,4900,month,usd\n")
    with (src / "crm_deals.jsonl").open("a") as fh:
        fh.write(
            '{"record_id": "deal-9", "company_record_id": "rec-deleted", "stage": "won", "value": 9000, '
            '"currency": "usd", "created_at": "2025-02-02", "closed_at": "2025-02-20", "status": "won"}\n'
        )
    with (src / "billing_invoices.csv").open("a") as fh:
        fh.write("in_9,cus_9,sub_9,paid,4900,usd,1739609600,1739610000\n")
    con, results = ingest_all(src)
    reasons = dict(
        con.sql(
            "select source_table || ' ' || reason, line_number from beton.quarantine "
            "where reason like '%dangling reference%'"
        ).fetchall()
    )
    assert reasons == {
        "crm_people company_record_id: not in crm_companies (dangling reference): rec-deleted": 4,
        "billing_subscriptions customer: not in billing_customers (dangling reference): cus_9": 4,
        "billing_invoices customer: not in billing_customers (dangling reference): cus_9": 6,
        "crm_deals company_record_id: not in crm_companies (dangling reference): rec-deleted": 2,
    }
    people = results["crm_people"]
    assert (people.rows_read, people.rows_loaded, people.rows_quarantined) == (4, 3, 1) and people.balanced
    assert people.quarantine_reasons["company_record_id: not in crm_companies (dangling reference)"] == 1
    assert all(results[t].balanced for t in ("billing_subscriptions", "billing_invoices", "crm_deals"))
    assert all(not r.unchecked_references for r in results.values())


def test_references_are_unchecked_and_said_so_when_the_referenced_table_is_not_loaded(tmp_path):
    con = duckdb.connect()
    result = ingest_table(con, FIXTURE, TABLES_BY_NAME["billing_invoices"])
    assert result.unchecked_references == ("customer → billing_customers.id",)
