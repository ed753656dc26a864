"""Ingest: every contract format loads the same rows; bad rows are quarantined with reasons; counts balance."""

import gzip
import json
import shutil
from pathlib import Path

import duckdb
import pytest

from beton_pipeline.sources.contract import TABLES, TABLES_BY_NAME
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
