"""A contract export served by the three vendor fakes: what beton's files say, as PostHog, Attio and Stripe
would answer it, so that a run pulling the fakes can be compared with a run reading the files.

The export is ingested first (`ingest_table`, into a scratch DuckDB), so the fakes hold exactly the rows a file
run loads (bad rows are the connector tests' business), typed. Then:

* PostHog: one event per `raw_events` row (`properties` and person properties as objects, times in UTC);
* Stripe: customers, subscriptions (one licensed price of the plan amount, its interval and count) and invoices
  (half in the API's older shape with a top-level `subscription`, half in the newer `parent` shape);
* Attio: companies (domain, industry as a category, employee count), people (e-mail, company), deals (value,
  owner, and their stage history from `crm_deal_stage_changes`, or the current stage alone when it has none).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from beton_pipeline.sources.contract import TABLES
from beton_pipeline.sources.ingest import ingest_table
from beton_pipeline.warehouse import connect
from tests.fakes.attio_api import FakeAttioRecords, member
from tests.fakes.posthog_api import FakePostHog
from tests.fakes.s3 import FakeS3
from tests.fakes.stripe_api import FakeStripe, customer, invoice, price, subscription


def _rows(con, table: str) -> list[dict]:
    """A raw table's contract columns, row by row (absent optional table: no rows)."""
    spec = next(s for s in TABLES if s.name == table)
    if not con.sql(
        f"select 1 from duckdb_tables() where schema_name = 'raw' and table_name = 'raw_{table}'"
    ).fetchall():
        return []
    present = set(con.table(f"raw.raw_{table}").columns)
    names = [c.name for c in spec.columns if c.name in present]
    columns = ", ".join(f'"{n}"' for n in names)
    rows = con.sql(f"select {columns} from raw.raw_{table}").fetchall()
    return [dict(zip(names, row, strict=True)) for row in rows]


def _epoch(value: datetime | None) -> int | None:
    return None if value is None else int(value.replace(tzinfo=value.tzinfo or UTC).timestamp())


def _attio_time(value: datetime) -> str:
    return value.replace(tzinfo=None).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def _json(text: str | None) -> dict:
    return json.loads(text) if text else {}


def read_export(source: Path, scratch: Path) -> dict[str, list[dict]]:
    """Every contract table of `source` as the rows a file run loads (typed), by table name."""
    with connect(scratch) as con:
        for spec in TABLES:
            ingest_table(con, source, spec, incremental=False)
        return {spec.name: _rows(con, spec.name) for spec in TABLES}


def posthog_uuid(event_id: str) -> str:
    """The id an event has in PostHog, whose `uuid` column holds UUIDs only: the export's id when it is one, else a
    UUID made from it (an export re-encoded from elsewhere may number its events `evt-00000001`)."""
    try:
        return str(uuid.UUID(event_id))
    except ValueError:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, event_id))


def serve_posthog(fake: FakePostHog, rows: list[dict]) -> int:
    """Events into the PostHog fake (ids as `posthog_uuid`); the number added."""
    fake.add(
        [
            {
                "uuid": posthog_uuid(r["uuid"]),
                "event": r["event"],
                "timestamp": r["timestamp"].replace(tzinfo=UTC).isoformat().replace("+00:00", "Z"),
                "distinct_id": r["distinct_id"],
                "properties": _json(r["properties"]),
                "person_properties": _json(r["person_properties"]),
            }
            for r in rows
        ]
    )
    return len(rows)


def serve_s3_export(fake: FakeS3, rows: list[dict], monthly: bool = False) -> int:
    """Events as a daily (or `monthly`) PostHog batch export in the S3 fake: one Parquet (zstd) object per day (or
    month) of events, named for its interval as PostHog names it (ids as `posthog_uuid`, properties as stored JSON
    text); objects written."""
    days: dict = {}
    for r in rows:
        day = r["timestamp"].date()
        days.setdefault(day.replace(day=1) if monthly else day, []).append(r)
    for day, events in sorted(days.items()):
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        end = datetime(day.year + day.month // 12, day.month % 12 + 1, 1, tzinfo=UTC) if monthly else None
        exported = [
            {
                "uuid": posthog_uuid(r["uuid"]),
                "timestamp": r["timestamp"].replace(tzinfo=UTC),
                "_inserted_at": r["timestamp"].replace(tzinfo=UTC),
                "created_at": r["timestamp"].replace(tzinfo=UTC),
                "event": r["event"],
                "properties": r["properties"],
                "distinct_id": r["distinct_id"],
                "elements_chain": "",
                "person_properties": r["person_properties"],
                "person_id": None,
            }
            for r in events
        ]
        fake.put_export(exported, start, end or start + timedelta(days=1), compression="zstd")
    return len(days)


def serve_stripe(fake: FakeStripe, tables: dict[str, list[dict]]) -> None:
    """Customers, subscriptions and invoices into the Stripe fake, each with its `created` event, one second apart
    after the fake's clock (changes spread in time, not all in one second)."""
    for r in tables["billing_customers"]:
        fake.add(
            "customer", customer(r["id"], r["email"], _epoch(r["created"]), _json(r["metadata"])), at=fake.clock + 1
        )
    for r in tables["billing_subscriptions"]:
        plan = price(
            f"price_{r['id']}",
            r["plan_amount"],
            r["plan_interval"],
            r.get("plan_interval_count") or 1,
            r["currency"],
        )
        obj = subscription(
            r["id"],
            r["customer"],
            r["status"],
            _epoch(r["created"]),
            [(plan, 1)],
            trial_end=_epoch(r["trial_end"]),
            canceled_at=_epoch(r["canceled_at"]),
        )
        fake.add("subscription", obj, at=fake.clock + 1)
    for n, r in enumerate(tables["billing_invoices"]):
        obj = invoice(
            r["id"],
            r["customer"],
            r["subscription"],
            r["status"],
            r["amount_paid"],
            _epoch(r["created"]),
            paid_at=_epoch(r["paid_at"]),
            currency=r["currency"],
            shape="old" if n % 2 else "basil",
        )
        fake.add("invoice", obj, at=fake.clock + 1)


def serve_attio(fake: FakeAttioRecords, tables: dict[str, list[dict]]) -> None:
    """Companies, people and deals (with their stage history) into the Attio fake."""
    for r in tables["crm_companies"]:
        fake.add_company(
            r["record_id"],
            r["name"],
            [r["domain"]] if r["domain"] else [],
            created_at=_attio_time(r["created_at"]),
            categories=[r["industry"]] if r["industry"] else [],
            employee_count=r["employee_count"],
        )
    for r in tables["crm_people"]:
        fake.add_person(
            r["record_id"],
            [r["email"]] if r["email"] else [],
            r["company_record_id"],
            created_at=_attio_time(r["created_at"]),
        )
    history: dict[str, list[tuple[str, str]]] = {}
    for r in sorted(tables["crm_deal_stage_changes"], key=lambda r: r["changed_at"]):
        history.setdefault(r["deal_record_id"], []).append((r["stage"], _attio_time(r["changed_at"])))
    for r in tables["crm_deals"]:
        stages = history.get(r["record_id"]) or [(r["stage"], _attio_time(r["created_at"]))]
        fake.add_deal(
            r["record_id"],
            r["name"],
            r["company_record_id"],
            stages,
            created_at=_attio_time(r["created_at"]),
            amount=float(r["value"] or 0),
            currency=(r["currency"] or "usd").upper(),
            owner=member(r["owner"] or "nobody"),
        )


@contextmanager
def serving_vendors(
    export: dict[str, list[dict]], keys: dict[str, str], clock_behind_seconds: int, **posthog: object
) -> Iterator[tuple[dict, dict]]:
    """The three fakes serving `export` (`read_export`'s tables) with `keys` (env var → key), Stripe's clock
    `clock_behind_seconds` behind now; yields (name → fake, the `sources:` settings that pull them, PostHog's
    section with `posthog` added)."""
    with (
        FakePostHog(keys["BETON_POSTHOG_API_KEY"], "1") as posthog_fake,
        FakeAttioRecords(keys["BETON_ATTIO_API_KEY"]) as attio,
        FakeStripe(keys["BETON_STRIPE_API_KEY"]) as stripe,
    ):
        serve_posthog(posthog_fake, export["events"])
        serve_attio(attio, export)
        stripe.clock = int(time.time()) - clock_behind_seconds
        serve_stripe(stripe, export)
        sources = {
            "posthog": {"enabled": True, "host": posthog_fake.url, "project_id": "1", **posthog},
            "attio": {"enabled": True, "api_base": attio.url},
            "stripe": {"enabled": True, "api_base": stripe.url},
        }
        yield {"posthog": posthog_fake, "attio": attio, "stripe": stripe}, sources
