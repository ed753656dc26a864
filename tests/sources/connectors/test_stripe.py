"""The Stripe connector against a fake Stripe API on 127.0.0.1 (`tests/fakes/stripe_api.py`).

Every scenario pulls with the real SDK into a landing folder, ingests the three billing tables with the
project's ingest, and compares the warehouse's rows: exact rows for a first pull, and, for a pull kept current
through events, the rows a fresh full listing of the fake's objects gives."""

from __future__ import annotations

import logging
import re
import time
import traceback
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from beton_pipeline.sources.connectors.common import ConnectorError, pull, source_dir
from beton_pipeline.sources.connectors.stripe_billing import (
    StripeApi,
    StripeConfig,
    invoice_subscription,
    retry_wait,
    stripe_source,
    subscription_plan,
)
from beton_pipeline.sources.contract import TABLES_BY_NAME
from beton_pipeline.sources.ingest import ingest_table
from beton_pipeline.warehouse import connect
from tests.fakes.stripe_api import DAY, FakeStripe, customer, invoice, price, subscription

TABLES = ("billing_customers", "billing_subscriptions", "billing_invoices")
KEY_ENV = "BETON_STRIPE_API_KEY"
LISTS = ("/v1/customers", "/v1/subscriptions", "/v1/invoices")
LIST_OF = dict(zip(TABLES, LISTS, strict=True))


def ts(seconds: int) -> datetime:
    """An epoch second as the ingest loads it (naive UTC)."""
    return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)


@pytest.fixture
def now() -> int:
    return int(time.time())


@pytest.fixture
def fake(now, monkeypatch):
    with FakeStripe() as server:
        server.seed_sample(now)
        monkeypatch.setenv(KEY_ENV, server.api_key)
        yield server


def config(fake: FakeStripe, **overrides) -> StripeConfig:
    """Small pages (several per table) and fast retries."""
    return StripeConfig(api_base=fake.url, **{"page_size": 3, "backoff_seconds": 0.01, **overrides})


def ingest(landing: Path, warehouse: Path) -> dict:
    """Ingest the three tables (customers first: the others refer to them); their results by table."""
    with connect(warehouse) as con:
        return {
            t: ingest_table(con, source_dir("stripe", landing), TABLES_BY_NAME[t], incremental=True) for t in TABLES
        }


def warehouse_tables(warehouse: Path) -> dict[str, list[tuple]]:
    """Each table's contract columns by id, and the quarantine as (table, id, reason)."""
    with connect(warehouse) as con:
        out = {
            t: con.sql(f"select {', '.join(TABLES_BY_NAME[t].column_names)} from raw.raw_{t} order by id").fetchall()
            for t in TABLES
        }
        out["quarantine"] = con.sql(
            "select source_table, raw_row::json->>'id', reason from beton.quarantine order by all"
        ).fetchall()
    return out


def fresh_listing(fake: FakeStripe, tmp_path: Path, name: str) -> dict[str, list[tuple]]:
    """The warehouse tables a first pull of the fake's current objects gives (a new landing, a new warehouse)."""
    landing = tmp_path / f"{name}_landing"
    pull(stripe_source(config(fake), landing), landing)
    ingest(landing, tmp_path / f"{name}.duckdb")
    return warehouse_tables(tmp_path / f"{name}.duckdb")


def full_text(exc: BaseException) -> str:
    """Everything a traceback of `exc` would print, causes included."""
    return "".join(traceback.format_exception(exc))


def expected_first_pull(now: int) -> dict[str, list[tuple]]:
    """The seeded account (`FakeStripe.seed_sample`) as the warehouse holds it."""
    old, trial = now - 60 * DAY, now - 14 * DAY + DAY // 2
    return {
        "billing_customers": [
            ("cus_a", "ops@acme.io", ts(old), '{"company_domain":"acme.io"}'),
            ("cus_b", "billing@globex.com", ts(old + DAY), "{}"),
            ("cus_c", "finance@initech.com", ts(old + 2 * DAY), '{"company_domain":"initech.com","tier":"smb"}'),
            ("cus_d", None, ts(old + 3 * DAY), "{}"),
            ("cus_e", "eve@umbrella.eu", ts(old + 4 * DAY), "{}"),
            ("cus_f", "frank@hooli.com", ts(old + 5 * DAY), "{}"),
            ("cus_g", "hello@piedpiper.com", ts(old + 6 * DAY), "{}"),
        ],
        "billing_subscriptions": [
            # 4900 × 1 + 1500 × 4: two monthly items in one plan amount.
            ("sub_a", "cus_a", "active", ts(old + 10 * DAY), None, None, 10900, "month", 1, "usd"),
            ("sub_b", "cus_b", "trialing", ts(trial), ts(trial + 14 * DAY), None, 4900, "month", 1, "usd"),
            # Quarterly: 12000 × 2 every 3 months.
            ("sub_c", "cus_c", "active", ts(old + 12 * DAY), None, None, 24000, "month", 3, "usd"),
            ("sub_d", "cus_d", "canceled", ts(old + 13 * DAY), None, ts(old + 40 * DAY), 4900, "month", 1, "usd"),
            ("sub_e", "cus_e", "past_due", ts(old + 14 * DAY), None, None, 9000, "month", 1, "eur"),
            ("sub_f", "cus_f", "active", ts(old + 15 * DAY), None, None, 99000, "year", 1, "usd"),
        ],
        "billing_invoices": [
            # in_1, in_2, in_7: `subscription` at the top level; the others under `parent`.
            ("in_1", "cus_a", "sub_a", "paid", 10900, "usd", ts(old + 10 * DAY), ts(old + 10 * DAY + 60)),
            ("in_2", "cus_c", "sub_c", "paid", 24000, "usd", ts(old + 12 * DAY), ts(old + 12 * DAY + 90)),
            ("in_3", "cus_d", "sub_d", "paid", 4900, "usd", ts(old + 13 * DAY), ts(old + 13 * DAY + 30)),
            ("in_4", "cus_e", "sub_e", "open", 0, "eur", ts(old + 44 * DAY), None),
            ("in_5", "cus_f", "sub_f", "paid", 99000, "usd", ts(old + 15 * DAY), ts(old + 15 * DAY + 10)),
            ("in_6", "cus_b", None, "draft", 0, "usd", ts(old + 50 * DAY), None),
            ("in_7", "cus_a", "sub_a", "paid", 10900, "usd", ts(now - 5 * DAY), ts(now - 4 * DAY)),
            ("in_8", "cus_c", "sub_c", "void", 0, "usd", ts(now - 3 * DAY), None),
        ],
        "quarantine": [],
    }


def change_account(fake: FakeStripe, now: int) -> None:
    """What happens between two pulls: a cancellation, a new customer, a new invoice paid, a deleted customer."""
    newest_subscription_event = now - 14 * DAY + DAY // 2
    # Written in the very second of the subscription cursor, after the first pull read it: `created[gt]` would miss it.
    fake.update(
        "subscription",
        "sub_c",
        event_type="customer.subscription.deleted",
        at=newest_subscription_event,
        status="canceled",
        canceled_at=newest_subscription_event,
        ended_at=newest_subscription_event,
    )
    fake.add("customer", customer("cus_h", "new@wayne.com", now - 3600), at=now - 3600)
    fake.add("invoice", invoice("in_9", "cus_h", None, "open", 5000, now - 1800), at=now - 1800)
    fake.update(
        "invoice",
        "in_9",
        event_type="invoice.paid",
        at=now - 1700,
        status="paid",
        amount_paid=5000,
        status_transitions={"paid_at": now - 1700},
    )
    fake.update("customer", "cus_a", at=now - 1600, email="finance@acme.io")
    fake.delete_customer("cus_g", at=now - 1500)


def test_first_pull_lists_every_object_once_over_several_pages(fake, now, tmp_path):
    landing = tmp_path / "landing"
    pull(stripe_source(config(fake), landing), landing)
    results = ingest(landing, tmp_path / "w.duckdb")

    assert warehouse_tables(tmp_path / "w.duckdb") == expected_first_pull(now)
    assert {t: (r.rows_read, r.rows_loaded, r.rows_quarantined) for t, r in results.items()} == {
        "billing_customers": (7, 7, 0),
        "billing_subscriptions": (6, 6, 0),
        "billing_invoices": (8, 8, 0),
    }
    paths = fake.paths()
    # 7 customers, 6 subscriptions, 8 invoices in pages of 3; one `limit=1` events call per table for the cursor.
    assert [paths.count(p) for p in LISTS] == [3, 2, 3]
    assert paths.count("/v1/events") == 3
    assert all("status=all" in r.path for r in fake.requests if r.path.startswith("/v1/subscriptions"))


def test_later_pulls_read_only_events_and_equal_a_fresh_listing(fake, now, tmp_path):
    landing, warehouse = tmp_path / "landing", tmp_path / "w.duckdb"
    pull(stripe_source(config(fake), landing), landing)
    ingest(landing, warehouse)
    change_account(fake, now)
    seen = len(fake.requests)

    pull(stripe_source(config(fake), landing), landing)
    results = ingest(landing, warehouse)

    assert set(fake.paths()[seen:]) == {"/v1/events"}
    assert all("created%5Bgte%5D=" in r.path for r in fake.requests[seen:])
    tables = warehouse_tables(warehouse)
    assert tables == fresh_listing(fake, tmp_path, "fresh")
    customers = {row[0]: row for row in tables["billing_customers"]}
    assert "cus_g" not in customers and customers["cus_h"][1] == "new@wayne.com"
    assert customers["cus_a"][1] == "finance@acme.io"
    subscriptions = {row[0]: row for row in tables["billing_subscriptions"]}
    assert subscriptions["sub_c"][2:6] == (
        "canceled",
        ts(now - 60 * DAY + 12 * DAY),
        None,
        ts(now - 14 * DAY + DAY // 2),  # canceled in the second of the first pull's subscription cursor
    )
    invoices = {row[0]: row for row in tables["billing_invoices"]}
    assert invoices["in_9"] == ("in_9", "cus_h", None, "paid", 5000, "usd", ts(now - 1800), ts(now - 1700))
    assert {t: r.rows_loaded for t, r in results.items()} == {
        "billing_customers": 7,
        "billing_subscriptions": 6,
        "billing_invoices": 9,
    }

    # Nothing changed since: the cursor's second is read again, and the same snapshot lands.
    seen = len(fake.requests)
    pull(stripe_source(config(fake), landing), landing)
    ingest(landing, warehouse)
    assert set(fake.paths()[seen:]) == {"/v1/events"}
    assert warehouse_tables(warehouse) == tables


def test_rate_limits_server_errors_and_timeouts_are_retried(fake, now, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="beton_pipeline.sources.connectors.stripe_billing")
    fake.rate_limit_next(retry_after="1")
    fake.rate_limit_next(retry_after=formatdate(time.time() + 1, usegmt=True))
    fake.fail_next(500)
    fake.fail_next(503, delay=2.0)  # answered after the client's 1 s timeout
    landing = tmp_path / "landing"

    pull(stripe_source(config(fake, timeout_seconds=1.0, max_attempts=6), landing), landing)
    ingest(landing, tmp_path / "w.duckdb")

    assert warehouse_tables(tmp_path / "w.duckdb") == expected_first_pull(now)
    retries = [r.getMessage() for r in caplog.records if "; attempt " in r.getMessage()]
    # The four scripted failures, in order (a busy machine may add a timeout of its own after them).
    assert [m.split(": ", 2)[2].split(";")[0] for m in retries[:4]] == [
        "HTTP 429",
        "HTTP 429",
        "HTTP 500",
        "no answer (ReadTimeout)",
    ]
    assert "attempt 2 in 1.0 s" in retries[0]


def test_a_malformed_object_lands_and_is_quarantined_with_its_reason(fake, now, tmp_path):
    basic = price("price_basic", 4900, "month")
    tiered = {**price("price_tiered", None, "month"), "billing_scheme": "tiered"}
    fake.add("subscription", subscription("sub_x", "cus_a", "active", "yesterday", [(basic, 1)]), event=False)
    fake.add("subscription", subscription("sub_y", None, "active", now - DAY, [(basic, 1)]), event=False)
    fake.add("subscription", subscription("sub_z", "cus_b", "active", now - DAY, [(tiered, 3)]), event=False)
    landing = tmp_path / "landing"

    pull(stripe_source(config(fake), landing), landing)
    results = ingest(landing, tmp_path / "w.duckdb")

    subs = results["billing_subscriptions"]
    assert (subs.rows_read, subs.rows_loaded, subs.rows_quarantined) == (9, 6, 3)
    assert subs.quarantine_reasons == {
        "created: not a timestamp": 1,
        "customer is empty": 1,
        "plan_amount is empty": 1,
    }
    quarantined = warehouse_tables(tmp_path / "w.duckdb")["quarantine"]
    assert [q[:2] for q in quarantined] == [
        ("billing_subscriptions", "sub_x"),
        ("billing_subscriptions", "sub_y"),
        ("billing_subscriptions", "sub_z"),
    ]


def test_a_pull_failing_mid_listing_raises_and_the_next_pull_completes(fake, now, tmp_path):
    fake.fail_requests("/v1/invoices", 500, times=3, query_contains="starting_after")
    landing = tmp_path / "landing"

    with pytest.raises(ConnectorError) as failed:
        pull(stripe_source(config(fake, max_attempts=3), landing), landing)

    error = failed.value
    assert "GET /v1/invoices failed 3 times (last: HTTP 500)" in str(error)
    assert "sources.stripe.max_attempts" in str(error)
    assert fake.api_key not in full_text(failed.value)
    pull(stripe_source(config(fake, max_attempts=3), landing), landing)
    ingest(landing, tmp_path / "w.duckdb")
    assert warehouse_tables(tmp_path / "w.duckdb") == expected_first_pull(now)


def test_an_incremental_pull_failing_keeps_its_cursor_and_the_next_one_catches_up(fake, now, tmp_path):
    landing, warehouse = tmp_path / "landing", tmp_path / "w.duckdb"
    pull(stripe_source(config(fake), landing), landing)
    change_account(fake, now)
    fake.fail_requests("/v1/events", 500, times=3, query_contains="starting_after")

    with pytest.raises(ConnectorError) as failed:
        pull(stripe_source(config(fake, max_attempts=3), landing), landing)
    assert "GET /v1/events failed 3 times (last: HTTP 500)" in str(failed.value)
    seen = len(fake.requests)
    pull(stripe_source(config(fake), landing), landing)
    ingest(landing, warehouse)

    assert set(fake.paths()[seen:]) == {"/v1/events"}
    assert warehouse_tables(warehouse) == fresh_listing(fake, tmp_path, "fresh")


def test_a_cursor_older_than_stripe_keeps_events_means_a_full_listing(now, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="beton_pipeline.sources.connectors.stripe_billing")
    with FakeStripe() as fake:
        # The newest customer event is 29 days old: still listed by Stripe, past the connector's 28 days.
        fake.seed_sample(now - 27 * DAY)
        monkeypatch.setenv(KEY_ENV, fake.api_key)
        landing = tmp_path / "landing"
        pull(stripe_source(config(fake), landing), landing)
        seen = len(fake.requests)
        pull(stripe_source(config(fake), landing), landing)
        paths = fake.paths()[seen:]

    assert [paths.count(p) for p in LISTS] == [3, 2, 3]
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        "billing_customers: listing every object (the events cursor" in m and "older than 28 days" in m
        for m in messages
    )


def test_a_missing_key_is_named_and_read_only_when_pulling(fake, tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    landing = tmp_path / "landing"
    source = stripe_source(config(fake), landing)  # building the source reads no secret

    with pytest.raises(ConnectorError) as failed:
        pull(source, landing)

    assert KEY_ENV in str(failed.value)
    assert fake.requests == []


def test_a_refused_key_fails_at_once_without_the_key(fake, tmp_path, monkeypatch, caplog):
    wrong = "sk_test_wrong_d0n0tl3ak_4242"
    monkeypatch.setenv(KEY_ENV, wrong)
    landing = tmp_path / "landing"

    with pytest.raises(ConnectorError) as failed:
        pull(stripe_source(config(fake), landing), landing)

    error = failed.value
    assert "HTTP 401" in str(error) and KEY_ENV in str(error)
    assert fake.requests[0].headers["Authorization"] == f"Bearer {wrong}"  # and the fake's 401 body echoes it
    assert wrong not in full_text(failed.value)
    assert wrong not in caplog.text
    assert len(fake.requests) == 1  # not retried
    # The connector's own error holds no trace of the SDK's (whose message has the key), also outside `pull`.
    with pytest.raises(ConnectorError) as direct:
        StripeApi(config(fake), wrong).newest_event_time(("customer.created",))
    assert direct.value.__cause__ is None and direct.value.__suppress_context__
    assert wrong not in full_text(direct.value)


def test_objects_with_several_events_in_one_second_are_read_again(fake, now, tmp_path, caplog):
    """Stripe orders events by `created` only (whole seconds): listed oldest first inside a second, the first
    event seen per object is its oldest, so each object with two events in its newest second is read again."""
    caplog.set_level(logging.INFO, logger="beton_pipeline.sources.connectors.stripe_billing")
    fake.same_second_oldest_first = True
    landing, warehouse = tmp_path / "landing", tmp_path / "w.duckdb"
    pull(stripe_source(config(fake), landing), landing)
    t = now - 600
    # An invoice created and paid in one second; a subscription reactivated and canceled in one second.
    fake.add("invoice", invoice("in_9", "cus_b", None, "open", 5000, t), at=t)
    paid = {"status": "paid", "amount_paid": 5000, "status_transitions": {"paid_at": t}}
    fake.update("invoice", "in_9", event_type="invoice.paid", at=t, **paid)
    fake.update("subscription", "sub_e", at=t + 1, status="active")
    canceled = {"status": "canceled", "canceled_at": t + 1, "ended_at": t + 1}
    fake.update("subscription", "sub_e", event_type="customer.subscription.deleted", at=t + 1, **canceled)
    # Created and deleted in one second: a customer (Stripe answers its deleted stub), a draft invoice (404).
    fake.add("customer", customer("cus_h", "temp@wayne.com", t + 2), at=t + 2)
    fake.delete_customer("cus_h", at=t + 2)
    fake.add("invoice", invoice("in_10", "cus_a", None, "draft", 700, t + 3), at=t + 3)
    fake.delete_invoice("in_10", at=t + 3)
    # Two changes in two seconds: the newest event is known, applied as it is.
    fake.update("customer", "cus_a", at=t + 4, email="ap@acme.io")
    fake.update("customer", "cus_a", at=t + 5, email="finance@acme.io")
    fake.fail_requests("/v1/invoices/in_9", 503, times=1)  # a re-read is retried like a page
    seen = len(fake.requests)

    pull(stripe_source(config(fake), landing), landing)
    ingest(landing, warehouse)

    paths = fake.paths()[seen:]
    tables = warehouse_tables(warehouse)
    invoices = {row[0]: row for row in tables["billing_invoices"]}
    assert invoices["in_9"] == ("in_9", "cus_b", None, "paid", 5000, "usd", ts(t), ts(t))
    assert "in_10" not in invoices
    assert {row[0]: row[2] for row in tables["billing_subscriptions"]}["sub_e"] == "canceled"
    customers = {row[0]: row[1] for row in tables["billing_customers"]}
    assert "cus_h" not in customers and customers["cus_a"] == "finance@acme.io"
    assert tables == fresh_listing(fake, tmp_path, "fresh")
    assert sorted(p for p in paths if p != "/v1/events") == [
        "/v1/customers/cus_h",
        "/v1/invoices/in_10",
        "/v1/invoices/in_9",
        "/v1/invoices/in_9",
        "/v1/subscriptions/sub_e",
    ]
    messages = [r.getMessage() for r in caplog.records]
    assert any("GET /v1/invoices/in_9: HTTP 503; attempt 2" in m for m in messages)
    for table, reread in (("billing_customers", 1), ("billing_subscriptions", 1), ("billing_invoices", 2)):
        assert any(m.startswith(f"stripe: {table}: ") and f"; {reread} changed objects re-read" in m for m in messages)


def test_more_objects_to_read_again_than_a_listing_costs_lists_the_table(fake, now, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="beton_pipeline.sources.connectors.stripe_billing")
    fake.same_second_oldest_first = True
    landing = tmp_path / "landing"
    pull(stripe_source(config(fake), landing), landing)
    for cid in ("cus_a", "cus_b", "cus_c", "cus_d", "cus_e"):
        fake.update("customer", cid, at=now - 600, email=f"old@{cid}.io")
        fake.update("customer", cid, at=now - 600, email=f"new@{cid}.io")
    seen = len(fake.requests)

    pull(stripe_source(config(fake), landing), landing)
    ingest(landing, tmp_path / "w.duckdb")

    paths = fake.paths()[seen:]
    tables = warehouse_tables(tmp_path / "w.duckdb")
    assert [row[1] for row in tables["billing_customers"]][:5] == [f"new@cus_{c}.io" for c in "abcde"]
    assert tables == fresh_listing(fake, tmp_path, "fresh")
    # 7 landed customers in pages of 3: a listing takes 3 pages and 1 request for its cursor, fewer than 5 re-reads.
    assert [paths.count(p) for p in LISTS] == [3, 0, 0]
    assert not [p for p in paths if p.count("/") == 3]
    assert (
        "stripe: billing_customers: listing every object (5 changed objects to read again, more requests than "
        "listing the table (4))" in caplog.text
    )


def _deleted(files: list[Path], earlier: dict[str, bytes]) -> None:
    for f in files:
        f.unlink()


def _truncated(files: list[Path], earlier: dict[str, bytes]) -> None:
    files[0].write_bytes(files[0].read_bytes()[: files[0].stat().st_size // 2])


def _row_removed(files: list[Path], earlier: dict[str, bytes]) -> None:
    """sub_d (no event since) taken out of the file, which keeps its name."""
    table = pq.read_table(files[0])
    pq.write_table(table.filter(pc.field("id") != "sub_d"), files[0])


def _earlier_load_restored(files: list[Path], earlier: dict[str, bytes]) -> None:
    """The folder as the first pull left it (a landing folder restored from an older copy)."""
    _deleted(files, earlier)
    for name, data in earlier.items():
        files[0].with_name(name).write_bytes(data)


DAMAGED = {
    "deleted, truncated, a row taken out": {
        "billing_customers": (_deleted, "are missing from"),
        "billing_invoices": (_truncated, "cannot be read (ArrowInvalid)"),
        "billing_subscriptions": (_row_removed, "holds 5 rows, but the last pull landed 6"),
    },
    "an earlier load restored": {"billing_customers": (_earlier_load_restored, "the newest load in")},
}


@pytest.mark.parametrize("damaged", DAMAGED.values(), ids=DAMAGED.keys())
def test_a_landed_snapshot_not_as_landed_means_a_full_listing_of_its_table(fake, now, tmp_path, caplog, damaged):
    caplog.set_level(logging.INFO, logger="beton_pipeline.sources.connectors.stripe_billing")
    landing = tmp_path / "landing"
    folders = {table: source_dir("stripe", landing) / table for table in TABLES}
    pull(stripe_source(config(fake), landing), landing)
    earlier = {table: {f.name: f.read_bytes() for f in folder.glob("*.parquet")} for table, folder in folders.items()}
    # Changes applied from the events by the second pull; cus_b's before the customers' next cursor (cus_c's).
    fake.update("customer", "cus_b", at=now - DAY, email="ap@globex.com")
    fake.update("customer", "cus_c", at=now - DAY + 60, email="ap@initech.com")
    fake.update("subscription", "sub_f", at=now - DAY, status="past_due")
    paid = {"status": "paid", "amount_paid": 9000, "status_transitions": {"paid_at": now - DAY}}
    fake.update("invoice", "in_4", event_type="invoice.paid", at=now - DAY, **paid)
    pull(stripe_source(config(fake), landing), landing)
    for table, (damage, _) in damaged.items():
        damage(sorted(folders[table].glob("*.parquet")), earlier[table])
    fake.add("customer", customer("cus_h", "new@wayne.com", now - 600), at=now - 600)
    fake.update("subscription", "sub_a", event_type="customer.subscription.deleted", at=now - 600, status="canceled")
    fake.add("invoice", invoice("in_9", "cus_h", None, "open", 5000, now - 600), at=now - 600)
    seen = len(fake.requests)

    pull(stripe_source(config(fake), landing), landing)
    ingest(landing, tmp_path / "w.duckdb")

    paths = fake.paths()[seen:]
    tables = warehouse_tables(tmp_path / "w.duckdb")
    assert ("cus_b", "ap@globex.com") in [row[:2] for row in tables["billing_customers"]]
    assert len(tables["billing_subscriptions"]) == 6
    assert tables == fresh_listing(fake, tmp_path, "fresh")
    assert {p for p in LISTS if p in paths} == {LIST_OF[table] for table in damaged}
    warned = sorted(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert len(warned) == len(damaged)
    for message, (table, (_, reason)) in zip(warned, sorted(damaged.items()), strict=True):
        assert message.startswith(f"stripe: {table}: the landed snapshot is not what the last pull landed: ")
        assert reason in message


def test_a_list_that_ignores_starting_after_stops_with_an_error(fake, now, tmp_path):
    landing = tmp_path / "landing"
    pull(stripe_source(config(fake), landing), landing)
    change_account(fake, now)  # 4 customer events since the cursor: 2 pages of 3
    fake.ignore_starting_after = True
    seen = len(fake.requests)

    with pytest.raises(ConnectorError) as failed:
        pull(stripe_source(config(fake), landing), landing)

    assert re.search(
        r"stripe: GET /v1/events does not page: page 2 \(starting_after=evt_\d+\) ends with evt_\d+, already "
        r"returned; stopped after 2 pages and 3 distinct objects",
        str(failed.value),
    )
    assert len(fake.requests) - seen <= 4  # 1 page of subscription events, 1 of invoice events, 2 of customer events
    assert fake.api_key not in full_text(failed.value)

    # A first pull's listing: the first list asked for a second page stops there.
    fresh = tmp_path / "fresh"
    seen = len(fake.requests)
    with pytest.raises(ConnectorError) as failed:
        pull(stripe_source(config(fake), fresh), fresh)
    found = re.search(
        r"stripe: GET (/v1/\w+) does not page: page 2 \(starting_after=\w+\) ends with \w+, already returned; "
        r"stopped after 2 pages and 3 distinct objects",
        str(failed.value),
    )
    assert found and found[1] in LISTS
    assert fake.paths()[seen:].count(found[1]) == 2
    assert len(fake.requests) - seen <= 9  # at most a cursor and 2 pages per table


def test_retry_wait_reads_seconds_and_http_dates_and_caps_them():
    cfg = StripeConfig(backoff_seconds=0.5, max_wait_seconds=60.0)
    at = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_wait("2", 1, cfg, at) == 2.0
    assert retry_wait("Thu, 01 Jan 2026 12:00:30 GMT", 1, cfg, at) == 30.0
    assert retry_wait("Thu, 01 Jan 2026 11:00:00 GMT", 1, cfg, at) == 0.0
    assert retry_wait("600", 1, cfg, at) == 60.0
    assert retry_wait(None, 3, cfg, at) == 2.0
    assert retry_wait("soon", 2, cfg, at) == 1.0


def test_plan_amount_sums_items_of_one_billing_period(caplog):
    month, seat = price("price_m", 4900, "month"), price("price_seat", 1500, "month")
    year, eur = price("price_y", 99000, "year"), price("price_eur", 900, "month", currency="eur")

    assert subscription_plan(subscription("sub_1", "c", "active", 1, [(month, 1), (seat, 3)])) == (
        9400,
        "month",
        1,
        "usd",
    )
    with caplog.at_level(logging.WARNING):
        mixed = subscription_plan(subscription("sub_2", "c", "active", 1, [(month, 2), (year, 1), (eur, 1)]))
    assert mixed == (9800, "month", 1, "usd")
    assert "sub_2: plan_amount counts 1 of its 3 items" in caplog.text
    legacy = subscription("sub_3", "c", "active", 1, [(month, 2)])
    item = legacy["items"]["data"][0]
    item["plan"] = {"amount": 3000, "currency": "usd", "interval": "week", "interval_count": 2}
    del item["price"]
    assert subscription_plan(legacy) == (6000, "week", 2, "usd")
    assert subscription_plan(subscription("sub_4", "c", "active", 1, [])) == (None, None, None, "usd")


def test_invoice_subscription_reads_the_old_and_the_new_place():
    old = invoice("in_1", "c", "sub_old", "paid", 1, 1, shape="old")
    new = invoice("in_2", "c", "sub_new", "paid", 1, 1)
    expanded = {**new, "parent": {"subscription_details": {"subscription": {"id": "sub_exp", "object": "x"}}}}
    assert [invoice_subscription(i) for i in (old, new, expanded)] == ["sub_old", "sub_new", "sub_exp"]
    assert invoice_subscription(invoice("in_3", "c", None, "draft", 1, 1)) is None
    assert invoice_subscription(invoice("in_4", "c", None, "draft", 1, 1, shape="old")) is None
