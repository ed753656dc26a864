"""The incremental ingest (`ingest.incremental`): reading only the files added since the last ingest gives
the same raw table, quarantine and counts as reading every file into a new warehouse; whenever it could
not (a file read before changed or is gone, a new file sorting before the ones read, other rules, another
source directory, a referenced table loaded again), the ingest is full and says why."""

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beton_pipeline.settings import IngestSettings
from beton_pipeline.sources import ingest
from beton_pipeline.sources.contract import TABLES_BY_NAME
from beton_pipeline.sources.ingest import SourceError, ingest_table, read_ingest_state
from beton_pipeline.warehouse import STATE_SCHEMA
from tests.sources.test_ingest_chunks import EVENTS, INVOICES, ONE_FILE_PER_CHUNK, _part_path, _write_part
from tests.sources.test_ingest_rows import RECORDS

COMPANIES, PEOPLE = TABLES_BY_NAME["crm_companies"], TABLES_BY_NAME["crm_people"]
GOOD = {"uuid": "u1", "event": "signup", "timestamp": "2025-02-01T09:00:00Z", "distinct_id": "d"}


def _tables(con: duckdb.DuckDBPyConnection, spec=EVENTS) -> tuple[list, list]:
    """The raw table and the table's quarantine (without the ingest time), in a stable order."""
    raw = con.sql(f"select * from {spec.raw_table} order by _source_file, _line_number").fetchall()
    quarantine = con.execute(
        "select source_file, line_number, raw_row, reason from beton.quarantine where source_table = ? order by 1, 2, 4",
        [spec.name],
    ).fetchall()
    return raw, quarantine


def _counts(result: ingest.IngestResult) -> tuple:
    return (
        result.files,
        result.rows_read,
        result.rows_loaded,
        result.rows_quarantined,
        result.exact_duplicates_dropped,
        result.ignored_columns,
        result.quarantine_reasons,
        result.unchecked_references,
    )


def _full(src: Path, spec=EVENTS, before=()) -> tuple:
    """Every file read into a new warehouse (after `before`, the referenced tables): counts and tables."""
    con = duckdb.connect()
    for other in before:
        ingest_table(con, src, other)
    result = ingest_table(con, src, spec)
    out = (_counts(result), _tables(con, spec))
    con.close()
    return out


PARTS = st.lists(
    st.tuples(RECORDS, st.sampled_from(["jsonl", "csv", "parquet"]), st.booleans()), min_size=2, max_size=5
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=PARTS, data=st.data())
def test_adding_files_one_ingest_at_a_time_gives_the_table_of_one_full_ingest(tmp_path_factory, parts, data):
    """Parts drawn from small pools (exact duplicates, repeated keys and bad rows cross file boundaries),
    written in a few batches with an incremental ingest after each, and once more with nothing new: the
    last ingest's counts, raw table and quarantine equal those of one full ingest of every part."""
    src = tmp_path_factory.mktemp("src")
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(parts) - 1), max_size=3), label="cuts")))
    batches = [parts[a:b] for a, b in zip([0, *cuts], [*cuts, len(parts)], strict=True)]
    budget = data.draw(st.sampled_from([ONE_FILE_PER_CHUNK, 10**15]), label="max_chunk_bytes")
    con = duckdb.connect()
    written = 0
    for n, batch in enumerate(batches):
        for records, fmt, garbage in batch:
            _write_part(_part_path(src, written, fmt), fmt, records, garbage and fmt != "parquet")
            written += 1
        result = ingest_table(con, src, EVENTS, max_chunk_bytes=budget, incremental=True)
        assert result.mode == ("full" if n == 0 else "incremental"), result.mode_reason
        assert len(result.files_read) == (written if n == 0 else len(batch))
        assert result.balanced
    again = ingest_table(con, src, EVENTS, max_chunk_bytes=budget, incremental=True)
    assert (again.mode, again.files_read) == ("unchanged", ())
    assert _counts(again) == _counts(result)
    assert (_counts(result), _tables(con)) == _full(src)
    temp_left = con.sql("select table_name from duckdb_tables() where temporary").fetchall()
    assert temp_left == []


def _two_parts(src: Path) -> duckdb.DuckDBPyConnection:
    """Parts 00 and 02 ingested incrementally into a new warehouse."""
    _write_part(_part_path(src, 0, "jsonl"), "jsonl", [GOOD, {**GOOD, "uuid": ""}], garbage=False)
    _write_part(_part_path(src, 2, "jsonl"), "jsonl", [{**GOOD, "uuid": "u2"}, GOOD], garbage=False)
    con = duckdb.connect()
    assert ingest_table(con, src, EVENTS, incremental=True).mode == "full"
    return con


@pytest.mark.parametrize(
    "change, reason",
    [
        ("rewrite", "changed since it was read"),
        ("remove", "read before, is gone"),
        ("earlier", "sorts before"),
        ("rules", "the ingest rules changed"),
        ("state", "no earlier load kept its state"),
        ("hashes", "kept hashes are missing"),
    ],
)
def test_whatever_an_incremental_ingest_could_not_reproduce_makes_it_full(tmp_path, monkeypatch, change, reason):
    """Each change that could make the appended rows differ from those of a full ingest: the ingest reads
    every file again, says why, and gives the full ingest's table."""
    con = _two_parts(tmp_path)
    first = _part_path(tmp_path, 0, "jsonl")
    if change == "rewrite":  # same name, size and modification time, other content (a uuid changed)
        before = first.stat()
        first.write_text(first.read_text().replace('"u1"', '"u7"', 1))
        os.utime(first, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert first.stat().st_size == before.st_size
    elif change == "remove":
        first.unlink()
    elif change == "earlier":  # a new part named to sort between the two read before
        _write_part(_part_path(tmp_path, 1, "jsonl"), "jsonl", [{**GOOD, "uuid": "u3"}], garbage=False)
    elif change == "rules":
        monkeypatch.setattr(ingest, "ingest_rules", lambda spec: "another version")
    elif change == "state":
        con.execute(f"delete from {STATE_SCHEMA}.ingest_files")
    elif change == "hashes":
        con.execute(f'drop table {STATE_SCHEMA}."ingest_rows__events"')
    _write_part(_part_path(tmp_path, 4, "jsonl"), "jsonl", [{**GOOD, "uuid": "u4"}, GOOD], garbage=False)
    result = ingest_table(con, tmp_path, EVENTS, incremental=True)
    assert result.mode == "full"
    assert reason in result.mode_reason
    assert (_counts(result), _tables(con)) == _full(tmp_path)


def test_another_source_directory_makes_it_full(tmp_path):
    con = _two_parts(tmp_path / "a")
    (tmp_path / "a").rename(tmp_path / "b")
    result = ingest_table(con, tmp_path / "b", EVENTS, incremental=True)
    assert (result.mode, result.rows_loaded) == ("full", 2)
    assert "the source directory changed" in result.mode_reason


def test_turning_it_off_reads_every_file_and_drops_what_was_kept(tmp_path):
    con = _two_parts(tmp_path)
    result = ingest_table(con, tmp_path, EVENTS, incremental=False)
    assert (result.mode, len(result.files_read)) == ("full", 2)
    assert read_ingest_state(con, "events") is None
    kept = con.sql(f"select table_name from duckdb_tables() where schema_name = '{STATE_SCHEMA}'").fetchall()
    assert kept == [("ingest_files",)]
    assert ingest_table(con, tmp_path, EVENTS, incremental=True).mode == "full"  # nothing to continue from


def test_a_referenced_table_loaded_again_makes_the_referring_table_full(tmp_path):
    """People refer to companies: a person whose company is missing is quarantined as dangling. When a
    new companies part brings the company, the people table is ingested in full, and the person loads,
    as in a full ingest of both tables; with no change to the companies, people are read incrementally."""
    company = "record_id,name,domain,created_at\n{},Acme,acme.example,2025-01-01T00:00:00Z\n"
    person = "record_id,email,company_record_id,created_at\n{},{}@acme.example,{},2025-01-02T00:00:00Z\n"
    for table in ("crm_companies", "crm_people"):
        (tmp_path / table).mkdir()
    (tmp_path / "crm_companies" / "a.csv").write_text(company.format("c1"))
    (tmp_path / "crm_people" / "a.csv").write_text(person.format("p1", "ann", "c2"))
    con = duckdb.connect()
    ingest_table(con, tmp_path, COMPANIES, incremental=True)
    assert ingest_table(con, tmp_path, PEOPLE, incremental=True).rows_quarantined == 1  # c2 is dangling

    (tmp_path / "crm_people" / "b.csv").write_text(person.format("p2", "bob", "c1"))
    assert ingest_table(con, tmp_path, COMPANIES, incremental=True).mode == "unchanged"
    assert ingest_table(con, tmp_path, PEOPLE, incremental=True).mode == "incremental"

    (tmp_path / "crm_companies" / "b.csv").write_text(company.format("c2"))
    assert ingest_table(con, tmp_path, COMPANIES, incremental=True).mode == "incremental"
    result = ingest_table(con, tmp_path, PEOPLE, incremental=True)
    assert result.mode == "full"
    assert "crm_companies (which its rows refer to) was loaded again or dropped" in result.mode_reason
    assert (result.rows_loaded, result.rows_quarantined) == (2, 0)
    assert (_counts(result), _tables(con, PEOPLE)) == _full(tmp_path, PEOPLE, before=[COMPANIES])


def test_a_referenced_table_dropped_makes_the_referring_table_full(tmp_path):
    """The companies' raw table dropped (its kept state left): the people's new rows could not be checked
    as the old ones were, so the people are ingested in full, their references unchecked."""
    company = "record_id,name,domain,created_at\nc1,Acme,acme.example,2025-01-01T00:00:00Z\n"
    person = "record_id,email,company_record_id,created_at\n{},{}@acme.example,c1,2025-01-02T00:00:00Z\n"
    for table in ("crm_companies", "crm_people"):
        (tmp_path / table).mkdir()
    (tmp_path / "crm_companies" / "a.csv").write_text(company)
    (tmp_path / "crm_people" / "a.csv").write_text(person.format("p1", "ann"))
    con = duckdb.connect()
    ingest_table(con, tmp_path, COMPANIES, incremental=True)
    ingest_table(con, tmp_path, PEOPLE, incremental=True)
    con.execute(f"drop table {COMPANIES.raw_table}")
    (tmp_path / "crm_people" / "b.csv").write_text(person.format("p2", "bob"))
    result = ingest_table(con, tmp_path, PEOPLE, incremental=True)
    assert result.mode == "full" and "loaded again or dropped" in result.mode_reason
    assert result.unchecked_references == ("company_record_id → crm_companies.record_id",)


@pytest.mark.parametrize("ahead, mode", [(timedelta(days=1, seconds=30), "full"), (timedelta(days=30), "incremental")])
def test_a_row_quarantined_as_in_the_future_is_judged_anew_once_it_is_due(tmp_path, ahead, mode):
    """The one rule that reads the clock: a row more than a day ahead is quarantined, and a full ingest loads
    it once the clock has caught up. While such a row is within an hour of being due, the next ingest is
    full (and gives the full ingest's table); a row a month ahead lets it stay incremental."""
    when = (datetime.now(UTC) + ahead).strftime("%Y-%m-%dT%H:%M:%SZ")
    _write_part(_part_path(tmp_path, 0, "jsonl"), "jsonl", [GOOD, {**GOOD, "uuid": "u9", "timestamp": when}], False)
    con = duckdb.connect()
    first = ingest_table(con, tmp_path, EVENTS, incremental=True)
    assert first.quarantine_reasons == {"timestamp: in the future": 1}
    _write_part(_part_path(tmp_path, 2, "jsonl"), "jsonl", [{**GOOD, "uuid": "u2"}], garbage=False)
    result = ingest_table(con, tmp_path, EVENTS, incremental=True)
    assert result.mode == mode, result.mode_reason
    if mode == "full":
        assert "in the future is due" in result.mode_reason
    assert (_counts(result), _tables(con)) == _full(tmp_path)


def test_a_failed_incremental_ingest_changes_nothing(tmp_path):
    """A corrupt new part stops the ingest: the raw table, quarantine and kept state are those of the
    last good ingest, and once the part is gone the next ingest finds nothing new."""
    con = _two_parts(tmp_path)
    before = (
        _tables(con),
        read_ingest_state(con, "events"),
        con.sql(f'select count(*) from {STATE_SCHEMA}."ingest_rows__events"').fetchall(),
    )
    _write_part(_part_path(tmp_path, 4, "jsonl"), "jsonl", [{**GOOD, "uuid": "u4"}], garbage=False)
    bad = _part_path(tmp_path, 6, "csv.gz")
    bad.write_bytes(b"\x1f\x8b\x08\x00broken")
    with pytest.raises(SourceError, match="not a readable CSV file"):
        ingest_table(con, tmp_path, EVENTS, max_chunk_bytes=ONE_FILE_PER_CHUNK, incremental=True)
    after = (
        _tables(con),
        read_ingest_state(con, "events"),
        con.sql(f'select count(*) from {STATE_SCHEMA}."ingest_rows__events"').fetchall(),
    )
    assert after == before
    tables = {(s, t) for s, t in con.sql("select schema_name, table_name from duckdb_tables()").fetchall()}
    assert tables == {
        ("raw", "raw_events"),
        ("beton", "quarantine"),
        (STATE_SCHEMA, "ingest_files"),
        (STATE_SCHEMA, "ingest_rows__events"),
        (STATE_SCHEMA, "ingest_keys__events"),
    }
    bad.unlink()
    result = ingest_table(con, tmp_path, EVENTS, incremental=True)
    assert (result.mode, [Path(p).name for p in result.files_read]) == ("incremental", ["04.jsonl"])


def test_amounts_in_major_units_are_judged_on_every_file_read_so_far(tmp_path):
    """The major-units check continues from the kept counts: 6 amounts in cents, then a new part with 7
    two-decimal amounts is refused as it would be in a full ingest (7 of 13), and the table stays."""
    folder = tmp_path / "billing_invoices"
    folder.mkdir()
    header = "id,customer,subscription,status,amount_paid,currency,created,paid_at\n"
    row = "in{},cus_1,sub_1,paid,{},usd,2025-02-01T00:00:00Z,\n"
    (folder / "a.csv").write_text(header + "".join(row.format(i, 7900) for i in range(6)))
    con = duckdb.connect()
    assert ingest_table(con, tmp_path, INVOICES, incremental=True).rows_loaded == 6
    (folder / "b.csv").write_text(header + "".join(row.format(100 + i, "79.00") for i in range(7)))
    with pytest.raises(SourceError, match="7 of 13 values are written with two decimals"):
        ingest_table(con, tmp_path, INVOICES, incremental=True)
    with pytest.raises(SourceError, match="7 of 13 values are written with two decimals"):
        _full(tmp_path, INVOICES)
    assert con.sql(f"select count(*) from {INVOICES.raw_table}").fetchall() == [(6,)]


def test_the_kept_state_is_readable_json_with_every_file_stamped(tmp_path):
    con = _two_parts(tmp_path)
    (state,) = con.sql(f"select state from {STATE_SCHEMA}.ingest_files").fetchall()[0]
    files = json.loads(state)["files"]
    assert [Path(f[0]).name for f in files] == ["00.jsonl", "02.jsonl"]
    assert all(f[1] == Path(f[0]).stat().st_size for f in files)


def test_the_setting_is_on_by_default():
    assert IngestSettings().incremental is True
