"""The Attio connector against a local Attio (`FakeAttioRecords`): records page by page into the four CRM tables,
values unwrapped, stage history asked only for the deals that need it, retries, quarantine, failures and the key."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from beton_pipeline.sources.connectors.attio import (
    AttioConfig,
    attio_source,
    current_values,
    plan_history,
)
from beton_pipeline.sources.connectors.common import ConnectorError, pull, source_dir
from beton_pipeline.sources.contract import TABLES_BY_NAME
from beton_pipeline.sources.ingest import IngestResult, ingest_table
from beton_pipeline.warehouse import connect
from tests.fakes.attio_api import ALICE, FakeAttioRecords, member

KEY = "attio-read-key-7f3a9c41d2"
ENV = "BETON_ATTIO_API_KEY"
TABLES = ("crm_companies", "crm_people", "crm_deals", "crm_deal_stage_changes")
"""In the order the ingest loads them: people and deals refer to companies."""
BOB = member("bob")


def at(day: str, hour: int = 9) -> str:
    """An Attio timestamp (nanoseconds, Z) on a 2025 day given as MM-DD."""
    return f"2025-{day}T{hour:02d}:00:00.000000000Z"


def ts(day: str, hour: int = 9) -> datetime:
    """The same time as the warehouse holds it (naive UTC)."""
    return datetime.fromisoformat(f"2025-{day}T{hour:02d}:00:00")


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(ENV, KEY)


def workspace(attio: FakeAttioRecords) -> None:
    """Five companies, five people, four deals: with page_size 2, three pages of each (the last deal page empty)."""
    attio.add_company(
        "c1",
        "Acme",
        ["Acme.io", "acme.com"],
        created_at=at("01-05"),
        categories=["SaaS", "B2B"],
        employee_range="11-50",
    )
    attio.add_company("c2", "Globex", ["globex.com"], created_at=at("01-06"), employee_count=240)
    attio.add_company("c3", "Initech", [], created_at=at("01-07"), former_names=[("Initrode", at("01-20"))])
    attio.add_company("c4", "Umbrella", ["umbrella.co"], created_at=at("01-08"), categories=["Biotech"])
    attio.add_company("c5", "Hooli", ["hooli.xyz"], created_at=at("01-09"))
    attio.add_person("p1", ["ana@acme.io"], "c1", created_at=at("02-01"))
    attio.add_person("p2", ["bo@globex.com", "bo.private@example.org"], "c2", created_at=at("02-02"))
    attio.add_person("p3", ["cy@freelance.dev"], None, created_at=at("02-03"))
    attio.add_person("p4", ["di@umbrella.co"], "c4", created_at=at("02-04"))
    attio.add_person("p5", ["ed@hooli.xyz"], "c5", created_at=at("02-05"))
    attio.add_deal(
        "d1",
        "Acme expansion",
        "c1",
        [("Lead", at("03-01")), ("Qualified", at("03-10")), ("Won 🎉", at("04-01", 15))],
        created_at=at("03-01"),
        amount=12000.5,
    )
    attio.add_deal(
        "d2",
        "Globex pilot",
        "c2",
        [("Lead", at("03-02")), ("Closed lost", at("03-20"))],
        created_at=at("03-02"),
        amount=5000,
        currency="EUR",
        owner=BOB,
    )
    attio.add_deal("d3", "Initech", "c3", [("Qualified", at("03-03"))], created_at=at("03-03"), amount=800)
    # Won, then reopened: open again, no close time.
    attio.add_deal(
        "d4",
        "Hooli",
        "c5",
        [("Won", at("03-04")), ("Negotiation", at("03-15"))],
        created_at=at("03-04"),
        amount=0,
    )


COMPANIES = [
    ("c1", "Acme", "acme.io", None, "SaaS", ts("01-05")),
    ("c2", "Globex", "globex.com", 240, None, ts("01-06")),
    ("c3", "Initech", None, None, None, ts("01-07")),
    ("c4", "Umbrella", "umbrella.co", None, "Biotech", ts("01-08")),
    ("c5", "Hooli", "hooli.xyz", None, None, ts("01-09")),
]
PEOPLE = [
    ("p1", "ana@acme.io", "c1", ts("02-01")),
    ("p2", "bo@globex.com", "c2", ts("02-02")),
    ("p3", "cy@freelance.dev", None, ts("02-03")),
    ("p4", "di@umbrella.co", "c4", ts("02-04")),
    ("p5", "ed@hooli.xyz", "c5", ts("02-05")),
]
DEALS = [
    ("d1", "c1", "Acme expansion", "Won 🎉", 12000.5, "usd", ALICE["id"], ts("03-01"), ts("04-01", 15), "won"),
    ("d2", "c2", "Globex pilot", "Closed lost", 5000.0, "eur", BOB["id"], ts("03-02"), ts("03-20"), "lost"),
    ("d3", "c3", "Initech", "Qualified", 800.0, "usd", ALICE["id"], ts("03-03"), None, "open"),
    ("d4", "c5", "Hooli", "Negotiation", 0.0, "usd", ALICE["id"], ts("03-04"), None, "open"),
]
STAGE_CHANGES = [
    ("d1", "Lead", ts("03-01"), None),
    ("d1", "Qualified", ts("03-10"), None),
    ("d1", "Won 🎉", ts("04-01", 15), None),
    ("d2", "Closed lost", ts("03-20"), None),
    ("d2", "Lead", ts("03-02"), None),
    ("d3", "Qualified", ts("03-03"), None),
    ("d4", "Negotiation", ts("03-15"), None),
    ("d4", "Won", ts("03-04"), None),
]


def config(attio: FakeAttioRecords, **overrides) -> AttioConfig:
    """Small pages and short waits, so that every path runs in a test's time."""
    settings = dict(
        api_base=attio.url, page_size=2, timeout_seconds=5.0, max_attempts=3, backoff_factor=0.01, max_wait_seconds=2.0
    )
    return AttioConfig(**{**settings, **overrides})


def pull_attio(attio: FakeAttioRecords, landing: Path, **overrides) -> None:
    pull(attio_source(config(attio, **overrides), landing), landing)


def ingest(landing: Path, warehouse: Path) -> dict[str, IngestResult]:
    """The four tables of what was pulled into `warehouse`, companies first (the others refer to them)."""
    with connect(warehouse) as con:
        return {t: ingest_table(con, source_dir("attio", landing), TABLES_BY_NAME[t], incremental=True) for t in TABLES}


def tables(warehouse: Path) -> dict[str, list[tuple]]:
    """Each table's loaded rows (without the file and line they came from) and its quarantine, in a stable order."""
    with connect(warehouse) as con:
        out = {
            t: con.sql(
                f"select * exclude (_source_file, _line_number) from {TABLES_BY_NAME[t].raw_table} order by all"
            ).fetchall()
            for t in TABLES
        }
        out["quarantine"] = con.sql(
            "select source_table, raw_row, reason from beton.quarantine order by all"
        ).fetchall()
    return out


def fresh_tables(attio: FakeAttioRecords, tmp_path: Path, name: str) -> dict[str, list[tuple]]:
    """The tables of one pull of the workspace as it is now into a new landing directory and warehouse."""
    pull_attio(attio, tmp_path / f"{name}-landing")
    ingest(tmp_path / f"{name}-landing", tmp_path / f"{name}.duckdb")
    return tables(tmp_path / f"{name}.duckdb")


def chain(exc: BaseException) -> list[BaseException]:
    """The exception and the ones it was raised from or during (dlt's wrappers of a resource's error)."""
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def test_first_current_value_wins_over_a_historic_one():
    record = {
        "values": {
            "name": [
                {"value": "Initrode", "active_from": at("01-01"), "active_until": at("01-20")},
                {"value": "Initech", "active_from": at("01-20"), "active_until": None},
                {"value": "Initech Ltd", "active_from": at("01-21"), "active_until": None},
            ],
            "domains": "not a list",
        }
    }
    assert [v["value"] for v in current_values(record, "name")] == ["Initech", "Initech Ltd"]
    assert current_values(record, "domains") == [] and current_values(record, "categories") == []


BY_CREATION = [{"attribute": "created_at", "direction": "asc"}]


def test_pages_of_every_object_become_the_four_tables(tmp_path):
    with FakeAttioRecords(KEY) as attio:
        workspace(attio)
        pull_attio(attio, tmp_path / "landing")
        queries = [(r.path, r.json()) for r in attio.successes() if r.method == "POST"]
        assert sorted(queries, key=lambda q: (q[0], q[1]["offset"])) == [
            (f"/v2/objects/{obj}/records/query", {"limit": 2, "offset": k, "sorts": BY_CREATION})
            for obj in ("companies", "deals", "people")
            for k in (0, 2, 4)
        ]
        assert sorted(attio.history_asked()) == ["d1", "d2", "d3", "d4"]
    assert not [p for p in (tmp_path / "landing").rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    results = ingest(tmp_path / "landing", tmp_path / "w.duckdb")
    assert {t: (r.rows_read, r.rows_loaded, r.rows_quarantined) for t, r in results.items()} == {
        "crm_companies": (5, 5, 0),
        "crm_people": (5, 5, 0),
        "crm_deals": (4, 4, 0),
        "crm_deal_stage_changes": (8, 8, 0),
    }
    assert tables(tmp_path / "w.duckdb") == {
        "crm_companies": COMPANIES,
        "crm_people": PEOPLE,
        "crm_deals": DEALS,
        "crm_deal_stage_changes": STAGE_CHANGES,
        "quarantine": [],
    }


def test_history_is_asked_again_only_for_new_and_moved_deals(tmp_path):
    landing, warehouse = tmp_path / "landing", tmp_path / "w.duckdb"
    with FakeAttioRecords(KEY) as attio:
        workspace(attio)
        pull_attio(attio, landing)
        ingest(landing, warehouse)
        assert sorted(attio.history_asked()) == ["d1", "d2", "d3", "d4"]

        attio.move_deal("d3", "Proposal", at("04-10"))
        attio.add_deal("d5", "Umbrella", "c4", [("Lead", at("04-11"))], created_at=at("04-11"), amount=300)
        attio.requests.clear()
        pull_attio(attio, landing)
        assert sorted(attio.history_asked()) == ["d3", "d5"]
        ingest(landing, warehouse)
        after = tables(warehouse)
        assert after["crm_deal_stage_changes"] == sorted(
            [*STAGE_CHANGES, ("d3", "Proposal", ts("04-10"), None), ("d5", "Lead", ts("04-11"), None)]
        )
        assert after == fresh_tables(attio, tmp_path, "fresh")


def test_rate_limits_server_errors_and_timeouts_are_retried(tmp_path):
    with FakeAttioRecords(KEY) as attio:
        workspace(attio)
        attio.fail_next(504, delay=1.0)  # answered after the client stopped waiting
        attio.fail_next(429, retry_after=format_datetime(datetime.now(UTC) + timedelta(seconds=1), usegmt=True))
        attio.fail_next(429, retry_after=1)
        attio.fail_next(500)
        pull_attio(attio, tmp_path / "landing", timeout_seconds=0.5, max_attempts=5)
        assert sorted(r.status for r in attio.requests if r.status != 200) == [429, 429, 500, 504]
    ingest(tmp_path / "landing", tmp_path / "w.duckdb")
    got = tables(tmp_path / "w.duckdb")
    assert (got["crm_companies"], got["crm_people"], got["crm_deals"]) == (COMPANIES, PEOPLE, DEALS)
    assert got["crm_deal_stage_changes"] == STAGE_CHANGES


def test_malformed_records_land_and_are_quarantined_with_their_reason(tmp_path):
    with FakeAttioRecords(KEY) as attio:
        workspace(attio)
        attio.add_person("p6", ["fay@acme.io"], "c1", created_at="last tuesday")
        attio.add_person("p7", ["gus@gone.io"], "c-deleted", created_at=at("02-07"))
        attio.add_deal("d5", "Ghost", "c-deleted", [("Lead", at("03-05"))], created_at=at("03-05"), amount=10)
        pull_attio(attio, tmp_path / "landing")
    results = ingest(tmp_path / "landing", tmp_path / "w.duckdb")
    people, deals = results["crm_people"], results["crm_deals"]
    assert (people.rows_read, people.rows_loaded, people.rows_quarantined) == (7, 5, 2)
    assert people.quarantine_reasons == {
        "created_at: not a timestamp": 1,
        "company_record_id: not in crm_companies (dangling reference)": 1,
    }
    assert (deals.rows_read, deals.rows_loaded, deals.quarantine_reasons) == (
        5,
        4,
        {"company_record_id: not in crm_companies (dangling reference)": 1},
    )
    got = tables(tmp_path / "w.duckdb")
    assert got["crm_people"] == PEOPLE  # p3, with no company, is a valid row
    assert sorted((table, reason.split(": ")[0]) for table, _, reason in got["quarantine"]) == [
        ("crm_deals", "company_record_id"),
        ("crm_people", "company_record_id"),
        ("crm_people", "created_at"),
    ]
    assert any('"created_at":"last tuesday"' in raw for _, raw, _ in got["quarantine"])


def test_a_pull_failing_half_way_lands_nothing_and_the_next_one_completes(tmp_path):
    landing, warehouse = tmp_path / "landing", tmp_path / "w.duckdb"
    with FakeAttioRecords(KEY) as attio:
        workspace(attio)
        pull_attio(attio, landing)
        ingest(landing, warehouse)
        attio.move_deal("d3", "Won", at("04-20"))

        def companies_page_2(rec) -> bool:
            return rec.path == "/v2/objects/companies/records/query" and rec.json().get("offset") == 2

        landed = sorted(landing.glob("attio/crm_*/*.parquet"))
        attio.fail_when(companies_page_2, 500, times=3)
        with pytest.raises(ConnectorError) as excinfo:
            pull_attio(attio, landing)
        assert str(excinfo.value).startswith(
            "attio: POST /v2/objects/companies/records/query answered 500 after 3 attempts"
        )
        assert all(KEY not in str(e) for e in chain(excinfo.value))
        assert sorted(landing.glob("attio/crm_*/*.parquet")) == landed

        pull_attio(attio, landing)
        ingest(landing, warehouse)
        got = tables(warehouse)
        assert ("d3", "c3", "Initech", "Won", 800.0, "usd", ALICE["id"], ts("03-03"), ts("04-20"), "won") in got[
            "crm_deals"
        ]
        assert got == fresh_tables(attio, tmp_path, "clean")


def test_a_missing_or_refused_key_is_a_readable_error_without_the_key(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    with FakeAttioRecords(KEY) as attio:
        workspace(attio)
        monkeypatch.delenv(ENV)
        with pytest.raises(ConnectorError) as missing:
            pull_attio(attio, tmp_path / "a")
        assert f"{ENV} is not set" in str(missing.value)
        assert attio.requests == []

        monkeypatch.setenv(ENV, "wrong-key-0a1b2c3d")
        with pytest.raises(ConnectorError) as wrong:
            pull_attio(attio, tmp_path / "b")
        error = str(wrong.value)
        assert "answered 401" in error and f"the key in {ENV} is not a valid Attio access token" in error
        assert all("wrong-key-0a1b2c3d" not in str(e) for e in chain(wrong.value))

        monkeypatch.setenv(ENV, KEY)
        echo = {"status_code": 401, "type": "auth_error", "code": "unauthorized", "message": f"token {KEY} revoked"}
        attio.fail_when(lambda rec: True, 401, body=echo)
        with pytest.raises(ConnectorError) as echoed:
            pull_attio(attio, tmp_path / "c")
        assert "(Attio: unauthorized: token [key] revoked)" in str(echoed.value)
        assert all(KEY not in str(e) for e in chain(echoed.value))
    assert KEY not in caplog.text


def test_history_beyond_the_budget_waits_for_the_next_pull_and_keeps_its_rows(tmp_path, caplog):
    landing, warehouse = tmp_path / "landing", tmp_path / "w.duckdb"
    with FakeAttioRecords(KEY) as attio:
        workspace(attio)
        pull_attio(attio, landing, max_history_calls=3)
        assert attio.history_asked() == ["d1", "d2", "d3"]
        assert "the stage history of 1 deal(s) waits for the next pull" in caplog.text

        attio.move_deal("d2", "Lead", at("04-02"))  # back to a stage it had before
        attio.move_deal("d3", "Won", at("04-03"))
        attio.requests.clear()
        caplog.clear()
        pull_attio(attio, landing, max_history_calls=1)
        assert attio.history_asked() == ["d2"]  # d3 and d4 wait
        assert "the stage history of 2 deal(s) waits for the next pull" in caplog.text
        ingest(landing, warehouse)
        # d1 unchanged and d3 waiting keep their earlier rows; d4 has none yet.
        assert tables(warehouse)["crm_deal_stage_changes"] == sorted(
            [row for row in STAGE_CHANGES if row[0] != "d4"] + [("d2", "Lead", ts("04-02"), None)]
        )

        attio.requests.clear()
        caplog.clear()
        pull_attio(attio, landing, max_history_calls=2)
        assert attio.history_asked() == ["d3", "d4"]
        assert "waits" not in caplog.text
        ingest(landing, warehouse)
        assert tables(warehouse) == fresh_tables(attio, tmp_path, "fresh")


def test_a_full_refresh_asks_every_history_again(tmp_path):
    with FakeAttioRecords(KEY) as attio:
        workspace(attio)
        pull_attio(attio, tmp_path / "landing")
        attio.requests.clear()
        pull(attio_source(config(attio), tmp_path / "landing"), tmp_path / "landing", full_refresh=True)
        assert sorted(attio.history_asked()) == ["d1", "d2", "d3", "d4"]


def test_plan_history_without_a_current_stage_asks_nothing():
    deal = {"id": {"record_id": "d9"}, "values": {"stage": []}}
    assert plan_history([deal], {}, 10, reuse=True).ask == ()
    assert plan_history([deal], {}, 10, reuse=False).ask == ("d9",)


def test_without_deal_history_no_history_is_asked_or_landed(tmp_path):
    with FakeAttioRecords(KEY) as attio:
        workspace(attio)
        pull_attio(attio, tmp_path / "landing", deal_history=False)
        assert attio.history_asked() == []
    landed = sorted(p.name for p in source_dir("attio", tmp_path / "landing").iterdir() if p.name.startswith("crm_"))
    assert landed == ["crm_companies", "crm_deals", "crm_people"]


def test_offsets_shifted_by_a_deletion_or_ignored_neither_duplicate_nor_loop(tmp_path):
    """Pages sorted by creation; a record seen again on a later page (a deletion during the pull shifted the
    offsets back) lands once; an API answering every offset with the first page stops the pull with a reason."""
    with FakeAttioRecords(KEY) as attio:
        workspace(attio)
        attio.offset_shift = -1  # every page after the first starts one record early
        pull_attio(attio, tmp_path / "landing")
        with connect(tmp_path / "w.duckdb") as con:
            result = ingest_table(con, source_dir("attio", tmp_path / "landing"), TABLES_BY_NAME["crm_companies"])
            ids = [r for (r,) in con.sql("select record_id from raw.raw_crm_companies").fetchall()]
        assert sorted(ids) == sorted(r["id"]["record_id"] for r in attio.records["companies"])
        assert result.rows_quarantined == 0 and result.exact_duplicates_dropped == 0
        attio.offset_shift = None  # offsets ignored: every page is the first
        with pytest.raises(ConnectorError, match="all read on earlier pages: the offset is not being honoured"):
            pull_attio(attio, tmp_path / "other")
