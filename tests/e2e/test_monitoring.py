"""Daily health, scores and revenue numbers on the session's demo warehouse."""

import shutil
from datetime import datetime, time, timedelta

import dagster as dg
import duckdb
import numpy as np
import polars as pl
import pytest
from scipy import stats

from beton_pipeline.settings import load_settings
from beton_pipeline.store.daily import data_days
from beton_pipeline.store.monitoring import compute_signal_health
from beton_pipeline.store.signals import set_override


@pytest.fixture
def con(pipeline_run):
    """A read-only connection per test: an in-process writer (a re-materialisation) cannot coexist with it."""
    c = duckdb.connect(str(pipeline_run.warehouse), read_only=True)
    yield c
    c.close()


def test_stable_planted_signals_stay_healthy_every_day(con, pipeline_run):
    planted = {p["event"] for p in pipeline_run.truth["planted"] if p["kind"] == "event_count"}
    rows = con.sql(
        "select h.day, h.health, s.event from beton.signal_health h join beton.signals s using (signal_id) where s.kind = 'event_count'"
    ).pl()
    rows = rows.filter(pl.col("event").is_in(list(planted)))
    assert rows.height > 0
    assert rows.filter(pl.col("health").is_in(["degrading", "broken"])).height == 0
    assert rows.filter(pl.col("health") == "healthy").height > 0.9 * rows.height


def test_drifting_signal_turns_degrading_after_its_drift(tmp_path, pipeline_run):
    copy = tmp_path / "drift.duckdb"
    shutil.copy(pipeline_run.warehouse, copy)
    drift = pipeline_run.truth["drifting"][0]
    key = f"event:{drift['event']}:first_{drift['window_days']}d:>={drift['threshold']}"
    with duckdb.connect(str(copy)) as con:
        signal_id = con.sql("select signal_id from beton.signals where candidate_key = ?", params=[key]).fetchall()[0][
            0
        ]
        set_override(con, signal_id, True, "test", "watch the drifting behaviour")
        lo, hi = data_days(con)
        days = [lo + timedelta(days=i) for i in range((hi - lo).days + 1)]
        health = compute_signal_health(con, load_settings(), days).filter(pl.col("signal_id") == signal_id)
    alarms = health.filter(pl.col("health").is_in(["degrading", "broken"]))
    assert alarms.height > 0
    drift_at = pl.Series([drift["drift_at"]]).str.to_date()[0]
    first_alarm = alarms["day"].min()
    # outcomes of post-drift cohorts close 60 days after the drift; the 90-day window needs them to dominate
    assert drift_at + timedelta(days=60) < first_alarm <= drift_at + timedelta(days=60 + 120)
    assert (
        health.filter(pl.col("day") < drift_at + timedelta(days=60))["health"].is_in(["degrading", "broken"]).sum() == 0
    )


def test_scores_are_calibrated_and_monotone_on_later_cohorts(con):
    table = con.sql("select * from beton.score_calibration order by decile").pl()
    assert table.height == 10
    rho = stats.spearmanr(table["decile"], table["observed_rate"]).statistic
    assert rho > 0.9
    assert table["observed_rate"][-1] > 3 * max(table["observed_rate"][0], 0.005)


def test_account_scores_cover_accounts_in_play_only(con):
    latest = con.sql("select * from beton.account_scores where day = (select max(day) from beton.account_scores)").pl()
    assert latest.height > 100
    assert latest["score"].is_between(0, 1).all()
    assert sorted(latest["score_rank"].to_list()) == list(range(1, latest.height + 1))
    joined = latest.join(
        con.sql("select account_id, started_at, converted_at, outcome_window_end_at from marts.account_outcomes").pl(),
        on="account_id",
    )
    checked = (
        joined.with_columns((pl.col("day").cast(pl.Datetime("us")) + pl.duration(days=1)).alias("end"))
        .select(
            (pl.col("started_at") < pl.col("end")).all().alias("started"),
            (pl.col("converted_at").is_null() | (pl.col("converted_at") >= pl.col("end"))).all().alias("not_converted"),
            (pl.col("outcome_window_end_at") > pl.col("end")).all().alias("window_open"),
        )
        .row(0, named=True)
    )
    assert all(checked.values()), checked
    for row in latest.filter(pl.col("n_signals_fired") > 0).head(50).iter_rows(named=True):
        fired = row["signals_fired"]
        assert len(fired) == row["n_signals_fired"]
        assert all(f["fired_at"] < datetime.combine(row["day"] + timedelta(days=1), time()) for f in fired)
        assert sum(f["contribution"] for f in fired) == pytest.approx(row["raw_score"], abs=1e-3)


def test_revenue_metrics_for_every_scored_day(con):
    metrics = con.sql("select * from beton.revenue_metrics order by day").pl()
    days = con.sql("select count(distinct day) from beton.account_scores").fetchall()[0][0]
    assert metrics.height >= days > 200
    last = metrics.row(-1, named=True)
    assert last["leads_surfaced"] > 0 and last["pipeline_influenced_arr_30d"] > 0
    assert 0 < last["conversion_rate_30d"] < 0.3


def test_rematerialising_days_is_idempotent(warehouse_env):
    run = warehouse_env
    from beton_pipeline.definitions import defs

    job = defs.resolve_implicit_global_asset_job_def()

    def snapshot():
        with duckdb.connect(str(run.warehouse), read_only=True) as c:
            return (
                c.sql("select * from beton.signal_health order by day, signal_id").fetchall(),
                c.sql("select day, account_id, score from beton.account_scores order by day, account_id").fetchall(),
            )

    before = snapshot()
    tags = {"dagster/asset_partition_range_start": "2025-10-01", "dagster/asset_partition_range_end": "2025-10-07"}
    for _ in range(3):
        job.execute_in_process(
            instance=run.instance,
            asset_selection=[dg.AssetKey("signal_health"), dg.AssetKey("account_scores")],
            tags=tags,
        )
    after = snapshot()
    assert after[0] == before[0]
    assert len(after[1]) == len(before[1]) and np.allclose([r[2] for r in after[1]], [r[2] for r in before[1]])
