"""Health feeds the scores, on a small warehouse: two enabled attribute signals fire at each account's start;
`beton.signal_health` says one is broken from 15 March on and the other degrading from 13 March. The
scores are recomputed here by hand (log lift · decay · the health factor of the day scored), and the
account playbooks read the written scores: an account never qualifies through a broken signal."""

import math
from datetime import date, datetime, timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from beton_pipeline.core.playbooks import parse_playbook_config
from beton_pipeline.settings import Settings
from beton_pipeline.store import playbooks
from beton_pipeline.store.scoring import (
    EXPLANATION_COLUMNS,
    SCORE_ENTRY,
    ExplanationUpgradeError,
    compute_account_scores,
    refresh_account_scores,
    upgrade_explanation_columns,
)
from tests.store.daily_fixtures import outcomes_frame, outcomes_warehouse
from tests.store.score_entries import write_old_table

BROKEN_FROM = date(2025, 3, 15)
DEGRADING_FROM = date(2025, 3, 13)
DAYS = [date(2025, 3, 12) + timedelta(days=i) for i in range(5)]  # 12 … 16 March
LIFTS = {"s_fin": 2.0, "s_band": 1.5}

FIRING_TABLES = """
create table intermediate.int_event_occurrences (account_id varchar, event_name varchar, occurrence_number integer,
    occurred_at timestamp, started_at timestamp);
create table intermediate.int_property_occurrences (account_id varchar, event_name varchar, property_name varchar,
    property_value varchar, occurrence_number integer, occurred_at timestamp, started_at timestamp);
create table intermediate.int_account_subscriptions (account_id varchar, plan_interval varchar, created_at timestamp);
create table intermediate.int_account_intent_signals (account_id varchar, signal_type varchar, occurred_at timestamp,
    started_at timestamp, feature_window_end_at timestamp);
"""


def _industry(i: int) -> str:
    return "Fintech" if i % 2 == 0 else "Retail"


def _band(i: int) -> str:
    return "11-50" if i % 3 == 0 else "51-200"


def _health_state(signal_id: str, day: date) -> str:
    if signal_id == "s_fin":
        return "broken" if day >= BROKEN_FROM else "healthy"
    return "degrading" if day >= DEGRADING_FROM else "healthy"


@pytest.fixture
def con(tmp_path):
    outcomes = outcomes_frame()
    with outcomes_warehouse(tmp_path) as c:
        features = outcomes.select(
            "account_id",
            "started_at",
            (pl.col("started_at") + pl.duration(days=30)).alias("feature_window_end_at"),
            pl.int_range(pl.len()).map_elements(_industry, return_dtype=pl.String).alias("industry"),
            pl.int_range(pl.len()).map_elements(_band, return_dtype=pl.String).alias("employee_band"),
        )
        c.register("f", features.to_arrow())
        c.execute("create table marts.account_features as select * from f")
        c.unregister("f")
        c.execute(FIRING_TABLES)
        c.execute("create schema beton")
        c.execute(
            """
            create table beton.signals as select * from (values
                ('s_fin', 'discovered', true, 'attribute', 'attr:industry:Fintech', 'industry = Fintech',
                 'industry', 'Fintech', 2.0),
                ('s_band', 'discovered', true, 'attribute', 'attr:employee_band:11-50', 'employee band = 11-50',
                 'employee_band', '11-50', 1.5)
            ) t(signal_id, source, enabled, kind, candidate_key, definition, property, value, lift)
            """
        )
        for column, kind in {
            "event": "varchar",
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
        health = [
            (day, sid, _health_state(sid, day))
            for day in (date(2025, 3, 1) + timedelta(days=i) for i in range(20))
            for sid in LIFTS
        ]
        c.execute("create table beton.signal_health (day date, signal_id varchar, health varchar)")
        c.executemany("insert into beton.signal_health values (?, ?, ?)", health)
        yield c


def _by_hand(day: date) -> dict[str, float]:
    """Raw score of every account in play at the end of `day`: Σ log(lift) · 0.5^(age / 14) · factor(health on day)."""
    factor = {"healthy": 1.0, "degrading": 0.5, "broken": 0.0}
    end = datetime(day.year, day.month, day.day) + timedelta(days=1)
    raw = {}
    for i, r in enumerate(outcomes_frame().iter_rows(named=True)):
        if not (r["started_at"] < end and (r["converted_at"] is None or r["converted_at"] >= end)):
            continue
        if r["outcome_window_end_at"] <= end:
            continue
        decay = 0.5 ** ((end - r["started_at"]).total_seconds() / 86400 / 14.0)
        fired = [s for s, yes in (("s_fin", _industry(i) == "Fintech"), ("s_band", _band(i) == "11-50")) if yes]
        raw[r["account_id"]] = sum(math.log(LIFTS[s]) * decay * factor[_health_state(s, day)] for s in fired)
    return raw


def test_scores_weight_each_signal_by_its_health_on_the_day_scored(con):
    scores = compute_account_scores(con, Settings(), DAYS).scores
    for day in DAYS:
        rows = scores.filter(pl.col("day") == day)
        want = _by_hand(day)
        assert set(rows["account_id"]) == set(want) and rows.height > 10
        got = dict(zip(rows["account_id"], rows["raw_score"], strict=True))
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
        for row in rows.iter_rows(named=True):
            fired = {s["signal_id"]: s for s in row["signals_fired"]}
            top = {s["signal_id"] for s in row["top_contributions"]}
            if "s_fin" in fired:
                entry = fired["s_fin"]
                if day >= BROKEN_FROM:
                    assert entry["contribution"] == 0 and entry["health"] == "broken"
                    assert entry["weight_note"] == "weight zero: broken since 2025-03-15" and "s_fin" not in top
                else:
                    assert entry["contribution"] > 0 and entry["weight_note"] is None and "s_fin" in top
            if "s_band" in fired:
                note = fired["s_band"]["weight_note"]
                assert note == ("weight halved: degrading since 2025-03-13" if day >= DEGRADING_FROM else None)
    # a broken signal is still listed among the signals fired (with why); only its contribution is zero
    both = scores.filter((pl.col("account_id") == "acc_066") & pl.col("day").is_in([date(2025, 3, 14), BROKEN_FROM]))
    assert both["n_signals_fired"].to_list() == [2, 2]


def test_playbooks_do_not_fire_through_a_broken_signal(con):
    refresh_account_scores(con, Settings(), [d.isoformat() for d in DAYS])
    hook = {"type": "webhook", "name": "crm", "url": "https://hooks.example.com/b"}
    config = parse_playbook_config(
        [
            {
                "name": "fintech",
                "when": {"any_signals": ["s_fin"]},
                "holdout_fraction": 0,
                "cooldown_days": 0,
                "then": [hook],
            },
            {
                "name": "small",
                "when": {"all_signals": ["s_band"]},
                "holdout_fraction": 0,
                "cooldown_days": 0,
                "then": [hook],
            },
        ]
    )
    planned, _ = playbooks.plan_actions(con, config, config.playbooks, DAYS)
    per_day = planned.group_by("playbook", "day").len()
    fintech_days = sorted(per_day.filter(pl.col("playbook") == "fintech")["day"].to_list())
    assert fintech_days == [d for d in DAYS if d < BROKEN_FROM]  # broken from the 15th: no account qualifies
    assert sorted(per_day.filter(pl.col("playbook") == "small")["day"].to_list()) == DAYS  # degrading still does
    matches = playbooks.account_matches(con, config, DAYS)
    assert {(name, day) for name, day, _ in matches if name == "fintech"} == {
        ("fintech", d) for d in DAYS if d < BROKEN_FROM
    }
    # the sensor's read and the planner agree on the counts
    for name, day, n in matches:
        assert n == per_day.filter((pl.col("playbook") == name) & (pl.col("day") == day))["len"].item()


def test_days_scored_without_health_are_reported_and_keep_full_weight(con):
    late = date(2025, 3, 25)  # after the last health row
    result = compute_account_scores(con, Settings(), [DAYS[-1], late])
    assert result.days_without_health == [late]
    rows = result.scores.filter(pl.col("day") == late)
    fired = rows["signals_fired"].explode().drop_nulls().to_list()
    assert fired and all(s["weight_factor"] == 1.0 and s["health"] is None for s in fired)


@pytest.mark.parametrize("top", [1, 3])
def test_explanations_are_lists_largest_contribution_first(con, top):
    """Each explanation column is a list of entries: every signal fired (broken ones too), largest
    contribution first; `top_contributions` the first `scoring.top_contributions` of those that count."""
    settings = Settings(scoring={"top_contributions": top})
    scores = compute_account_scores(con, settings, DAYS).scores
    assert {scores[c].dtype for c in EXPLANATION_COLUMNS} == {pl.List(SCORE_ENTRY)}
    assert (scores["signals_fired"].list.len() == scores["n_signals_fired"]).all()
    for row in scores.iter_rows(named=True):
        fired = row["signals_fired"]
        assert fired == sorted(fired, key=lambda s: (-s["contribution"], s["signal_id"]))
        assert row["top_contributions"] == [s for s in fired if s["weight_factor"] > 0][:top]
        assert row["intent_contributions"] == []  # attribute signals only
        assert all(s["contribution"] == round(s["contribution"], 4) for s in fired)


def test_scoring_over_an_older_table_converts_its_json_text_in_place(con):
    """A beton.account_scores with JSON text (an older beton's) is converted, not appended to as text: the
    days not scored again read back as the entries they held (`fired_at` to the second, as the text had it)."""
    refresh_account_scores(con, Settings(), [d.isoformat() for d in DAYS])
    order = "order by day, account_id"
    want = con.sql(f"select * from beton.account_scores {order}").pl()
    assert want["n_signals_fired"].sum() > 0
    write_old_table(con, want)
    assert upgrade_explanation_columns(con) == list(EXPLANATION_COLUMNS)
    assert upgrade_explanation_columns(con) == []  # once
    write_old_table(con, want)
    refresh_account_scores(con, Settings(), [d.isoformat() for d in DAYS[-2:]])
    types = dict(con.sql("select column_name, column_type from (describe beton.account_scores)").fetchall())
    assert {types[c] for c in EXPLANATION_COLUMNS} == {
        "STRUCT(signal_id VARCHAR, definition VARCHAR, fired_at TIMESTAMP, contribution DOUBLE, health VARCHAR, "
        "weight_factor DOUBLE, weight_note VARCHAR)[]"
    }
    got = con.sql(f"select * from beton.account_scores {order}").pl()
    to_second = {
        c: pl.col(c).list.eval(pl.element().struct.with_fields(pl.field("fired_at").dt.truncate("1s")))
        for c in EXPLANATION_COLUMNS
    }
    assert_frame_equal(got.with_columns(**to_second), want.with_columns(**to_second))
    rescored = pl.col("day").is_in(DAYS[-2:])
    assert_frame_equal(got.filter(rescored), want.filter(rescored))  # scored again: to the microsecond


def test_an_older_table_that_cannot_be_converted_is_refused_unchanged(con):
    refresh_account_scores(con, Settings(), [DAYS[0].isoformat()])
    old = con.sql("select * from beton.account_scores").pl()
    write_old_table(con, old)
    con.execute(
        "update beton.account_scores set top_contributions = 'not json' where account_id = ?", [old["account_id"][0]]
    )
    before = con.sql("select * from beton.account_scores order by account_id").pl()
    with pytest.raises(ExplanationUpgradeError, match="written by an older beton .* it is unchanged"):
        refresh_account_scores(con, Settings(), [d.isoformat() for d in DAYS])
    assert_frame_equal(con.sql("select * from beton.account_scores order by account_id").pl(), before)
