"""The row rules of the one-pass ingest against a plain Python reference: which rows are loaded, which
are quarantined (with the raw row as read), which are dropped as exact duplicates, whatever the order
and mix of repeats; and the same outcome within a tight DuckDB memory limit (spilling to disk)."""

import json
from pathlib import Path

import duckdb
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beton_pipeline.sources.contract import TABLES_BY_NAME
from beton_pipeline.sources.ingest import ingest_table

EVENTS = TABLES_BY_NAME["events"]
DUPLICATE_KEY = "duplicate uuid: an earlier row with the same key was kept (first wins)"

# Small pools, so that exact duplicates, repeated keys and invalid first rows collide often.
UUIDS = ["u1", "u2", "u3", ""]
TIMESTAMPS = {"2025-02-01T09:00:00Z": None, "2025-02-01 10:00:00+02:00": None, "soon": "timestamp: not a timestamp"}
PROPERTIES = {
    '{"a": 1}': None,
    '{"a":1}': None,
    "{bad": "properties: malformed JSON",
    "[1]": "properties: not a JSON object",
}


def _reason(record: dict) -> str | None:
    """The contract's reasons for a record drawn from the pools (in the ingest's column order)."""
    reasons = []
    if record["uuid"] == "":
        reasons.append("uuid is empty")
    ts = TIMESTAMPS[record["timestamp"]]
    if ts is not None:
        reasons.append(f"{ts}: {record['timestamp']}")
    if "properties" in record and PROPERTIES[record["properties"]] is not None:
        reasons.append(PROPERTIES[record["properties"]])
    return "; ".join(reasons) or None


def _reference(records: list[dict]) -> tuple[list[int], list[tuple[int, str]], list[int]]:
    """(loaded lines, quarantined (line, reason), duplicate lines): a row identical to an earlier one is
    dropped; else a row breaking a rule is quarantined; else a row repeating the uuid of an earlier
    loaded row is quarantined (first wins); else it is loaded. Lines count from 1."""
    seen, kept_keys = set(), set()
    loaded, quarantined, duplicates = [], [], []
    for line, record in enumerate(records, start=1):
        values = tuple(record.get(c) for c in EVENTS.column_names)
        if values in seen:
            duplicates.append(line)
            continue
        seen.add(values)
        reason = _reason(record)
        if reason is not None:
            quarantined.append((line, reason))
        elif record["uuid"] in kept_keys:
            quarantined.append((line, DUPLICATE_KEY))
        else:
            kept_keys.add(record["uuid"])
            loaded.append(line)
    return loaded, quarantined, duplicates


RECORDS = st.lists(
    st.fixed_dictionaries(
        {
            "uuid": st.sampled_from(UUIDS),
            "event": st.just("signup"),
            "timestamp": st.sampled_from(list(TIMESTAMPS)),
            "distinct_id": st.sampled_from(["d1", "d2"]),
        },
        optional={"properties": st.sampled_from(list(PROPERTIES))},
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=RECORDS)
def test_rows_follow_the_reference_rules(tmp_path_factory, records):
    src = tmp_path_factory.mktemp("src")
    (src / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    con = duckdb.connect()
    result = ingest_table(con, src, EVENTS)
    loaded, quarantined, duplicates = _reference(records)

    got_loaded = [r[0] for r in con.sql("select _line_number from raw.raw_events order by 1").fetchall()]
    got_quarantined = con.sql("select line_number, reason, raw_row from beton.quarantine order by 1").fetchall()
    assert got_loaded == loaded
    assert [(line, reason) for line, reason, _ in got_quarantined] == quarantined
    assert result.exact_duplicates_dropped == len(duplicates)
    assert result.rows_read == len(records) == result.accounted
    # The raw row: the record as read, with every column its file has (a key no record has is left out).
    file_columns = [c for c in EVENTS.column_names if any(c in r for r in records)]
    for line, _, raw in got_quarantined:
        assert json.loads(raw) == {c: records[line - 1].get(c) for c in file_columns}


def test_raw_row_of_each_part_holds_the_columns_of_its_file(tmp_path):
    """Parts with different columns: a rejected row's raw JSON holds its own file's columns only."""
    parts = tmp_path / "events"
    parts.mkdir()
    (parts / "part-1.csv").write_text(
        "uuid,event,timestamp,distinct_id\ne1,signup,2025-02-01T09:00:00Z,d1\ne2,signup,yesterday,d1\n"
    )
    (parts / "part-2.jsonl").write_text(
        json.dumps({"uuid": "e3", "event": "x", "timestamp": "2025-02-01", "distinct_id": "d", "properties": "{"})
        + "\n"
        + json.dumps({"uuid": "e1", "event": "y", "timestamp": "2025-02-02", "distinct_id": "d"})
        + "\n"
    )
    pl.DataFrame(
        {"uuid": [""], "event": ["z"], "timestamp": ["2025-02-03"], "distinct_id": ["d"], "person_properties": ["{}"]}
    ).write_parquet(parts / "part-3.parquet")
    con = duckdb.connect()
    ingest_table(con, tmp_path, EVENTS)
    rows = con.sql("select source_file, line_number, raw_row, reason from beton.quarantine order by 1, 2").fetchall()
    assert [(Path(f).name, line, json.loads(raw), reason) for f, line, raw, reason in rows] == [
        (
            "part-1.csv",
            3,
            {"uuid": "e2", "event": "signup", "timestamp": "yesterday", "distinct_id": "d1"},
            "timestamp: not a timestamp: yesterday",
        ),
        (
            "part-2.jsonl",
            1,
            {"uuid": "e3", "event": "x", "timestamp": "2025-02-01", "distinct_id": "d", "properties": "{"},
            "properties: malformed JSON",
        ),
        (
            "part-2.jsonl",
            2,
            {"uuid": "e1", "event": "y", "timestamp": "2025-02-02", "distinct_id": "d", "properties": None},
            DUPLICATE_KEY,
        ),
        (
            "part-3.parquet",
            1,
            {"uuid": "", "event": "z", "timestamp": "2025-02-03", "distinct_id": "d", "person_properties": "{}"},
            "uuid is empty",
        ),
    ]


def test_a_tight_memory_limit_spills_and_gives_the_same_rows(tmp_path):
    """Within the connection's `memory_limit` the ingest spills to its `temp_directory`: same outcome."""
    n = 200_000
    src = tmp_path / "src"
    src.mkdir()
    i = pl.int_range(0, n, eager=True)
    pl.DataFrame(
        {
            "uuid": ("e" + (i % (n - 500)).cast(pl.Utf8)),  # 500 repeated keys
            "event": pl.Series(["signup", "login"] * (n // 2)),
            "timestamp": pl.Series(
                ["2025-02-01T09:00:00Z", "2025-02-01 10:00:00+02:00", "soon", "1738400000"] * (n // 4)
            ),
            "distinct_id": "d" + (i % 977).cast(pl.Utf8),
            "properties": '{"n": ' + i.cast(pl.Utf8) + ', "pad": "' + "x" * 200 + '"}',
        }
    ).write_parquet(src / "events.parquet")

    def ingest(memory_limit: str | None):
        con = duckdb.connect()
        if memory_limit:
            con.execute(f"set memory_limit = '{memory_limit}'; set temp_directory = '{tmp_path / 'spill'}'")
        result = ingest_table(con, src, EVENTS)
        con.execute("reset memory_limit")  # reading every row back into Python is not the ingest
        raw = con.sql("select * from raw.raw_events order by _line_number").fetchall()
        quarantine = con.sql("select line_number, raw_row, reason from beton.quarantine order by 1").fetchall()
        return result, raw, quarantine

    limited, unlimited = ingest("64MB"), ingest(None)  # about 50 MB of text alone
    assert limited[0].rows_read == n == limited[0].accounted
    # The "soon" timestamps (1 row in 4), and the second rows of the 500 repeated keys whose rows are valid
    # (a key's two rows are 199,500 lines apart, a multiple of 4: both valid or both not).
    assert limited[0].rows_quarantined == n // 4 + 500 * 3 // 4
    assert limited == unlimited
