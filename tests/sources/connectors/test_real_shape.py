"""The connectors on data nobody on the project wrote: the telecom churn data set re-encoded into the contract
(`sources/shapes/churn.py`: identity by e-mail, no deals, few invoices), served by the three fakes through the
APIs' shapes and pulled: every pulled table loads exactly the rows the export's files load."""

from __future__ import annotations

import json

import duckdb
import pytest

from beton_pipeline.settings import Settings
from beton_pipeline.sources.connectors import TABLES_BY_SOURCE
from beton_pipeline.sources.connectors.common import pull, source_dir
from beton_pipeline.sources.connectors.posthog_batch import ACCESS_KEY_ENV, SECRET_KEY_ENV
from beton_pipeline.sources.connectors.registry import connector_source
from beton_pipeline.sources.contract import TABLES_BY_NAME
from beton_pipeline.sources.ingest import ingest_table
from beton_pipeline.sources.shapes.churn import generate_churn
from beton_pipeline.warehouse import connect
from tests.fakes.s3 import FakeS3
from tests.fakes.vendors import posthog_uuid, read_export, serve_s3_export, serving_vendors

pytestmark = pytest.mark.slow(seconds=50)

KEYS = {"BETON_POSTHOG_API_KEY": "phx_shape", "BETON_ATTIO_API_KEY": "attio-shape", "BETON_STRIPE_API_KEY": "sk_test_s"}
COMPARED = {  # the columns a pull carries over as they are (Attio's deal owner and status are derived: no deals here)
    "crm_companies": ["record_id", "name", "domain", "employee_count", "industry", "created_at"],
    "crm_people": ["record_id", "email", "company_record_id", "created_at"],
    "billing_customers": ["id", "email", "created", "metadata"],
    # a Stripe price always states its interval_count; the export leaves it out, which the contract reads as 1
    "billing_subscriptions": [
        "coalesce(plan_interval_count, 1)" if c.name == "plan_interval_count" else c.name
        for c in TABLES_BY_NAME["billing_subscriptions"].columns
    ],
    "billing_invoices": ["id", "customer", "subscription", "status", "amount_paid", "currency", "created", "paid_at"],
}


@pytest.fixture(scope="module")
def churn(tmp_path_factory) -> dict[str, list[dict]]:
    """The churn data set's export, as a file run loads each table."""
    out = tmp_path_factory.mktemp("churn")
    generate_churn(out / "export")
    return read_export(out / "export", out / "files.duckdb")


def test_the_churn_data_set_pulled_through_the_three_apis_loads_as_its_files_do(tmp_path, monkeypatch, churn):
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    export = churn
    with serving_vendors(export, KEYS, 7200, page_size=50_000, start="2000-01-01T00:00:00Z") as (_, sources):
        settings = Settings.model_validate({"sources": sources})
        landing = tmp_path / "pulled"
        for name in TABLES_BY_SOURCE:
            pull(connector_source(name, settings.connector_config(name), landing), landing)
    with connect(tmp_path / "pulled.duckdb") as con:
        for name, tables in TABLES_BY_SOURCE.items():
            for table in tables:
                result = ingest_table(con, source_dir(name, landing), TABLES_BY_NAME[table])
                assert result.rows_quarantined == 0 and result.rows_loaded == len(export[table]), table
    with duckdb.connect(str(tmp_path / "pulled.duckdb"), read_only=True) as con:
        for table, columns in COMPARED.items():
            pulled = set(con.sql(f"select {', '.join(columns)} from raw.raw_{table}").fetchall())
            files = {tuple(r.get(c, r.get("plan_interval_count") or 1) for c in columns) for r in export[table]}
            if pulled != files:
                (a, *_), (b, *_) = sorted(pulled - files), sorted(files - pulled)
                raise AssertionError(f"{table}: {[(c, x, y) for c, x, y in zip(columns, a, b, strict=True) if x != y]}")
        events = {
            u: (e, t, d, json.loads(p or "{}"), json.loads(q or "{}"))
            for u, e, t, d, p, q in con.sql(
                "select uuid, event, timestamp, distinct_id, properties, person_properties from raw.raw_events"
            ).fetchall()
        }
    assert events == {
        posthog_uuid(r["uuid"]): (
            r["event"],
            r["timestamp"],
            r["distinct_id"],
            json.loads(r["properties"] or "{}"),
            json.loads(r["person_properties"] or "{}"),
        )
        for r in export["events"]
    }


def test_the_churn_events_read_from_a_batch_export_load_as_their_files_do(tmp_path, monkeypatch, churn):
    """The same events as a monthly PostHog batch export on S3 (moto): every event lands once, none quarantined."""
    with FakeS3() as s3:
        monkeypatch.setenv(ACCESS_KEY_ENV, s3.access_key)
        monkeypatch.setenv(SECRET_KEY_ENV, s3.secret_key)
        objects = serve_s3_export(s3, churn["events"], monthly=True)
        export = {"bucket": s3.bucket, "prefix": "posthog/", "endpoint_url": s3.url, "max_objects": 100_000}
        settings = Settings.model_validate({"sources": {"posthog": {"enabled": True, "batch_export": export}}})
        landing = tmp_path / "pulled"
        pull(connector_source("posthog", settings.connector_config("posthog"), landing), landing)
    assert objects > 10  # one a month: the churn events span years
    with connect(tmp_path / "pulled.duckdb") as con:
        result = ingest_table(con, source_dir("posthog", landing), TABLES_BY_NAME["events"])
        pulled = sorted(
            con.sql("select uuid, event, timestamp, distinct_id, properties from raw.raw_events").fetchall()
        )
    assert (result.rows_loaded, result.rows_quarantined) == (len(churn["events"]), 0)
    files = sorted(
        (posthog_uuid(r["uuid"]), r["event"], r["timestamp"], r["distinct_id"], r["properties"])
        for r in churn["events"]
    )
    assert pulled == files
