"""Connectors end to end: `beton run` pulls PostHog, Attio and Stripe (local fakes serving a demo export through
their real APIs' shapes), ingests what they landed with the files' validation, and discovery runs on it; the next
`beton run` pulls only what is new. No BETON_SOURCE_DIR: every table comes from the connectors (intent signals,
which no connector pulls, are absent).

The fakes hold exactly the rows a run on the export's files loads (`tests/fakes/vendors.py`), so the pulled raw
tables are compared with those rows, column by column. A known value in every connector key: none is found in
the output, the Dagster instance's files, the warehouse or the landed files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest
import yaml

from beton_pipeline.settings import PROJECT_ROOT
from beton_pipeline.sources.demo import generate_demo
from tests.e2e.conftest import BETON, RUN_TIMEOUT
from tests.fakes.attio_api import FakeAttioRecords
from tests.fakes.posthog_api import FakePostHog
from tests.fakes.stripe_api import FakeStripe
from tests.fakes.vendors import read_export, serve_attio, serve_posthog, serve_stripe

pytestmark = pytest.mark.slow(seconds=150)

KEYS = {
    "BETON_POSTHOG_API_KEY": "phx_SECRET_connectors_1a2b",
    "BETON_ATTIO_API_KEY": "attio-SECRET-connectors-3c4d",
    "BETON_STRIPE_API_KEY": "sk_test_SECRET_connectors_5e6f",
}
PROJECT = "4242"
NEW_EVENTS = 5


SAME_COLUMNS = {
    "crm_companies": ["record_id", "name", "domain", "employee_count", "industry", "created_at"],
    "crm_people": ["record_id", "email", "company_record_id", "created_at"],
    "crm_deals": ["record_id", "company_record_id", "name", "value", "currency"],
    "crm_deal_stage_changes": ["deal_record_id", "stage", "changed_at"],
    "billing_customers": ["id", "email", "created"],
    "billing_invoices": ["id", "customer", "subscription", "status", "amount_paid", "currency", "created", "paid_at"],
}


def _raw(warehouse: str, table: str, columns: list[str]) -> set[tuple]:
    with duckdb.connect(warehouse, read_only=True) as con:
        return set(con.sql(f"select {', '.join(columns)} from raw.raw_{table}").fetchall())


@dataclass
class PulledRuns:
    base: Path
    env: dict[str, str]
    export: dict[str, list[dict]]
    first: subprocess.CompletedProcess
    second: subprocess.CompletedProcess
    after_first: dict[str, set[tuple]]
    first_events: dict[str, tuple]
    first_quarantine: list[tuple]
    first_signals: int
    posthog_second: list
    stripe_second: list[str]
    attio_second: list[str]
    canceled: str
    moved: str

    @property
    def warehouse(self) -> str:
        return self.env["BETON_WAREHOUSE"]


def _run(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([BETON, "run"], env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def pulled(tmp_path_factory) -> PulledRuns:
    base = tmp_path_factory.mktemp("connectors")
    generate_demo(base / "export", n_accounts=300, seed=5, months=4)
    export = read_export(base / "export", base / "scratch.duckdb")
    now = int(time.time())
    with ExitStack() as stack:
        posthog = stack.enter_context(FakePostHog(KEYS["BETON_POSTHOG_API_KEY"], PROJECT))
        attio = stack.enter_context(FakeAttioRecords(KEYS["BETON_ATTIO_API_KEY"]))
        stripe = stack.enter_context(FakeStripe(KEYS["BETON_STRIPE_API_KEY"]))
        serve_posthog(posthog, export["events"])
        serve_attio(attio, export)
        stripe.clock = now - 3600
        serve_stripe(stripe, export)
        home = base / "home"
        home.mkdir()
        shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
        settings = {
            "sources": {
                "landing_dir": str(base / "pulled"),
                "posthog": {
                    "enabled": True,
                    "host": posthog.url,
                    "project_id": PROJECT,
                    "page_size": 5000,
                    "start": "2024-12-01T00:00:00Z",
                },
                "attio": {"enabled": True, "api_base": attio.url, "page_size": 100},
                "stripe": {"enabled": True, "api_base": stripe.url},
            }
        }
        config = base / "beton.yaml"
        config.write_text(yaml.safe_dump(settings))
        env = {k: v for k, v in os.environ.items() if k != "BETON_SOURCE_DIR"}
        env |= {
            **KEYS,
            "BETON_CONFIG": str(config),
            "BETON_WAREHOUSE": str(base / "pulled.duckdb"),
            "DAGSTER_HOME": str(home),
        }
        first = _run(env, base)
        after_first = {table: _raw(env["BETON_WAREHOUSE"], table, columns) for table, columns in SAME_COLUMNS.items()}
        with duckdb.connect(env["BETON_WAREHOUSE"], read_only=True) as con:
            first_events = {
                u: (e, t, d, json.loads(p or "{}"), json.loads(q or "{}"))
                for u, e, t, d, p, q in con.sql(
                    "select uuid, event, timestamp, distinct_id, properties, person_properties from raw.raw_events"
                ).fetchall()
            }
            first_quarantine = con.sql("select source_table, reason from beton.quarantine").fetchall()
            (first_signals,) = con.sql("select count(*) from beton.signals").fetchall()[0]

        # The next day: a few new events, a canceled subscription, a deal that moved.
        latest = max(r["timestamp"] for r in export["events"])
        template = export["events"][-1]
        serve_posthog(
            posthog,
            [
                {**template, "uuid": f"00000000-0000-4000-8000-00000000000{n}", "timestamp": latest.replace(second=n)}
                for n in range(NEW_EVENTS)
            ],
        )
        canceled = next(r["id"] for r in export["billing_subscriptions"] if r["status"] == "active")
        stripe.update(
            "subscription",
            canceled,
            event_type="customer.subscription.deleted",
            at=now,
            status="canceled",
            canceled_at=now,
        )
        moved = next(r["record_id"] for r in export["crm_deals"] if r["status"] == "open")
        attio.move_deal(moved, "won", "2025-05-01T12:00:00.000000000Z")
        queries_before, stripe_before, attio_before = len(posthog.queries), len(stripe.requests), len(attio.requests)
        second = _run(env, base)
        return PulledRuns(
            base,
            env,
            export,
            first,
            second,
            after_first,
            first_events,
            first_quarantine,
            first_signals,
            posthog.queries[queries_before:],
            [r.path.split("?")[0] for r in stripe.requests[stripe_before:]],
            [r.path.split("?")[0] for r in attio.requests[attio_before:]],
            canceled,
            moved,
        )


def _expected(pulled: PulledRuns, table: str, columns: list[str]) -> set[tuple]:
    return {tuple(r[c] for c in columns) for r in pulled.export[table]}


def test_the_first_run_lands_what_the_files_would_load_and_discovery_runs(pulled):
    """Every pulled table holds the export's loaded rows (the events' JSON compared as JSON), none of them
    quarantined, and discovery tested candidates on them."""
    export_events = {
        r["uuid"]: (
            r["event"],
            r["timestamp"],
            r["distinct_id"],
            json.loads(r["properties"] or "{}"),
            json.loads(r["person_properties"] or "{}"),
        )
        for r in pulled.export["events"]
    }
    assert pulled.first_events == export_events
    for table, columns in SAME_COLUMNS.items():
        assert pulled.after_first[table] == _expected(pulled, table, columns), table
    assert pulled.first_quarantine == []
    assert pulled.first_signals > 0


def test_the_next_run_pulls_only_what_is_new(pulled):
    """PostHog is asked from an hour before the newest event landed (the overlap), Stripe only for the events since
    its cursor, Attio for the stage history of the one deal that moved; the tables take the changes."""
    rows_asked = sum(q.rows for q in pulled.posthog_second)
    assert NEW_EVENTS <= rows_asked < len(pulled.export["events"]) / 10
    latest = max(r["timestamp"] for r in pulled.export["events"])
    starts = [
        datetime.fromisoformat(v.replace("Z", "+00:00")).replace(tzinfo=None)
        for q in pulled.posthog_second
        for v in q.values.values()
        if isinstance(v, str) and v[:2] == "20"
    ]
    assert starts and min(starts) >= latest - timedelta(minutes=61)
    assert set(pulled.stripe_second) == {"/v1/events"}
    history = [p for p in pulled.attio_second if p.endswith("/attributes/stage/values")]
    assert history == [f"/v2/objects/deals/records/{pulled.moved}/attributes/stage/values"]
    with duckdb.connect(pulled.warehouse, read_only=True) as con:
        (events,) = con.sql("select count(*) from raw.raw_events").fetchall()[0]
        (status,) = con.sql(
            f"select status from raw.raw_billing_subscriptions where id = '{pulled.canceled}'"
        ).fetchall()[0]
        (deal,) = con.sql(f"select status from raw.raw_crm_deals where record_id = '{pulled.moved}'").fetchall()[0]
        (quarantined,) = con.sql("select count(*) from beton.quarantine").fetchall()[0]
    assert events == len(pulled.export["events"]) + NEW_EVENTS
    assert (status, deal, quarantined) == ("canceled", "won", 0)


def test_no_connector_key_anywhere(pulled):
    """Neither the output of either run, the Dagster instance's files, the warehouse nor the landed files hold a key."""
    texts = {
        f"{name} {stream}": getattr(done, stream)
        for name, done in (("first", pulled.first), ("second", pulled.second))
        for stream in ("stdout", "stderr")
    }
    for folder in (Path(pulled.env["DAGSTER_HOME"]), pulled.base / "pulled"):
        for path in folder.rglob("*"):
            if path.is_file():
                texts[str(path.relative_to(pulled.base))] = path.read_bytes().decode("utf-8", errors="replace")
    with duckdb.connect(pulled.warehouse, read_only=True) as con:
        tables = [
            f"{s}.{t}" for s, t in con.sql("select table_schema, table_name from information_schema.tables").fetchall()
        ]
        texts["warehouse"] = "\n".join(str(con.sql(f"select * from {t}").fetchall()) for t in tables)
    assert any("pulled/posthog/events/" in where for where in texts)
    for key in KEYS.values():
        for where, text in texts.items():
            assert key not in text, f"{key[:12]}… found in {where}"
