"""Bad input, one row per kind: each either stops the ingest with a `SourceError` that names the file
(and the column), or loads what is good and quarantines the rest with an exact reason. In every case
the counts balance (rows read = loaded + quarantined + exact duplicates) and no row is lost: the line
numbers loaded, quarantined and dropped as duplicates are exactly the file's data lines.

The files are generated here, so each row shows its input next to what must come out.
"""

import gzip
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from beton_pipeline.sources import ingest
from beton_pipeline.sources.contract import TABLES_BY_NAME
from beton_pipeline.sources.ingest import MAX_JSON_CHARS, SourceError, ingest_table

EVENTS = "uuid,event,timestamp,distinct_id"
INVOICES = "id,customer,subscription,status,amount_paid,currency,created,paid_at"
COMPANIES = "record_id,name,domain,employee_count,industry,created_at"
PEOPLE = "record_id,email,company_record_id,created_at"
INTENT = "company_domain,signal_type,occurred_at,source,payload"
SUBSCRIPTIONS = "id,customer,status,created,trial_end,canceled_at,plan_amount,plan_interval,currency"


def csv(header: str, *lines: str) -> bytes:
    return ("\n".join((header, *lines)) + "\n").encode()


def jsonl(*records: dict | str) -> bytes:
    """One line per record; a str is written as it is (for lines that are not JSON objects)."""
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records).encode()


def event(uuid: str | None, timestamp: object = "2025-02-01T09:00:00Z", **extra) -> dict:
    return {"uuid": uuid, "event": "signup", "timestamp": timestamp, "distinct_id": "u-1", **extra}


def invoice(
    id_: str, amount: str = "4900", currency: str = "usd", status: str = "paid", customer: str = "cus_1"
) -> str:
    return f"{id_},{customer},sub_1,{status},{amount},{currency},1738400000,1738400000"


def gzip_truncated(data: bytes) -> bytes:
    packed = gzip.compress(data)
    return packed[: len(packed) // 2]


DUPLICATE_KEY = "duplicate uuid: an earlier row with the same key was kept (first wins)"
MISSING_TABLE = (
    "{dir}: required table 'billing_invoices' not found (expected billing_invoices.<ext> or a billing_invoices/ "
    "folder of parts; read are: .parquet, .parquet.zst, .csv, .csv.gz, .csv.zst, .tsv, .tsv.gz, .tsv.zst, "
    ".jsonl, .jsonl.gz, .jsonl.zst, .ndjson, .ndjson.gz, .ndjson.zst, .json, .json.gz, .json.zst)"
)
HUGE = {"blob": "x" * 10_000_000}
"""A 10 MB properties value: ten times the limit, five times DuckDB's default maximum line size."""


@dataclass(frozen=True)
class Case:
    """One kind of bad input: the files written, and either the exact error or the exact outcome.

    `loaded` are the line numbers loaded (in file order), `quarantined` the (line, reason) pairs,
    `duplicates` the line numbers dropped as exact duplicates. `{dir}` in `error` is the source dir.
    """

    id: str
    table: str
    files: dict[str, bytes]
    error: str | None = None
    loaded: tuple[int, ...] = ()
    quarantined: tuple[tuple[int, str], ...] = ()
    duplicates: tuple[int, ...] = ()
    ignored: tuple[str, ...] = ()
    values: dict[str, list] = field(default_factory=dict)
    """Column → loaded values in line order (typed), for the cases about conversion."""


CASES = [
    # --- The file or its columns: stop with an error naming the file (and column) ---
    Case(
        "missing required column (CSV)",
        "crm_people",
        {"crm_people.csv": csv("record_id,company_record_id,created_at", "p1,c1,2025-01-01")},
        error="{dir}/crm_people.csv: missing required column(s) email for table 'crm_people'",
    ),
    Case(
        "missing required column (JSON Lines)",
        "events",
        {"events.jsonl": jsonl({"uuid": "e1", "event": "x", "timestamp": "2025-01-01"})},
        error="{dir}/events.jsonl: missing required column(s) distinct_id for table 'events'",
    ),
    Case(
        "missing required column (header only)",
        "crm_people",
        {"crm_people.csv": b"record_id,created_at\n"},
        error="{dir}/crm_people.csv: missing required column(s) email, company_record_id for table 'crm_people'",
    ),
    Case("required table file missing", "billing_invoices", {"crm_people.csv": csv(PEOPLE)}, error=MISSING_TABLE),
    Case(
        "zero-byte file",
        "billing_invoices",
        {"billing_invoices.csv": b""},
        error="{dir}/billing_invoices.csv: file is empty (0 bytes); remove it or write at least a header row",
    ),
    Case(
        "zero-byte part among good parts",
        "events",
        {"events/part-1.jsonl": jsonl(event("e1")), "events/part-2.jsonl": b""},
        error="{dir}/events/part-2.jsonl: file is empty (0 bytes); remove it or write at least a header row",
    ),
    Case(
        "truncated gzip (CSV)",
        "billing_invoices",
        {"billing_invoices.csv.gz": gzip_truncated(csv(INVOICES, *(invoice(f"in_{i}") for i in range(2000))))},
        error="{dir}/billing_invoices.csv.gz: not a readable CSV file: truncated or corrupt gzip (Unexpected end of GZIP stream)",
    ),
    Case(
        "corrupt gzip (JSON Lines)",
        "events",
        {"events.jsonl.gz": b"\x1f\x8b\x08\x00 not really gzip"},
        error="{dir}/events.jsonl.gz: not a readable JSON Lines file: truncated or corrupt gzip (Failed to decode gzip stream: data error)",
    ),
    Case(
        "not a Parquet file",
        "billing_invoices",
        {"billing_invoices.parquet": b"PAR1 a spreadsheet renamed"},
        error="{dir}/billing_invoices.parquet: not a readable Parquet file: No magic bytes found at end of file",
    ),
    # --- Tables present but empty, or absent when optional: zero rows, no error ---
    Case("empty file (header only)", "billing_invoices", {"billing_invoices.csv": csv(INVOICES)}),
    Case("empty JSON Lines (blank lines only)", "events", {"events.jsonl": b"\n  \n"}),
    Case("optional table missing", "crm_deals", {"crm_people.csv": csv(PEOPLE)}),
    # --- Values: quarantined with the column and the value ---
    Case(
        "text in an integer column",
        "crm_companies",
        {
            "crm_companies.csv": csv(
                COMPANIES, "c1,Acme,acme.io,about 50,Fintech,2025-01-01", "c2,Globex,globex.com,45,,2025-01-01"
            )
        },
        loaded=(3,),
        quarantined=((2, "employee_count: not an integer: about 50"),),
    ),
    Case(
        "text in a number column",
        "crm_deals",
        {
            "crm_deals.jsonl": jsonl(
                {
                    "record_id": "d1",
                    "company_record_id": "c1",
                    "stage": "demo",
                    "value": "lots",
                    "currency": "usd",
                    "created_at": "2025-01-01",
                    "closed_at": None,
                    "status": "open",
                }
            )
        },
        quarantined=((1, "value: not a number: lots"),),
    ),
    Case(
        "non-integer amount",
        "billing_invoices",
        {"billing_invoices.csv": csv(INVOICES, invoice("in_1", "49.5"), invoice("in_2", "4900"))},
        loaded=(3,),
        quarantined=((2, "amount_paid: not an integer: 49.5"),),
    ),
    Case(
        "integral amount written as a float",
        "billing_invoices",
        {"billing_invoices.csv": csv(INVOICES, invoice("in_1", "4900.0"), invoice("in_2", "0.00"))},
        loaded=(2, 3),
        values={"amount_paid": [4900, 0]},
    ),
    Case(
        "negative amount",
        "billing_invoices",
        {"billing_invoices.csv": csv(INVOICES, invoice("in_1", "-5"), invoice("in_2", "-0"))},
        loaded=(3,),
        quarantined=((2, "amount_paid: below 0"),),
    ),
    Case(
        "unknown currency",
        "billing_invoices",
        {"billing_invoices.csv": csv(INVOICES, invoice("in_1", currency="XYZ"), invoice("in_2", currency="EUR"))},
        loaded=(3,),
        quarantined=((2, "currency: unknown currency XYZ"),),
        values={"currency": ["eur"]},
    ),
    Case(
        "several problems in one row",
        "billing_invoices",
        {"billing_invoices.csv": csv(INVOICES, invoice("in_1", "-5", "xyz", "refunded"))},
        quarantined=((2, "status: unexpected value refunded; amount_paid: below 0; currency: unknown currency xyz"),),
    ),
    Case(
        "empty required value",
        "billing_invoices",
        {"billing_invoices.csv": csv(INVOICES, invoice("in_1", customer=""), invoice("in_2", customer="  "))},
        quarantined=((2, "customer is empty"), (3, "customer is empty")),
    ),
    Case(
        "null ids",
        "events",
        {"events.jsonl": jsonl(event(None), event(""), event("e3"))},
        loaded=(3,),
        quarantined=((1, "uuid is empty"), (2, "uuid is empty")),
    ),
    Case(
        "invalid JSON in a JSON column",
        "events",
        {
            "events.jsonl": jsonl(
                event("e1", properties='{"$current_url": "https://app'), event("e2", properties='{"plan": "pro"}')
            )
        },
        loaded=(2,),
        quarantined=((1, "properties: malformed JSON"),),
        values={"properties": ['{"plan":"pro"}']},
    ),
    Case(
        "JSON column holding an array",
        "events",
        {"events.jsonl": jsonl(event("e1", properties=[1, 2]), event("e2", person_properties="3"))},
        quarantined=((1, "properties: not a JSON object"), (2, "person_properties: not a JSON object")),
    ),
    Case(
        "10 MB properties blob",
        "events",
        {"events.jsonl": jsonl(event("e1", properties=HUGE), event("e2", properties={"ok": True}))},
        loaded=(2,),
        quarantined=((1, f"properties: JSON larger than {MAX_JSON_CHARS} characters"),),
    ),
    Case(
        "10 MB JSON value in a CSV",
        "intent_signals",
        {
            "intent_signals.csv": csv(
                INTENT,
                'acme.io,funding_round,2025-01-01,cb,"' + json.dumps(HUGE).replace('"', '""') + '"',
                "acme.io,hiring,2025-01-02,cb,{}",
            )
        },
        loaded=(3,),
        quarantined=((2, f"payload: JSON larger than {MAX_JSON_CHARS} characters"),),
    ),
    # --- Timestamps ---
    Case(
        "future timestamp",
        "events",
        {"events.jsonl": jsonl(event("e1", "2099-01-01T00:00:00Z"), event("e2"))},
        loaded=(2,),
        quarantined=((1, "timestamp: in the future"),),
    ),
    Case(
        "pre-1990 timestamp",
        "events",
        {"events.jsonl": jsonl(event("e1", "1989-12-31T23:59:59Z"), event("e2", 0), event("e3", "1990-01-01"))},
        loaded=(3,),
        quarantined=((1, "timestamp: before 1990-01-01"), (2, "timestamp: before 1990-01-01")),
    ),
    Case(
        "epoch milliseconds",
        "events",
        {"events.jsonl": jsonl(event("e1", 1738400000000), event("e2", 1738400000))},
        loaded=(2,),
        quarantined=((1, "timestamp: epoch value too large for seconds (milliseconds?): 1738400000000"),),
    ),
    Case(
        "unparseable timestamp",
        "events",
        {"events.jsonl": jsonl(event("e1", "yesterday"), event("e2", "2025-13-45"))},
        quarantined=((1, "timestamp: not a timestamp: yesterday"), (2, "timestamp: not a timestamp: 2025-13-45")),
    ),
    Case(
        "mixed timestamp styles in one column",
        "events",
        {
            "events.jsonl": jsonl(
                event("e1", "2025-02-01T10:00:00+01:00"),
                event("e2", "2025-02-01 09:00:00"),
                event("e3", 1738400400),
                event("e4", "1738400400.5"),
                event("e5", 1738400400.25),
                event("e6", "2025-02-01T09:00:00Z"),
            )
        },
        loaded=(1, 2, 3, 4, 5, 6),
        values={
            "timestamp": [
                datetime(2025, 2, 1, 9),
                datetime(2025, 2, 1, 9),
                datetime(2025, 2, 1, 9, 0, 0),
                datetime(2025, 2, 1, 9, 0, 0, 500000),
                datetime(2025, 2, 1, 9, 0, 0, 250000),
                datetime(2025, 2, 1, 9),
            ]
        },
    ),
    # --- Duplicates ---
    Case(
        "duplicate uuid, different content",
        "events",
        {"events.jsonl": jsonl(event("e1"), event("e2"), {**event("e1"), "event": "later"})},
        loaded=(1, 2),
        quarantined=((3, DUPLICATE_KEY),),
        values={"event": ["signup", "signup"]},
    ),
    Case(
        "duplicate uuid whose first row is invalid",
        "events",
        {"events.jsonl": jsonl(event("e1", "never"), {**event("e1"), "event": "valid"})},
        loaded=(2,),
        quarantined=((1, "timestamp: not a timestamp: never"),),
        values={"event": ["valid"]},
    ),
    Case(
        "exact duplicate rows",
        "events",
        {"events.jsonl": jsonl(event("e1"), event("e1"), event("e2"), event("e1"))},
        loaded=(1, 3),
        duplicates=(2, 4),
    ),
    Case(
        "exact duplicates across parts",
        "events",
        {"events/a.jsonl": jsonl(event("e1")), "events/b.jsonl": jsonl(event("e1"), event("e2"))},
        loaded=(1, 2),
        duplicates=(1,),
    ),
    # --- Lines the readers cannot take apart ---
    Case(
        "CSV line with the wrong number of fields",
        "billing_invoices",
        {
            "billing_invoices.csv": csv(
                INVOICES, invoice("in_1"), invoice("in_2") + ",extra", "in_3,cus_1,sub_1", invoice("in_4")
            )
        },
        loaded=(2, 5),
        quarantined=(
            (3, "unreadable CSV line: 9 fields, the header has 8"),
            (4, "unreadable CSV line: 3 field(s), the header has 8"),
        ),
    ),
    Case(
        "non-UTF-8 bytes in a CSV",
        "billing_invoices",
        {
            "billing_invoices.csv": csv(INVOICES, invoice("in_1"))
            + invoice("in_2", customer="M\xfcller").encode("latin-1")
            + b"\n"
            + invoice("in_3").encode()
            + b"\n"
        },
        loaded=(2, 4),
        quarantined=((3, "unreadable CSV line: not valid UTF-8"),),
    ),
    Case(
        "non-UTF-8 bytes in JSON Lines",
        "events",
        {
            "events.jsonl": jsonl(event("e1"))
            + json.dumps(event("e2", distinct_id="M\xfcller"), ensure_ascii=False).encode("latin-1")
            + b"\n"
            + jsonl(event("e3"))
        },
        loaded=(1, 3),
        quarantined=((2, "unreadable JSON line: not valid UTF-8"),),
    ),
    Case(
        "JSON line that is not an object",
        "events",
        {"events.jsonl": jsonl("[1, 2]", '"e1"', "42", "null", "true", event("e6"))},
        loaded=(6,),
        quarantined=(
            (1, "JSON line is not an object (array)"),
            (2, "JSON line is not an object (string)"),
            (3, "JSON line is not an object (number)"),
            (4, "JSON line is not an object (null)"),
            (5, "JSON line is not an object (boolean)"),
        ),
    ),
    Case(
        "malformed JSON line, blank lines around it",
        "events",
        {"events.jsonl": jsonl(event("e1"), "", '{"uuid": "e2", broken', "", event("e3"))},
        loaded=(1, 5),
        quarantined=((3, "malformed JSON line"),),
    ),
    # --- Columns beyond the contract, encodings of the whole file ---
    Case(
        "unknown extra columns",
        "billing_invoices",
        {"billing_invoices.csv": csv(INVOICES + ",utm_source,plan_nickname", invoice("in_1") + ",ads,pro")},
        loaded=(2,),
        ignored=("plan_nickname", "utm_source"),
    ),
    # --- Quirks of real exports ---
    Case(
        "NULL and \\N markers in a CSV",
        "crm_companies",
        {
            "crm_companies.csv": csv(
                COMPANIES, "c1,Acme,acme.io,NULL,NULL,2025-01-01", "c2,Globex,globex.com,\\N,\\N,2025-01-01"
            )
        },
        loaded=(2, 3),
        values={"industry": [None, None], "employee_count": [None, None]},
    ),
    Case(
        "NULL canceled_at of a paying subscription",
        "billing_subscriptions",
        {
            "billing_subscriptions.csv": csv(
                SUBSCRIPTIONS,
                "sub_1,cus_1,active,1738400000,NULL,NULL,4900,month,usd",
                "sub_2,cus_1,active,1738400000,\\N,,4900,month,usd",
            )
        },
        loaded=(2, 3),
        values={"canceled_at": [None, None], "trial_end": [None, None]},
    ),
    Case(
        "a running trial ends after today; a subscription cannot be created then",
        "billing_subscriptions",
        {
            "billing_subscriptions.csv": csv(
                SUBSCRIPTIONS,
                "sub_1,cus_1,trialing,1738400000,2099-01-01T00:00:00Z,,4900,month,usd",
                "sub_2,cus_1,trialing,2099-01-01T00:00:00Z,,,4900,month,usd",
            )
        },
        loaded=(2,),
        quarantined=((3, "created: in the future"),),
        values={"trial_end": [datetime(2099, 1, 1)]},
    ),
    Case(
        "optional table as TSV with \\N",
        "intent_signals",
        {"intent_signals.tsv": (INTENT.replace(",", "\t") + "\nacme.io\thiring\t2025-01-02\t\\N\t{}\n").encode()},
        loaded=(2,),
        values={"source": [None], "payload": ["{}"]},
    ),
    Case(
        "quarterly plan (interval_count)",
        "billing_subscriptions",
        {
            "billing_subscriptions.csv": csv(
                SUBSCRIPTIONS + ",plan_interval_count",
                "sub_1,cus_1,active,1738400000,,,30000,month,usd,3",
                "sub_2,cus_1,active,1738400000,,,4900,month,usd,",
                "sub_3,cus_1,active,1738400000,,,4900,month,usd,0",
            )
        },
        loaded=(2, 3),
        quarantined=((4, "plan_interval_count: below 1"),),
        values={"plan_interval_count": [3, None]},
    ),
    Case(
        "amounts in major units",
        "billing_invoices",
        {
            "billing_invoices.csv": csv(
                INVOICES, invoice("in_1", "79.00"), invoice("in_2", "79.50"), invoice("in_3", "4900")
            )
        },
        error=(
            "billing_invoices.amount_paid: 2 of 3 values are written with two decimals, as major units "
            "(e.g. 79.00 ({dir}/billing_invoices.csv line 2); 79.50 ({dir}/billing_invoices.csv line 3)); "
            "the contract wants integer minor units (cents: 79.00 is 7900). Export the amounts in cents "
            "(Stripe's API amounts are) or multiply them by 100 (zero-decimal currencies such as JPY stay as they are)"
        ),
    ),
    Case(
        "one two-decimal amount among cents",
        "billing_invoices",
        {"billing_invoices.csv": csv(INVOICES, invoice("in_1"), invoice("in_2", "79.50"), invoice("in_3"))},
        loaded=(2, 4),
        quarantined=((3, "amount_paid: not an integer: 79.50"),),
    ),
    Case(
        "title row above the CSV header",
        "billing_invoices",
        {"billing_invoices.csv": b"Invoices export (Stripe)\n" + csv(INVOICES, invoice("in_1"))},
        error=(
            "{dir}/billing_invoices.csv: line 1 is not the header row ('Invoices export (Stripe)'); the header with "
            "the contract columns is on line 2: remove the 1 line(s) above it (a title row) and export again"
        ),
    ),
    Case(
        "footer row below the CSV data",
        "billing_invoices",
        {"billing_invoices.csv": csv(INVOICES, invoice("in_1"), invoice("in_2"), "Total: 2 invoices")},
        loaded=(2, 3),
        quarantined=((4, "unreadable CSV line: 1 field(s), the header has 8"),),
    ),
    Case(
        "gzip bytes in a .csv",
        "billing_invoices",
        {"billing_invoices.csv": gzip.compress(csv(INVOICES, invoice("in_1")))},
        error="{dir}/billing_invoices.csv: the file holds gzip bytes, but its name says plain CSV text; rename it to billing_invoices.csv.gz",
    ),
    Case(
        "Parquet bytes in a .csv",
        "billing_invoices",
        {"billing_invoices.csv": b"PAR1\x15\x04\x15\x10 a Parquet file named .csv"},
        error="{dir}/billing_invoices.csv: the file holds Parquet bytes, but its name says plain CSV text; rename it to billing_invoices.parquet",
    ),
    Case(
        "JSON Lines that omit null keys",
        "billing_invoices",
        {
            "billing_invoices.jsonl": jsonl(
                {
                    "id": "in_1",
                    "customer": "cus_1",
                    "status": "paid",
                    "amount_paid": 4900,
                    "currency": "usd",
                    "created": 1738400000,
                },
                {
                    "id": "in_2",
                    "customer": "cus_1",
                    "status": "open",
                    "amount_paid": 0,
                    "currency": "usd",
                    "created": 1738400000,
                },
            )
        },
        loaded=(1, 2),
        values={"subscription": [None, None], "paid_at": [None, None]},
    ),
    Case(
        "pretty-printed JSON array (.json)",
        "events",
        {"events.json": json.dumps([event("e1"), event("e2"), [1]], indent=2).encode()},
        loaded=(1, 2),
        quarantined=((3, "JSON record is not an object (array)"),),
    ),
    Case(
        "one-line JSON array in .jsonl",
        "events",
        {"events.jsonl": (json.dumps([event("e1"), event("e2")]) + "\n").encode()},
        loaded=(1, 2),
    ),
    Case(
        "pretty-printed objects in .jsonl",
        "events",
        {
            "events.jsonl": (
                json.dumps(event("e1"), indent=2) + "\n" + json.dumps(event("e2"), indent=2) + "\n"
            ).encode()
        },
        loaded=(1, 2),
    ),
    Case(
        "UTF-8 byte-order mark and CRLF line ends",
        "billing_invoices",
        {
            "billing_invoices.csv": b"\xef\xbb\xbf"
            + csv(INVOICES, invoice("in_1"), invoice("in_2")).replace(b"\n", b"\r\n")
        },
        loaded=(2, 3),
    ),
]


def _write(source_dir: Path, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        path = source_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(tmp_path, case: Case):
    source_dir = tmp_path / "src"
    source_dir.mkdir()
    _write(source_dir, case.files)
    con = duckdb.connect()
    spec = TABLES_BY_NAME[case.table]
    if case.error is not None:
        with pytest.raises(SourceError) as raised:
            ingest_table(con, source_dir, spec)
        assert str(raised.value) == case.error.format(dir=source_dir)
        assert con.sql(
            f"select count(*) from information_schema.tables where table_name = 'raw_{case.table}'"
        ).fetchall() == [(0,)]
        return

    result = ingest_table(con, source_dir, spec)
    quarantined = con.sql(
        f"select line_number, reason from beton.quarantine where source_table = '{case.table}' order by line_number"
    ).fetchall()
    loaded = [
        r[0]
        for r in con.sql(f"select _line_number from {spec.raw_table} order by _source_file, _line_number").fetchall()
    ]
    assert quarantined == list(case.quarantined)
    assert loaded == list(case.loaded)
    assert result.rows_loaded == len(case.loaded)
    assert result.rows_quarantined == len(case.quarantined)
    assert result.exact_duplicates_dropped == len(case.duplicates)
    assert result.balanced
    # No row lost: every data line of every file is loaded, quarantined or an exact duplicate.
    data_lines = sum(
        _data_lines(source_dir / name) for name in case.files if name.split("/")[0].split(".")[0] == case.table
    )
    assert result.rows_read == data_lines == len(case.loaded) + len(case.quarantined) + len(case.duplicates)
    # Every quarantined row keeps its raw content and the file it came from.
    assert con.sql(
        f"select count(*) from beton.quarantine where source_table = '{case.table}' and (raw_row is null or source_file is null)"
    ).fetchall() == [(0,)]
    assert result.ignored_columns == case.ignored
    for column, expected in case.values.items():
        got = [
            r[0]
            for r in con.sql(f'select "{column}" from {spec.raw_table} order by _source_file, _line_number').fetchall()
        ]
        assert got == expected, column


def _data_lines(path: Path) -> int:
    """Data records in a generated file, counted independently of DuckDB: CSV/TSV lines after the header,
    non-blank JSON Lines lines, or the records of a JSON array or of pretty-printed objects."""
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        raw = gzip.decompress(raw)
    lines = [ln for ln in raw.split(b"\n") if ln.strip()]
    if ".csv" in path.name or ".tsv" in path.name:
        return len(lines) - 1
    try:
        whole = json.loads(raw)
    except ValueError:
        whole = None
    if isinstance(whole, list):
        return len(whole)
    if lines and lines[0].strip() == b"{":  # pretty-printed objects, one after another
        text, n, at = raw.decode().strip(), 0, 0
        while at < len(text):
            _, at = json.JSONDecoder().raw_decode(text, at)
            at, n = len(text) - len(text[at:].lstrip()), n + 1
        return n
    return len(lines)


def test_at_least_fifteen_kinds():
    assert len(CASES) >= 15 and len({c.id for c in CASES}) == len(CASES)


def test_a_record_over_the_line_limit(tmp_path, monkeypatch):
    """JSON Lines: the line is quarantined. CSV: DuckDB's dialect detection reads it and stops, naming the file."""
    monkeypatch.setattr(ingest, "MAX_LINE_BYTES", 4096)
    (tmp_path / "events.jsonl").write_bytes(
        jsonl(event("e1"), event("e2", properties={"blob": "x" * 10_000}), event("e3"))
    )
    con = duckdb.connect()
    result = ingest_table(con, tmp_path, TABLES_BY_NAME["events"])
    assert result.balanced and (result.rows_read, result.rows_loaded) == (3, 2)
    assert con.sql("select line_number, reason from beton.quarantine").fetchall() == [
        (2, "unreadable JSON line: longer than 4096 bytes")
    ]
    (tmp_path / "events.jsonl").unlink()
    (tmp_path / "events.csv").write_bytes(
        csv(EVENTS + ",properties", "e1,x,2025-01-01,u-1,", "e2,x,2025-01-01,u-1," + "y" * 10_000)
    )
    with pytest.raises(SourceError) as raised:
        ingest_table(con, tmp_path, TABLES_BY_NAME["events"])
    assert (
        str(raised.value) == f"{tmp_path}/events.csv: not a readable CSV file: Maximum line size of 4096 bytes exceeded"
    )


def test_a_failed_reingest_leaves_the_previous_load_in_place(tmp_path):
    con = duckdb.connect()
    (tmp_path / "billing_invoices.csv").write_bytes(csv(INVOICES, invoice("in_1"), invoice("in_2", "-5")))
    ingest_table(con, tmp_path, TABLES_BY_NAME["billing_invoices"])
    (tmp_path / "billing_invoices.csv").write_bytes(b"id,customer\n")
    with pytest.raises(SourceError, match="missing required column"):
        ingest_table(con, tmp_path, TABLES_BY_NAME["billing_invoices"])
    assert con.sql("select id from raw.raw_billing_invoices").fetchall() == [("in_1",)]
    assert con.sql("select reason from beton.quarantine").fetchall() == [("amount_paid: below 0",)]


def test_line_numbers_stay_right_after_many_rejected_lines(tmp_path):
    """Accepted rows are numbered by DuckDB without the rejected lines; the loader puts them back."""
    lines = [invoice(f"in_{i}") + (",extra" if i % 7 == 3 else "") for i in range(2000)]
    (tmp_path / "billing_invoices.csv").write_bytes(csv(INVOICES, *lines))
    con = duckdb.connect()
    result = ingest_table(con, tmp_path, TABLES_BY_NAME["billing_invoices"])
    assert result.balanced and result.rows_quarantined == sum(1 for i in range(2000) if i % 7 == 3)
    # in_<i> is on line i + 2 (after the header): true for every loaded and every quarantined row.
    assert con.sql(
        "select count(*) from raw.raw_billing_invoices where _line_number != cast(substr(id, 4) as int) + 2"
    ).fetchall() == [(0,)]
    assert con.sql(
        "select count(*) from beton.quarantine where line_number != cast(regexp_extract(raw_row, 'in_([0-9]+)', 1) as int) + 2"
    ).fetchall() == [(0,)]
