"""Signal firings on a real DuckDB: hand-made events and windows, the occurrence models built by dbt
(`int_event_occurrences`, `int_property_occurrences`, `int_account_subscriptions`,
`int_account_intent_signals`), then `signal_firings` over them. Checks the t-th occurrence, the
first-d-days bound, the point-in-time cutoff at the window end, property values after their
transform, plan and intent times, and pairs firing at the later part."""

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest

from beton_pipeline.settings import PROJECT_ROOT
from beton_pipeline.store.firings import FIRING_SCHEMA, signal_firings

MODELS = [
    "int_event_occurrences",
    "int_property_occurrences",
    "int_account_subscriptions",
    "int_account_intent_signals",
]
PROPERTY_FEATURES = [{"event": "$pageview", "property": "$current_url", "transform": "url_path"}]

# Account a: starts Jan 1, window ends Jan 10 (converted). Account b: starts Jan 1, converts Jan 3 00:00.
SETUP = """
create schema staging; create schema intermediate; create schema marts;
create table intermediate.int_account_windows as select * from (values
    ('a', timestamp '2025-01-01 00:00:00', timestamp '2025-01-10 00:00:00'),
    ('b', timestamp '2025-01-01 00:00:00', timestamp '2025-01-03 00:00:00')
) t(account_id, started_at, feature_window_end_at);
create table intermediate.int_events_resolved as select * from (values
    ('e1', 'a', 'invite', timestamp '2025-01-01 01:00:00', null, false),
    ('e2', 'a', 'invite', timestamp '2025-01-02 00:00:00', null, false),
    ('e3', 'a', 'invite', timestamp '2025-01-04 00:00:00', null, false),
    ('e4', 'a', 'invite', timestamp '2025-01-12 00:00:00', null, false),
    ('e5', 'b', 'invite', timestamp '2025-01-01 05:00:00', null, false),
    ('e6', 'b', 'invite', timestamp '2025-01-03 00:00:00', null, false),
    ('p1', 'a', '$pageview', timestamp '2025-01-01 02:00:00', 'https://app.a.io/settings?tab=1', false),
    ('p2', 'a', '$pageview', timestamp '2025-01-01 03:00:00', 'https://app.a.io/billing', false),
    ('p3', 'a', '$pageview', timestamp '2025-01-01 04:00:00', 'http://app.a.io/settings#x', false),
    ('p4', 'b', '$pageview', timestamp '2025-01-01 02:00:00', 'https://app.b.io/settings', false),
    ('p5', 'b', '$pageview', timestamp '2025-01-03 01:00:00', 'https://app.b.io/settings', false),
    ('x1', null, 'invite', timestamp '2025-01-01 01:00:00', null, false),
    ('t1', 'b', 'invite', timestamp '2025-01-01 00:30:00', null, true)  -- tracked by beton serve: never a behaviour
) t(event_id, account_id, event_name, occurred_at, property_1, is_tracked);
create table intermediate.int_accounts as select * from (values ('a', 'a.io'), ('b', 'b.io')) t(account_id, domain);
create table intermediate.int_account_keys as select * from (values
    ('a.io', 'a', 'crm_domain'), ('b.io', 'b', 'crm_domain')
) t(match_key, account_id, key_type);
create table staging.stg_stripe__customers as select * from (values
    ('c1', 'a.io', 'x@a.io'), ('c2', null, 'y@b.io')
) t(customer_id, metadata_company_domain, email);
create table staging.stg_stripe__subscriptions as select * from (values
    ('s1', 'c1', 'month', 1200.0, timestamp '2025-01-05 00:00:00'),
    ('s2', 'c1', 'year', 9000.0, timestamp '2025-01-20 00:00:00'),
    ('s3', 'c2', 'month', 1200.0, timestamp '2024-12-01 00:00:00')
) t(subscription_id, customer_id, plan_interval, annualized_amount, created_at);
create table staging.stg_intent__signals as select * from (values
    ('a.io', 'pricing', timestamp '2024-11-01 00:00:00'),
    ('a.io', 'pricing', timestamp '2024-12-20 00:00:00'),
    ('a.io', 'pricing', timestamp '2025-01-05 00:00:00'),
    ('a.io', 'pricing', timestamp '2025-01-11 00:00:00'),
    ('b.io', 'pricing', timestamp '2025-01-02 00:00:00')
) t(company_domain, signal_type, occurred_at);
create table marts.account_features as select * from (values
    ('a', timestamp '2025-01-01 00:00:00', timestamp '2025-01-10 00:00:00', 'saas', '10-49'),
    ('b', timestamp '2025-01-01 00:00:00', timestamp '2025-01-03 00:00:00', 'retail', '10-49')
) t(account_id, started_at, feature_window_end_at, industry, employee_band);
"""

SIGNALS = [
    # signal_id, kind, key, event, property, value, window_days, threshold, part_a_id, part_b_id
    ("inv2_3d", "event_count", "event:invite:2:3d", "invite", None, None, 3, 2, None, None),
    ("inv3_3d", "event_count", "event:invite:3:3d", "invite", None, None, 3, 3, None, None),
    ("inv3_7d", "event_count", "event:invite:3:7d", "invite", None, None, 7, 3, None, None),
    ("inv4_30d", "event_count", "event:invite:4:30d", "invite", None, None, 30, 4, None, None),
    ("settings2", "event_property", "prop:settings:2", "$pageview", "$current_url", "/settings", 1, 2, None, None),
    ("settings1", "event_property", "prop:settings:1", "$pageview", "$current_url", "/settings", 1, 1, None, None),
    ("saas", "attribute", "attr:industry:saas", None, "industry", "saas", None, None, None, None),
    ("band", "attribute", "attr:employee_band:10-49", None, "employee_band", "10-49", None, None, None, None),
    ("monthly", "attribute", "attr:plan_interval:month", None, "plan_interval", "month", None, None, None, None),
    ("yearly", "attribute", "attr:plan_interval:year", None, "plan_interval", "year", None, None, None, None),
    ("pricing_before", "intent", "intent:pricing:before_start", None, None, "pricing", 30, None, None, None),
    ("pricing_window", "intent", "intent:pricing:window", None, None, "pricing", 30, None, None, None),
    ("pair", "pair", "event:invite:2:3d & attr:industry:saas", None, None, None, None, None, "inv2_3d", "saas"),
    ("pair_b", "pair", "prop:settings:1 & attr:employee_band:10-49", None, None, None, None, None, "settings1", "band"),
]
SIGNAL_SCHEMA = {
    "signal_id": pl.String,
    "kind": pl.String,
    "key": pl.String,
    "event": pl.String,
    "property": pl.String,
    "value": pl.String,
    "window_days": pl.Int64,
    "threshold": pl.Int64,
    "part_a_id": pl.String,
    "part_b_id": pl.String,
}


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("firings")
    path = root / "warehouse.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute(SETUP)
    dbt = Path(sys.executable).with_name("dbt")
    project = PROJECT_ROOT / "dbt_project"
    result = subprocess.run(
        [
            str(dbt),
            "run",
            "--profiles-dir",
            str(project),
            "--project-dir",
            str(project),
            "--target-path",
            str(root / "target"),
            "--log-path",
            str(root / "logs"),
            "--vars",
            json.dumps({"property_features": PROPERTY_FEATURES}),
            "--select",
            *MODELS,
        ],
        env=os.environ | {"BETON_WAREHOUSE": str(path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return path


@pytest.fixture(scope="module")
def fired(warehouse) -> dict[tuple[str, str], datetime]:
    signals = pl.DataFrame(SIGNALS, schema=SIGNAL_SCHEMA, orient="row")
    with duckdb.connect(str(warehouse), read_only=True) as con:
        frame = signal_firings(con, signals)  # dbt applies url_path (PROPERTY_FEATURES)
    assert frame.schema == pl.Schema(FIRING_SCHEMA)
    assert frame.select("account_id", "signal_id").is_duplicated().sum() == 0
    return {(r["account_id"], r["signal_id"]): r["fired_at"] for r in frame.iter_rows(named=True)}


def test_event_count_fires_at_the_t_th_occurrence_within_the_first_d_days(fired):
    assert fired[("a", "inv2_3d")] == _ts("2025-01-02 00:00:00")
    assert ("a", "inv3_3d") not in fired  # the third invite is on day 4
    assert fired[("a", "inv3_7d")] == _ts("2025-01-04 00:00:00")


def test_nothing_at_or_after_the_window_end_counts(fired):
    assert ("a", "inv4_30d") not in fired  # the fourth invite comes after a's window end
    assert ("b", "inv2_3d") not in fired  # b's second invite is at its conversion moment
    assert ("b", "settings2") not in fired and fired[("b", "settings1")] == _ts("2025-01-01 02:00:00")
    assert {account for account, _ in fired} == {"a", "b"}  # the unresolved event belongs to no one


def test_property_values_compare_after_the_url_path_transform(fired):
    assert fired[("a", "settings1")] == _ts("2025-01-01 02:00:00")
    assert fired[("a", "settings2")] == _ts(
        "2025-01-01 04:00:00"
    )  # query and fragment dropped, the billing page skipped


def test_attributes_fire_at_the_start_and_plans_at_the_first_subscription_before_the_window_end(fired):
    assert fired[("a", "saas")] == _ts("2025-01-01 00:00:00") and ("b", "saas") not in fired
    assert fired[("a", "monthly")] == _ts("2025-01-05 00:00:00")
    assert ("a", "yearly") not in fired  # subscribed after the window end
    assert fired[("b", "monthly")] == _ts("2025-01-01 00:00:00")  # subscribed before its start: known at the start


def test_intent_fires_at_the_latest_qualifying_signal(fired):
    assert fired[("a", "pricing_before")] == _ts("2024-12-20 00:00:00")  # Nov 1 is outside the 30-day lookback
    assert fired[("a", "pricing_window")] == _ts("2025-01-05 00:00:00")  # Jan 11 is after the window end
    assert ("b", "pricing_before") not in fired and fired[("b", "pricing_window")] == _ts("2025-01-02 00:00:00")


def test_pairs_fire_at_the_later_part_when_both_fired(fired):
    assert fired[("a", "pair")] == _ts("2025-01-02 00:00:00")
    assert ("b", "pair") not in fired  # b never invited twice in time
    assert fired[("a", "pair_b")] == _ts("2025-01-01 02:00:00") and fired[("b", "pair_b")] == _ts("2025-01-01 02:00:00")


def test_no_signals_no_firings(warehouse):
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert signal_firings(con, pl.DataFrame(schema=SIGNAL_SCHEMA)).is_empty()
