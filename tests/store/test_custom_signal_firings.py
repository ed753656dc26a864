"""Custom signals' firing times on small warehouses: the `custom_signals` store step writes
beton.custom_signal_firings from the occurrence models (every leaf kind, times agreeing with the marts'
counts), and an enabled custom signal then gets daily health rows and contributes to the scores."""

import math
from datetime import date, datetime, timedelta

import polars as pl
import pytest

from beton_pipeline.settings import Settings
from beton_pipeline.store import custom_signals as store
from beton_pipeline.store.firings import FIRING_SCHEMA
from beton_pipeline.store.monitoring import compute_signal_health
from beton_pipeline.store.scoring import compute_account_scores
from beton_pipeline.warehouse import connect
from tests.store.daily_fixtures import outcomes_frame, outcomes_warehouse
from tests.store.signal_marts import make_marts

EVERY_LEAF = """\
name: Every leaf
when:
  all:
    - {event: invited_teammate, count: "> 2", within_days: 14}
    - {attribute: industry, equals: Fintech}
    - {attribute: plan_interval, equals: month}
    - any:
        - {event: "$pageview", property: "$current_url", in: ["/pricing", "/docs&faq"], count: ">= 2", within_days: 7}
        - {intent: g2_visit, until: window_end}
"""
NOT_NOISE = """\
name: No noise
when:
  not: {event: noise, count: ">= 1", within_days: 14}
"""
SQL_WITH_TIME = """\
select account_id, min(occurred_at) + interval 5 minute as fired_at
from intermediate.int_event_occurrences where event_name = 'noise' group by account_id
"""
SQL_WITHOUT_TIME = """\
select account_id from marts.account_event_features where event_name = 'noise' and n_first_14d >= 2
"""


@pytest.fixture
def refreshed(tmp_path):
    warehouse = make_marts(tmp_path / "warehouse.duckdb")
    with connect(warehouse) as con:  # the marts count `$pageview` among the events too
        con.execute(
            "insert into marts.account_event_features by name "
            "select * exclude (property_name, property_value) from marts.account_property_features"
        )
    signals_dir = tmp_path / "signals"
    signals_dir.mkdir()
    for name, text in (
        ("every.yml", EVERY_LEAF),
        ("not_noise.yml", NOT_NOISE),
        ("timed.sql", SQL_WITH_TIME),
        ("untimed.sql", SQL_WITHOUT_TIME),
    ):
        (signals_dir / name).write_text(text)
    report = store.refresh_custom_signals(warehouse, Settings(), signals_dir)
    with connect(warehouse, read_only=True) as con:
        firings = con.sql(f"select * from {store.FIRINGS_TABLE}").pl()
        marts = {
            name: con.sql(f"select * from marts.{name}").pl()
            for name in ("account_outcomes", "account_features", "account_event_features", "account_property_features")
        }
        intent = con.sql("select * from intermediate.int_account_intent_signals").pl()
    by_name = {s.name: s.signal_id for s in report.signals}
    return report, firings, marts, intent, by_name


def _fired(firings: pl.DataFrame, signal_id: str) -> dict[str, datetime]:
    rows = firings.filter(pl.col("signal_id") == signal_id)
    return dict(zip(rows["account_id"], rows["fired_at"], strict=True))


def _count(marts, name: str, event: str, column: str) -> dict[str, int]:
    rows = marts[name].filter(pl.col("event_name") == event)
    return dict(zip(rows["account_id"], rows[column], strict=True))


def test_condition_firings_follow_the_occurrences_and_agree_with_the_counts(refreshed):
    report, firings, marts, intent, by_name = refreshed
    assert report.missing_leaf_times == 0  # every true leaf found its time in the occurrence models
    assert firings.schema == pl.Schema(FIRING_SCHEMA)
    features = marts["account_features"]
    start = dict(zip(marts["account_outcomes"]["account_id"], marts["account_outcomes"]["started_at"], strict=True))
    end = dict(zip(features["account_id"], features["feature_window_end_at"], strict=True))
    industry = dict(zip(features["account_id"], features["industry"], strict=True))
    invites = _count(marts, "account_event_features", "invited_teammate", "n_first_14d")
    pages = marts["account_property_features"]
    page_counts = dict(zip(pages["account_id"], pages["n_first_7d"], strict=True))
    latest_intent = dict(intent.group_by("account_id").agg(pl.col("occurred_at").max()).iter_rows())

    got = _fired(firings, by_name["Every leaf"])
    want = {}
    for account, s in start.items():
        if invites.get(account, 0) > 2 and industry[account] == "Fintech":
            third = s + timedelta(minutes=30)  # the 3rd invite (the k-th at k × 10 minutes)
            plan = s + timedelta(hours=2)  # the first (monthly) subscription
            page = s + timedelta(minutes=20) if page_counts.get(account, 0) >= 2 else None
            either = [t for t in (page, latest_intent.get(account)) if t is not None]
            if either:
                want[account] = max(third, plan, min(either))
    assert got == want and len(want) >= 5
    assert all(t <= end[a] for a, t in got.items())

    # not: true where the account never did `noise`; known only at the window end
    noise = _count(marts, "account_event_features", "noise", "n_first_14d")
    assert _fired(firings, by_name["No noise"]) == {a: end[a] for a in start if noise.get(a, 0) == 0}


def test_sql_firings_take_the_querys_time_before_the_window_end_else_the_window_end(refreshed):
    report, firings, marts, _, by_name = refreshed
    features = marts["account_features"]
    start = dict(zip(marts["account_outcomes"]["account_id"], marts["account_outcomes"]["started_at"], strict=True))
    end = dict(zip(features["account_id"], features["feature_window_end_at"], strict=True))
    noise = _count(marts, "account_event_features", "noise", "n_first_14d")
    timed = _fired(firings, by_name["timed"])
    # the first `noise` is at start + 10 min, so fired_at = start + 15 min, before the window end (23:00)
    assert timed == {a: start[a] + timedelta(minutes=15) for a, n in noise.items() if n >= 1}
    assert _fired(firings, by_name["untimed"]) == {a: end[a] for a, n in noise.items() if n >= 2}
    # the counts still cover the eligible accounts only, and agree with the firings
    counts = report.counts.group_by("signal_id").agg(pl.col("n_with").sum())
    n_with = dict(counts.iter_rows())
    assert n_with[by_name["timed"]] == len(timed)


# ------------------------------------------------------------------------------------------------
# An enabled custom signal in daily health and the scores
# ------------------------------------------------------------------------------------------------
LIFT = 2.0
DAYS = [date(2025, 3, 10), date(2025, 3, 11)]


def _fires(i: int) -> bool:
    return i % 3 != 1


@pytest.fixture
def con(tmp_path):
    outcomes = outcomes_frame()
    with outcomes_warehouse(tmp_path) as c:
        c.execute("create schema beton")
        c.execute(
            """
            create table beton.signals as select * from (values
                ('c_on', 'custom', true, 'condition', 'custom:condition:{"on":1}', 'On: a custom condition', 2.0),
                ('c_off', 'custom', false, 'condition', 'custom:condition:{"off":1}', 'Off: disabled', 3.0)
            ) t(signal_id, source, enabled, kind, candidate_key, definition, lift)
            """
        )
        for column, kind in {
            "event": "varchar",
            "property": "varchar",
            "value": "varchar",
            "window_days": "integer",
            "threshold": "integer",
            "part_a_id": "varchar",
            "part_b_id": "varchar",
            "conversions_with": "integer default 20",
            "n_with": "integer default 100",
            "conversions_without": "integer default 50",
            "n_without": "integer default 500",
        }.items():
            c.execute(f"alter table beton.signals add column {column} {kind}")
        fired = pl.DataFrame(
            [
                {"account_id": r["account_id"], "signal_id": sid, "fired_at": r["started_at"] + timedelta(days=1)}
                for i, r in enumerate(outcomes.iter_rows(named=True))
                for sid in ("c_on", "c_off")
                if _fires(i)
            ],
            schema=FIRING_SCHEMA,
        )
        store.write_custom_firings(c, fired)
        yield c


def test_an_enabled_custom_signal_gets_health_rows_from_its_firings(con):
    settings = Settings()
    rows = compute_signal_health(con, settings, DAYS)
    assert rows["signal_id"].unique().to_list() == ["c_on"]  # the disabled one is not monitored
    window = settings.monitoring.window_days
    outcomes = outcomes_frame().with_row_index("i")
    for day in DAYS:
        closed = outcomes.filter(
            (pl.col("outcome_window_end_at").dt.date() <= day)
            & (pl.col("outcome_window_end_at").dt.date() > day - timedelta(days=window))
        )
        with_signal = closed.filter(pl.col("i") % 3 != 1)  # _fires
        row = rows.filter(pl.col("day") == day).row(0, named=True)
        assert (row["n_with"], row["conversions_with"]) == (with_signal.height, with_signal["converted"].sum())
        assert row["n_without"] == closed.height - with_signal.height and row["n_with"] > 0
        assert row["backtest_lift"] == LIFT and row["definition"] == "On: a custom condition"


def test_an_enabled_custom_signal_contributes_to_the_scores(con):
    scores = compute_account_scores(con, Settings(), DAYS).scores
    for day in DAYS:
        end = datetime(day.year, day.month, day.day) + timedelta(days=1)
        rows = scores.filter(pl.col("day") == day)
        checked = 0
        for row in rows.iter_rows(named=True):
            i = int(row["account_id"].split("_")[1])
            started = outcomes_frame()["started_at"][i]
            fired_at = started + timedelta(days=1)
            entries = {s["signal_id"]: s for s in row["signals_fired"]}
            if _fires(i) and fired_at < end:
                decay = 0.5 ** ((end - fired_at).total_seconds() / 86400 / 14.0)
                assert row["raw_score"] == pytest.approx(math.log(LIFT) * decay, rel=1e-12)
                assert set(entries) == {"c_on"} and entries["c_on"]["fired_at"] == fired_at
                checked += 1
            else:
                assert row["raw_score"] == 0 and not entries
        assert checked >= 5
