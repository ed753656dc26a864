"""Account scoring on a small warehouse without enabled signals: who is in play each day, the revenue
numbers over the trailing 30 days, the calibration check on the later cohort, and the writes of
`refresh_account_scores` (exactly the partition days the data covers)."""

from datetime import date, datetime, timedelta

import duckdb
import polars as pl
import pytest

from beton_pipeline.settings import Settings
from beton_pipeline.store.scoring import SCORE_ENTRY, compute_account_scores, refresh_account_scores
from tests.store.daily_fixtures import create_outcomes, outcomes_frame, outcomes_warehouse

DAYS = [date(2025, 3, 15), date(2025, 3, 16)]


@pytest.fixture
def con(tmp_path):
    with outcomes_warehouse(tmp_path) as c:
        yield c


def _end_of(day: date) -> datetime:
    return datetime(day.year, day.month, day.day) + timedelta(days=1)


def _in_play(outcomes: pl.DataFrame, day: date) -> set[str]:
    end = _end_of(day)
    return {
        r["account_id"]
        for r in outcomes.iter_rows(named=True)
        if r["started_at"] < end
        and (r["converted_at"] is None or r["converted_at"] >= end)
        and r["outcome_window_end_at"] > end
    }


def test_scores_cover_the_accounts_in_play_each_day(con):
    outcomes = outcomes_frame()
    result = compute_account_scores(con, Settings(), DAYS)
    assert result.days == DAYS
    for day in DAYS:
        scored = result.scores.filter(pl.col("day") == day)
        assert set(scored["account_id"]) == _in_play(outcomes, day) and scored.height > 0
        assert sorted(scored["score_rank"]) == list(range(1, scored.height + 1))
        assert scored["score"].is_between(0, 1).all()
    # no enabled signal: nothing fired, every raw score is 0
    assert (result.scores["n_signals_fired"] == 0).all() and (result.scores["raw_score"] == 0).all()
    for name in ("signals_fired", "top_contributions", "intent_contributions"):  # empty lists, never null
        assert result.scores[name].dtype == pl.List(SCORE_ENTRY) and (result.scores[name].list.len() == 0).all()


def test_equal_scores_are_ranked_by_account_id(tmp_path):
    """The rank orders a day's accounts by score, highest first, and equal scores by account_id, so that two
    runs on the same data rank them alike. Without enabled signals, accounts of the same age tie: every
    account gets a twin that started with it, listed after it but with an id that sorts before it."""
    outcomes = outcomes_frame()
    twins = outcomes.with_columns(pl.col("account_id").str.replace("acc_", "aaa_"))
    create_outcomes(tmp_path / "twins.duckdb", pl.concat([outcomes, twins]))
    with duckdb.connect(str(tmp_path / "twins.duckdb")) as con:
        result = compute_account_scores(con, Settings(), DAYS)
    ties = 0
    for day in DAYS:
        ranked = result.scores.filter(pl.col("day") == day).sort("score_rank").select("score", "account_id").rows()
        for (score, account), (next_score, next_account) in zip(ranked, ranked[1:], strict=False):
            assert score > next_score or (score == next_score and account < next_account)
            ties += score == next_score
    assert ties > 0


def test_the_calibration_check_does_not_depend_on_the_order_of_the_rows(tmp_path):
    """The same accounts stored in two orders give the same calibration table and scores: equal predictions
    (accounts of the same age, no signal) fall into deciles by account_id, not by where a row happens to be."""
    outcomes = outcomes_frame(n_accounts=300, converts_every=3)
    results = []
    for name, frame in (("a", outcomes), ("b", outcomes.reverse())):
        create_outcomes(tmp_path / f"{name}.duckdb", frame)
        with duckdb.connect(str(tmp_path / f"{name}.duckdb")) as con:
            results.append(compute_account_scores(con, Settings(), DAYS))
    assert results[0].calibration.height > 0
    assert results[0].calibration.equals(results[1].calibration)
    assert results[0].scores.equals(results[1].scores)


def test_revenue_metrics_count_the_trailing_30_days(con):
    outcomes = outcomes_frame()
    result = compute_account_scores(con, Settings(), DAYS)
    assert result.revenue["day"].to_list() == DAYS
    for row in result.revenue.iter_rows(named=True):
        end = _end_of(row["day"])
        start = end - timedelta(days=30)
        closed = outcomes.filter((pl.col("outcome_window_end_at") >= start) & (pl.col("outcome_window_end_at") < end))
        converted = outcomes.filter(
            pl.col("converted") & (pl.col("converted_at") >= start) & (pl.col("converted_at") < end)
        )
        assert row["accounts_in_play"] == len(_in_play(outcomes, row["day"]))
        assert row["outcomes_closed_30d"] == closed.height > 0
        assert row["conversion_rate_30d"] == pytest.approx(closed["converted"].mean())
        assert row["conversions_30d"] == converted.height > 0
        assert row["pipeline_influenced_arr_30d"] == 0.0  # no signal fired before any conversion
        assert row["signal_accuracy_30d"] is None
        scored = result.scores.filter(pl.col("day") == row["day"])
        assert row["leads_surfaced"] == (scored["score"] >= Settings().scoring.lead_threshold).sum()


def test_calibration_is_checked_on_the_latest_cohort(con):
    result = compute_account_scores(con, Settings(), DAYS)
    # cohorts Jan, Feb, Mar 2025; a 30% holdout keeps March (31 of 90 accounts)
    assert result.calibration["decile"].to_list() == list(range(1, 11))
    march = outcomes_frame().filter(pl.col("cohort_month") == date(2025, 3, 1))
    assert result.calibration["n"].sum() >= march.height  # every March account is observed at one age at least
    assert result.calibration["predicted_rate"].is_between(0, 1).all()


def test_refresh_writes_exactly_the_partition_days_the_data_covers(con):
    keys = ["2025-01-05", *map(str, DAYS)]  # no outcome window had closed on 5 January
    result = refresh_account_scores(con, Settings(), keys)
    assert result.days == DAYS
    assert con.sql("select distinct day from beton.account_scores order by day").fetchall() == [(d,) for d in DAYS]
    assert con.sql("select day from beton.revenue_metrics order by day").fetchall() == [(d,) for d in DAYS]
    n_calibration = con.sql("select count(*) from beton.score_calibration").fetchall()[0][0]
    before = con.sql("select day, account_id, score from beton.account_scores order by all").fetchall()

    again = refresh_account_scores(con, Settings(), [str(DAYS[1])])
    assert again.days == [DAYS[1]]
    assert con.sql("select day, account_id, score from beton.account_scores order by all").fetchall() == before
    assert con.sql("select count(*) from beton.score_calibration").fetchall()[0][0] == n_calibration


def test_refresh_without_covered_days_writes_nothing(con):
    result = refresh_account_scores(con, Settings(), ["2024-12-31", "2025-01-05"])
    assert result.days == [] and result.scores.is_empty()
    assert con.sql("select count(*) from information_schema.tables where table_schema = 'beton'").fetchall() == [(0,)]
