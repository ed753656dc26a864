"""The export-shape generators write what they promise (fast: small sizes, no pipeline run)."""

import csv
import gzip
import io
import json
import re
from datetime import datetime

import numpy as np
import polars as pl
import pytest

from beton_pipeline.sources.shapes.churn import COUNT_EVENTS, PLAN_EVENTS, generate_churn, known_effects, load_customers
from beton_pipeline.sources.shapes.minimal import LULL_DAYS, generate_minimal

REQUIRED = {"events", "crm_companies", "crm_people", "billing_customers", "billing_subscriptions", "billing_invoices"}


@pytest.fixture(scope="module")
def minimal(tmp_path_factory):
    out = tmp_path_factory.mktemp("minimal")
    summary = generate_minimal(out, n_accounts=200, seed=3)
    text = gzip.decompress((out / "events.csv.gz").read_bytes()).decode()
    return out, summary, json.loads(summary.truth_path.read_text()), list(csv.DictReader(io.StringIO(text)))


def test_minimal_has_only_the_required_tables_and_columns(minimal):
    out, summary, _, events = minimal
    assert {p.name.split(".")[0] for p in out.iterdir() if p.name != "TRUTH.json"} == REQUIRED
    assert list(events[0]) == ["uuid", "event", "timestamp", "distinct_id", "person_properties"]
    assert pl.read_csv(out / "billing_customers.csv").columns == ["id", "email", "created"]
    assert pl.read_csv(out / "crm_companies.csv").columns == ["record_id", "name", "domain", "created_at"]
    assert summary.rows["events"] == len(events)


def test_minimal_identity_is_email_on_identify_only(minimal):
    out, _, truth, events = minimal
    with_email = [e for e in events if e["person_properties"]]
    assert {e["event"] for e in with_email} == {"$identify"}
    assert len(with_email) == truth["users"] == len({e["distinct_id"] for e in events})
    assert "$groups" not in "".join(e["person_properties"] for e in events)
    emails = {json.loads(e["person_properties"])["email"] for e in with_email}
    free = {m for m in emails if m.split("@")[1] in {"gmail.com", "outlook.com", "yahoo.com", "proton.me"}}
    people = set(pl.read_csv(out / "crm_people.csv")["email"])
    assert len(free) == truth["free_mail_users"] > 0
    assert free <= people  # free-mail users are known only through crm_people
    outsiders = {e["distinct_id"] for e in with_email if json.loads(e["person_properties"])["email"] not in people}
    assert len(outsiders) > 0  # some company-mail users are in no CRM list
    later = [e for e in events if e["distinct_id"] in outsiders and e["event"] != "$identify"]
    assert truth["unresolvable_events"] == len(later) > 0


def test_minimal_timestamps_carry_zone_offsets_and_order_is_kept(minimal):
    _, _, _, events = minimal
    offsets = {e["timestamp"][-6:] for e in events}
    assert {"+05:30", "-08:00", "+00:00"} <= offsets
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", e["timestamp"]) for e in events)
    instants = [datetime.fromisoformat(e["timestamp"]).timestamp() for e in events]
    assert instants == sorted(instants)


def test_minimal_has_a_lull_in_new_billing_customers(minimal):
    out, _, truth, events = minimal
    newest_customer = pl.read_csv(out / "billing_customers.csv")["created"].max()
    as_of = max(datetime.fromisoformat(e["timestamp"]).timestamp() for e in events)
    assert (as_of - newest_customer) / 86_400 >= LULL_DAYS
    assert truth["days_since_newest_billing_customer"] == pytest.approx((as_of - newest_customer) / 86_400, abs=0.01)
    newest_invoice = pl.read_csv(out / "billing_invoices.csv")["paid_at"].max()
    assert as_of - newest_invoice < 35 * 86_400  # payments keep arriving: only new customers pause


def test_minimal_company_names_need_csv_quoting(minimal):
    out, _, _, _ = minimal
    raw = (out / "crm_companies.csv").read_text(encoding="utf-8")
    names = pl.read_csv(out / "crm_companies.csv")["name"].to_list()
    assert any("," in n for n in names) and any('"' in n for n in names)
    assert any(any(ord(c) > 127 for c in n) for n in names)
    assert '""' in raw  # quotes doubled inside quoted fields, as CSV writes them


def test_minimal_is_deterministic(tmp_path):
    a = generate_minimal(tmp_path / "a", n_accounts=60, seed=5)
    b = generate_minimal(tmp_path / "b", n_accounts=60, seed=5)
    for name in ("events.csv.gz", "crm_companies.csv", "billing_invoices.csv"):
        assert (a.out_dir / name).read_bytes() == (b.out_dir / name).read_bytes()


def test_churn_known_effects_match_a_plain_count():
    customers = load_customers(600, seed=2)
    churned = customers["churned"].to_numpy()
    for effect in known_effects(customers):
        has = customers[effect["event"]].to_numpy() >= effect["threshold"]
        assert effect["n_with"] == has.sum() and effect["churned_with"] == (has & churned).sum()
        assert effect["n_without"] == (~has).sum() and effect["churned_without"] == (~has & churned).sum()
        rates = churned[has].mean(), churned[~has].mean()
        assert effect["lift"] == pytest.approx(rates[0] / rates[1], abs=1e-6)


def test_churn_events_are_the_data_sets_counts(tmp_path):
    summary = generate_churn(tmp_path, n_customers=300, seed=4)
    events = pl.read_parquet(tmp_path / "events")
    customers = load_customers(300, seed=4)
    per = events.filter(pl.col("event") != "$identify").group_by("distinct_id", "event").len()
    for event in [*COUNT_EVENTS, *PLAN_EVENTS]:
        got = dict(per.filter(pl.col("event") == event).select("distinct_id", "len").iter_rows())
        expected = {f"user-{r}": c for r, c in zip(customers["rownames"], customers[event], strict=True) if c}
        assert got == expected, event
    truth = json.loads(summary.truth_path.read_text())
    invoices = pl.read_ndjson(tmp_path / "billing_invoices.jsonl")
    assert invoices.height == truth["conversions"] <= customers["churned"].sum()
    assert np.all(invoices["amount_paid"].to_numpy() > 0)
    assert truth["rows"]["events"] == events.height
