"""Readouts on a real DuckDB file: experiment exposures and conversions per variant (first exposure in
the period, conversion strictly after it and inside the window, users still awaiting their window),
and the holdout readout of a playbook from the outbox and the account outcomes."""

from datetime import date, datetime, timedelta

import duckdb
import pytest

from beton_pipeline.core.playbooks import Experiment, parse_playbook_config
from beton_pipeline.store import outbox, readouts

FLAG = "onb"


def ts(day: int, hour: int = 10) -> datetime:
    return datetime(2025, 1, day, hour)


# (event_id, distinct_id, feature_flag, variant, exposed_at, exposure_number, saw_several_variants): the model's rows
EXPOSURES = [
    ("x1", "u1", FLAG, "control", ts(1), 1, True),  # u1: control before the period, test inside it
    ("x2", "u1", FLAG, "test", ts(6), 2, True),
    ("x3", "u1", FLAG, "test", ts(7), 3, True),
    ("x4", "u2", FLAG, "test", ts(6), 1, False),
    ("x5", "u3", FLAG, "control", ts(6), 1, False),
    ("x6", "u4", FLAG, "control", ts(28), 1, False),  # exposed too late to finish a 7-day window
    ("x7", "u5", "other", "test", ts(6), 1, False),
]
GOALS = [
    ("g1", "u2", ts(8)),  # 2 days after: converted
    ("g2", "u3", ts(6)),  # at the exposure instant: not strictly after
    ("g3", "u3", ts(20)),  # 14 days after: outside a 7-day window
    ("g4", "u5", ts(7)),  # another flag's user
]


@pytest.fixture
def con(tmp_path):
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        con.execute("create schema intermediate")
        con.execute(
            "create table intermediate.int_experiment_exposures (event_id varchar, distinct_id varchar, feature_flag varchar, "
            "variant varchar, exposed_at timestamp, exposure_number bigint, saw_several_variants boolean)"
        )
        con.executemany("insert into intermediate.int_experiment_exposures values (?, ?, ?, ?, ?, ?, ?)", EXPOSURES)
        con.execute(
            "create table intermediate.int_events_resolved (event_id varchar, distinct_id varchar, event_name varchar, occurred_at timestamp)"
        )
        con.executemany(
            "insert into intermediate.int_events_resolved values (?, ?, ?, ?)",
            [(e, u, "$feature_flag_called", t) for e, u, _, _, t, _, _ in EXPOSURES]
            + [(e, u, "goal", t) for e, u, t in GOALS]
            + [("last", "u9", "$pageview", ts(30))],
        )
        yield con


def counts(con, **experiment):
    frame, diagnostics = readouts.experiment_counts(
        con, Experiment(name="e", flag=FLAG, goal_event="goal", **experiment)
    )
    return {v: (e, c) for v, e, c in frame.iter_rows()}, diagnostics


def test_first_exposure_over_all_time(con):
    assert counts(con) == ({"control": (3, 1), "test": (1, 1)}, {"saw_several_variants": 1, "awaiting_window": 0})


def test_first_exposure_inside_the_period_and_the_window(con):
    # u1 counts in `test` (its first exposure inside the period) and saw one variant there; u3's goal is
    # outside the window; u4 is awaiting.
    assert counts(con, start=date(2025, 1, 5), end=date(2025, 2, 1), conversion_window_days=7) == (
        {"control": (1, 0), "test": (2, 1)},
        {"saw_several_variants": 0, "awaiting_window": 1},
    )
    assert counts(con, end=date(2025, 1, 6)) == ({"control": (1, 0)}, {"saw_several_variants": 0, "awaiting_window": 0})
    assert counts(con, start=date(2025, 2, 1)) == ({}, {"saw_several_variants": 0, "awaiting_window": 0})


def test_an_event_tracked_later_does_not_close_other_users_windows(con):
    """The horizon is the last exported event: u4 (exposed on the 28th, a 7-day window, the export ending on the
    30th) stays awaiting though beton serve tracked events after that (one in February)."""
    window = {"start": date(2025, 1, 5), "end": date(2025, 2, 1), "conversion_window_days": 7}
    before = counts(con, **window)
    con.execute("alter table intermediate.int_events_resolved add column is_tracked boolean default false")
    con.execute("insert into intermediate.int_events_resolved values ('t1', 'u4', 'goal', ?, true)", [ts(29)])
    con.execute(
        "insert into intermediate.int_events_resolved values ('t2', 'u9', 'other', ?, true)",
        [ts(31) + timedelta(days=10)],
    )
    assert counts(con, **window) == before  # u4's tracked goal is inside its window, but its window is not over
    assert counts(con, conversion_window_days=7)[1]["awaiting_window"] == 1


def test_write_experiment_readouts(con):
    cfg = parse_playbook_config(
        experiments=[{"name": "onboarding", "flag": FLAG, "goal_event": "goal", "variants": ["control", "test"]}]
    )
    [readout], failed = readouts.write_experiment_readouts(con, cfg, 0.95)
    assert failed == {}
    table = con.sql(
        f"select variant, exposures, conversions, is_control from {readouts.EXPERIMENT_READOUTS_TABLE} order by variant"
    ).fetchall()
    assert table == [("control", 3, 1, True), ("test", 1, 1, False)]
    assert readout.experiment == "onboarding" and "1 user(s) saw more than one variant" in "; ".join(readout.warnings)
    readouts.write_experiment_readouts(con, parse_playbook_config(), 0.95)
    assert con.sql(f"select count(*) from {readouts.EXPERIMENT_READOUTS_TABLE}").fetchall() == [(0,)]


def test_playbook_readout_from_the_outbox(tmp_path):
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        outbox.ensure_tables(con)
        con.execute("create schema marts")
        con.execute(
            "create table marts.account_outcomes (account_id varchar, converted_at timestamp, as_of_at timestamp)"
        )
        first = date(2025, 3, 1)
        accounts = [(f"a{i}", i % 4 == 0, datetime(2025, 3, 5) if i % 3 == 0 else None) for i in range(40)]
        con.executemany(
            "insert into marts.account_outcomes values (?, ?, ?)",
            [(a, c, datetime(2025, 6, 1)) for a, _, c in accounts],
        )
        for a, held, _ in accounts + [("unknown", False, None)]:
            con.execute(
                f"insert into {outbox.ACTIONS_TABLE} (idempotency_key, playbook, day, account_id, destination, destination_type, held_out, "
                "status, max_attempts, payload, created_at, updated_at) values (?, 'hot', ?, ?, 'slack:#x', 'slack', ?, ?, 6, '{}', now(), now())",
                [f"k_{a}", first, a, held, "held_out" if held else "sent"],
            )
        con.execute(
            f"insert into {outbox.ACTIONS_TABLE} (idempotency_key, playbook, day, account_id, destination, destination_type, held_out, "
            "status, max_attempts, payload, created_at, updated_at) values ('dry', 'hot', ?, 'a99', 'slack:#x', 'slack', false, "
            "'dry_run', 6, '{}', now(), now())",
            [first - timedelta(days=1)],
        )
        cfg = parse_playbook_config(
            [{"name": "hot", "when": {"min_score": 0.5}, "then": [{"type": "slack", "channel": "#x"}]}]
        )
        [row] = readouts.write_playbook_readouts(con, cfg, conversion_window_days=30, confidence_level=0.95)
        assert (row["n_treated"], row["n_held_out"], row["n_unknown_account"]) == (30, 10, 1)
        assert (row["conversions_treated"], row["conversions_held_out"]) == (
            10,
            4,
        )  # every third account converted on day 4
        stored = con.sql(
            f"select playbook, n_treated, readout_window_days from {readouts.PLAYBOOK_READOUTS_TABLE}"
        ).fetchall()
        assert stored == [("hot", 30, 30)]


def test_an_experiment_that_cannot_be_read_out_is_left_out_and_named(con, monkeypatch):
    cfg = parse_playbook_config(
        experiments=[
            {"name": "onboarding", "flag": FLAG, "goal_event": "goal", "variants": ["control", "test"]},
            {"name": "broken", "flag": "other", "goal_event": "goal", "variants": ["control", "test"]},
        ]
    )
    real = readouts.experiment_counts

    def counts(con, experiment):
        if experiment.name == "broken":
            raise ValueError("expected_shares must be positive")
        return real(con, experiment)

    monkeypatch.setattr(readouts, "experiment_counts", counts)
    done, failed = readouts.write_experiment_readouts(con, cfg, 0.95)
    assert [r.experiment for r in done] == ["onboarding"]
    assert failed == {"broken": "expected_shares must be positive"}
    assert con.sql(f"select distinct experiment from {readouts.EXPERIMENT_READOUTS_TABLE}").fetchall() == [
        ("onboarding",)
    ]
