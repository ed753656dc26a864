"""The ingest in chunks of files (`ingest.max_chunk_bytes`): the same raw rows, quarantine and counts for
any chunking, duplicates across file boundaries included; one chunk's temp data at a time; a run that
fails part-way leaves the previous load as it was."""

import csv
import io
import json
from pathlib import Path

import duckdb
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beton_pipeline.settings import IngestSettings
from beton_pipeline.sources import ingest
from beton_pipeline.sources.contract import TABLES_BY_NAME
from beton_pipeline.sources.ingest import MAX_CHUNK_BYTES, SourceError, file_chunks, ingest_table
from tests.sources.test_ingest_rows import RECORDS, _reference

EVENTS = TABLES_BY_NAME["events"]
INVOICES = TABLES_BY_NAME["billing_invoices"]
ONE_FILE_PER_CHUNK, ONE_CHUNK = 1, 10**15
COLUMNS = EVENTS.column_names


def _part_path(root: Path, i: int, ext: str) -> Path:
    """Part `i`: even parts beside the sub-folders, odd ones in a sub-folder of their own, so that the
    folder walk (`files.table_files`: files first, then folders) and the path order differ."""
    path = root / "events" / (f"{i:02d}.{ext}" if i % 2 == 0 else f"{i:02d}/part.{ext}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _write_part(path: Path, fmt: str, records: list[dict], garbage: bool) -> None:
    """One part of `records` in `fmt`; `garbage` adds a record the reader rejects (CSV, JSON Lines)."""
    if fmt == "jsonl":
        lines = [json.dumps(r) for r in records]
        if garbage:
            lines.insert(len(lines) // 2, "{oops")
        path.write_text("".join(line + "\n" for line in lines))
    elif fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        rows = [[r.get(c, "") for c in COLUMNS] for r in records]
        if garbage:
            rows.insert(len(rows) // 2, ["x"] * (len(COLUMNS) + 2))
        writer.writerows(rows)
        path.write_text(out.getvalue())
    else:
        frame = {c: pl.Series(c, [r.get(c) for r in records], dtype=pl.Utf8) for c in COLUMNS}
        pl.DataFrame(frame).write_parquet(path)


def _ingest(src: Path, max_chunk_bytes: int, spec=EVENTS):
    con = duckdb.connect()
    result = ingest_table(con, src, spec, max_chunk_bytes=max_chunk_bytes)
    raw = con.sql(f"select * from {spec.raw_table} order by _source_file, _line_number").fetchall()
    quarantine = con.sql(
        "select source_table, source_file, line_number, raw_row, reason from beton.quarantine order by 2, 3, 5"
    ).fetchall()
    temp_left = con.sql("select table_name from duckdb_tables() where temporary").fetchall()
    con.close()
    return result, raw, quarantine, temp_left


PARTS = st.lists(
    st.tuples(RECORDS, st.sampled_from(["jsonl", "csv", "parquet"]), st.booleans()), min_size=2, max_size=5
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=PARTS, data=st.data())
def test_any_chunking_gives_the_same_rows_quarantine_and_counts(tmp_path_factory, parts, data):
    """Parts in JSON Lines, CSV and Parquet drawn from small pools (so exact duplicates, repeated keys
    and bad first rows cross file boundaries often), with reader rejects: one file per chunk, a chunk
    budget between and one chunk give the same raw table, quarantine and counts."""
    src = tmp_path_factory.mktemp("src")
    for i, (records, fmt, garbage) in enumerate(parts):
        _write_part(_part_path(src, i, fmt), fmt, records, garbage and fmt != "parquet")
    sizes = sorted(p.stat().st_size for p in (src / "events").rglob("*.*"))
    middle = data.draw(st.integers(min_value=sizes[0], max_value=sum(sizes)), label="max_chunk_bytes")
    outcomes = [_ingest(src, budget) for budget in (ONE_FILE_PER_CHUNK, middle, ONE_CHUNK)]
    for result, _, _, temp_left in outcomes:
        assert result.balanced
        assert temp_left == []
    assert outcomes[0] == outcomes[1] == outcomes[2]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(RECORDS, min_size=2, max_size=4))
def test_one_file_per_chunk_follows_the_reference_rules_across_files(tmp_path_factory, parts):
    """JSON Lines parts, one per chunk, against the plain Python reference (`test_ingest_rows._reference`)
    over all the records in (file, line) order: a row repeating a row or a kept key of an earlier file
    is dropped or quarantined as if the files were one."""
    src = tmp_path_factory.mktemp("src")
    paths = [_part_path(src, i, "jsonl") for i in range(len(parts))]
    for path, records in zip(paths, parts, strict=True):
        _write_part(path, "jsonl", records, garbage=False)
    by_path = sorted(zip(map(str, paths), parts, strict=True))
    where = [(path, line) for path, records in by_path for line in range(1, len(records) + 1)]
    loaded, quarantined, duplicates = _reference([r for _, records in by_path for r in records])

    result, raw, quarantine, _ = _ingest(src, ONE_FILE_PER_CHUNK)
    assert [(r[-2], r[-1]) for r in raw] == [where[i - 1] for i in loaded]
    assert sorted((f, line, reason) for _, f, line, _, reason in quarantine) == sorted(
        (*where[i - 1], reason) for i, reason in quarantined
    )
    assert result.exact_duplicates_dropped == len(duplicates)


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.integers(min_value=0, max_value=100), max_size=12), budget=st.integers(1, 250))
def test_file_chunks_are_consecutive_runs_within_the_budget(tmp_path_factory, sizes, budget):
    root = tmp_path_factory.mktemp("files")
    files = []
    for i, size in enumerate(sizes):
        files.append(root / f"f{i:02d}")
        files[-1].write_bytes(b"x" * size)
    chunks = file_chunks(list(reversed(files)), budget)
    assert [p for chunk in chunks for p in chunk] == sorted(files, key=str)
    total = [sum(p.stat().st_size for p in chunk) for chunk in chunks]
    for chunk, size in zip(chunks, total, strict=True):
        assert size <= budget or len(chunk) == 1
    for size, following in zip(total, chunks[1:], strict=False):  # greedy: the next file did not fit
        assert size + following[0].stat().st_size > budget


def test_the_text_table_holds_one_chunk_at_a_time(tmp_path, monkeypatch):
    """The text table, read after every file is loaded, holds the files of the current chunk only; the
    chunk's temp tables are gone once the table is ingested."""
    rows = [
        {"uuid": f"u{i}", "event": "signup", "timestamp": "2025-02-01T09:00:00Z", "distinct_id": "d"} for i in range(30)
    ]
    for i in range(3):
        _write_part(_part_path(tmp_path, i * 2, "jsonl"), "jsonl", rows[i * 10 : (i + 1) * 10], garbage=False)
    files = sorted((tmp_path / "events").glob("*.jsonl"))
    budget = files[0].stat().st_size + files[1].stat().st_size  # chunks: the first two files, then the third
    seen: list[set[str]] = []
    load = ingest._TextLoader.load

    def load_and_look(self, path):
        load(self, path)
        seen.append({Path(f).name for (f,) in self.con.sql(f"select distinct _file from {self.text_table}").fetchall()})

    monkeypatch.setattr(ingest._TextLoader, "load", load_and_look)
    result, raw, _, temp_left = _ingest(tmp_path, budget)
    assert seen == [{"00.jsonl"}, {"00.jsonl", "02.jsonl"}, {"04.jsonl"}]
    assert result.rows_loaded == len(raw) == 30
    assert temp_left == []


def test_a_run_that_fails_in_a_later_chunk_leaves_the_previous_load(tmp_path):
    """An unreadable file in the last chunk: SourceError, the raw table and quarantine of the previous
    run are as they were (the chunks loaded before it are not committed), and no working table is left."""
    good = {"uuid": "u1", "event": "signup", "timestamp": "2025-02-01T09:00:00Z", "distinct_id": "d"}
    _write_part(_part_path(tmp_path, 0, "jsonl"), "jsonl", [good, {**good, "uuid": ""}], garbage=False)
    con = duckdb.connect()
    ingest_table(con, tmp_path, EVENTS, max_chunk_bytes=ONE_FILE_PER_CHUNK)
    before = (
        con.sql("select * from raw.raw_events").fetchall(),
        con.sql("select * from beton.quarantine").fetchall(),
    )
    _write_part(_part_path(tmp_path, 2, "jsonl"), "jsonl", [{**good, "uuid": "u2"}], garbage=False)
    _part_path(tmp_path, 4, "csv.gz").write_bytes(b"\x1f\x8b\x08\x00broken")  # a corrupt gzip: the run stops
    with pytest.raises(SourceError, match="not a readable CSV file"):
        ingest_table(con, tmp_path, EVENTS, max_chunk_bytes=ONE_FILE_PER_CHUNK)
    assert con.sql("select * from raw.raw_events").fetchall() == before[0]
    assert con.sql("select * from beton.quarantine").fetchall() == before[1]
    tables = {t for (t,) in con.sql("select table_name from duckdb_tables()").fetchall()}
    assert tables == {"raw_events", "quarantine"}


@pytest.mark.parametrize("major", [5, 7])
def test_amounts_in_major_units_are_judged_on_the_whole_table(tmp_path, major):
    """The major-units check counts every chunk: 6 cents in the first file and `major` two-decimal
    amounts in the second, refused (more than half) or loaded alike with one file per chunk or one chunk."""
    folder = tmp_path / "billing_invoices"
    folder.mkdir()
    header = "id,customer,subscription,status,amount_paid,currency,created,paid_at\n"
    row = "in{},cus_1,sub_1,paid,{},usd,2025-02-01T00:00:00Z,\n"
    (folder / "a.csv").write_text(header + "".join(row.format(i, 7900) for i in range(6)))
    (folder / "b.csv").write_text(header + "".join(row.format(100 + i, "79.00") for i in range(major)))
    outcomes = []
    for budget in (ONE_FILE_PER_CHUNK, ONE_CHUNK):
        try:
            outcomes.append(_ingest(tmp_path, budget, INVOICES)[:3])
        except SourceError as exc:
            outcomes.append(str(exc))
    assert outcomes[0] == outcomes[1]
    refused = isinstance(outcomes[0], str)
    assert refused == (major > 6)
    if refused:
        assert f"{major} of {6 + major} values are written with two decimals" in outcomes[0]


def test_the_setting_defaults_to_the_ingest_default():
    assert IngestSettings().max_chunk_bytes == MAX_CHUNK_BYTES
