"""Account scores without the accounts × days cross join, in batches bounded by `scoring.max_rows_per_batch`:
the same rows as the plain way. The reference here is the old computation written out again: every outcome
crossed with every day, then filtered (`_in_play_by_cross_join`, `_revenue_by_cross_join`). It is checked
against the interval generation on random outcomes (hypothesis: timestamps on and off midnight, windows
closing on the day, conversions on a partition boundary, days outside the data, scattered days), and end to
end on a warehouse with firing custom signals and their health, with one row per batch forcing a batch per
day, against the whole run computed with the reference in one batch."""

from datetime import date, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from beton_pipeline.settings import Settings
from beton_pipeline.store import scoring
from beton_pipeline.store.scoring import (
    compute_account_scores,
    day_batches,
    expand_intervals,
    in_play,
    interval_counts,
    refresh_account_scores,
    revenue_metrics,
)
from tests.store.daily_fixtures import create_outcomes, create_signals, outcomes_frame

HYP = settings(max_examples=120, deadline=None)
EPOCH = date(1970, 1, 1)


# ---------------------------------------------------------------------------------------------------------
# The reference: the old cross join, written out again


def _day_frame(days: list[date]) -> pl.DataFrame:
    return pl.DataFrame({"day": days}, schema={"day": pl.Date}).with_columns(
        (pl.col("day").cast(pl.Datetime("us")) + pl.duration(days=1)).alias("observed_at")
    )


def _in_play_by_cross_join(outcomes: pl.DataFrame, days: list[date]) -> pl.DataFrame:
    return (
        outcomes.join(_day_frame(days), how="cross")
        .filter(
            (pl.col("started_at") < pl.col("observed_at"))
            & (pl.col("converted_at").is_null() | (pl.col("converted_at") >= pl.col("observed_at")))
            & (pl.col("outcome_window_end_at") > pl.col("observed_at"))
        )
        .with_row_index("obs_id")
        .with_columns(
            ((pl.col("observed_at") - pl.col("started_at")).dt.total_microseconds() / 86_400_000_000).alias("age_days")
        )
    )


def _revenue_by_cross_join(
    outcomes: pl.DataFrame, first_fired: pl.DataFrame, scores: pl.DataFrame, days: list[date], lead_threshold: float
) -> pl.DataFrame:
    o = outcomes.join(first_fired, on="account_id", how="left")
    day_frame = pl.DataFrame({"day": days}, schema={"day": pl.Date}).with_columns(
        (pl.col("day").cast(pl.Datetime("us")) + pl.duration(days=1)).alias("end"),
        (pl.col("day").cast(pl.Datetime("us")) - pl.duration(days=29)).alias("start"),
    )
    closed = o.join(day_frame, how="cross").filter(
        (pl.col("outcome_window_end_at") >= pl.col("start")) & (pl.col("outcome_window_end_at") < pl.col("end"))
    )
    signalled = pl.col("first_fired_at").is_not_null()
    closed_stats = closed.group_by("day").agg(
        pl.len().alias("outcomes_closed_30d"),
        pl.col("converted").mean().alias("conversion_rate_30d"),
        pl.col("converted").filter(signalled).mean().alias("signal_accuracy_30d"),
    )
    converted = o.join(day_frame, how="cross").filter(
        pl.col("converted") & (pl.col("converted_at") >= pl.col("start")) & (pl.col("converted_at") < pl.col("end"))
    )
    influenced = converted.group_by("day").agg(
        pl.len().alias("conversions_30d"),
        pl.col("arr")
        .filter(pl.col("first_fired_at") < pl.col("converted_at"))
        .sum()
        .alias("pipeline_influenced_arr_30d"),
    )
    leads = scores.group_by("day").agg(
        pl.len().alias("accounts_in_play"), (pl.col("score") >= lead_threshold).sum().alias("leads_surfaced")
    )
    return (
        day_frame.select("day")
        .join(leads, on="day", how="left")
        .join(closed_stats, on="day", how="left")
        .join(influenced, on="day", how="left")
        .with_columns(
            pl.col("accounts_in_play", "leads_surfaced", "outcomes_closed_30d", "conversions_30d")
            .fill_null(0)
            .cast(pl.Int64),
            pl.col("pipeline_influenced_arr_30d").fill_null(0.0),
        )
        .sort("day")
    )


# ---------------------------------------------------------------------------------------------------------
# Random outcomes: instants on midnight (partition boundaries) or anywhere, windows closing on the day


T0 = datetime(2025, 1, 1)
SPAN_DAYS = 40


@st.composite
def _instants(draw, lo_minutes: int = 0):
    """Minutes after T0: on a midnight half the time (a partition boundary), else anywhere."""
    if draw(st.booleans()):
        return lo_minutes + 1440 * draw(st.integers(0, SPAN_DAYS))
    return lo_minutes + draw(st.integers(0, 1440 * SPAN_DAYS))


@st.composite
def _outcomes(draw) -> pl.DataFrame:
    rows = []
    for i in range(draw(st.integers(0, 12))):
        start = draw(_instants())
        window_end = draw(_instants(start))
        converts = draw(st.booleans())
        converted_at = draw(_instants(start)) if converts else None
        rows.append(
            {
                "account_id": f"a{i}",
                "started_at": T0 + timedelta(minutes=start),
                "converted_at": None if converted_at is None else T0 + timedelta(minutes=converted_at),
                "converted": converts,
                "arr": float(draw(st.integers(1, 50)) * 1000) if converts else None,
                "outcome_window_end_at": T0 + timedelta(minutes=window_end),
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "account_id": pl.String,
            "started_at": pl.Datetime("us"),
            "converted_at": pl.Datetime("us"),
            "converted": pl.Boolean,
            "arr": pl.Float64,
            "outcome_window_end_at": pl.Datetime("us"),
        },
    )


# days before, inside and after the instants, scattered (any subset)
_days = st.lists(st.integers(-35, SPAN_DAYS * 2 + 5), unique=True).map(
    lambda xs: sorted(T0.date() + timedelta(days=x) for x in xs)
)


@HYP
@given(_outcomes(), _days)
def test_in_play_rows_are_those_of_the_cross_join(outcomes, days):
    assert_frame_equal(in_play(outcomes, days), _in_play_by_cross_join(outcomes, days), check_exact=True)


@HYP
@given(_outcomes(), _days, st.floats(0.05, 0.95))
def test_revenue_metrics_are_those_of_the_cross_join(outcomes, days, threshold):
    first_fired = outcomes.select(
        "account_id", (pl.col("started_at") + pl.duration(days=2)).alias("first_fired_at")
    ).gather_every(2)
    scores = in_play(outcomes, days).select("day", (pl.col("age_days") / 100).alias("score"))
    got = revenue_metrics(outcomes, first_fired, scores, days, threshold)
    assert_frame_equal(got, _revenue_by_cross_join(outcomes, first_fired, scores, days, threshold), check_exact=True)


def test_a_null_bound_puts_an_outcome_in_play_on_no_day():
    outcomes = outcomes_frame(4).with_columns(
        pl.when(pl.col("account_id") == "acc_001")
        .then(None)
        .otherwise(pl.col("outcome_window_end_at"))
        .alias("outcome_window_end_at"),
        pl.when(pl.col("account_id") == "acc_002").then(None).otherwise(pl.col("started_at")).alias("started_at"),
    )
    days = [date(2025, 1, 1) + timedelta(days=i) for i in range(70)]
    got = in_play(outcomes, days)
    assert set(got["account_id"]) == {"acc_000", "acc_003"}
    assert_frame_equal(got, _in_play_by_cross_join(outcomes, days), check_exact=True)


# ---------------------------------------------------------------------------------------------------------
# The interval helpers, against brute force


@st.composite
def _intervals(draw):
    n = draw(st.integers(0, 15))
    first = np.array(draw(st.lists(st.integers(-5, 30), min_size=n, max_size=n)), dtype=np.int64)
    length = np.array(draw(st.lists(st.integers(-3, 20), min_size=n, max_size=n)), dtype=np.int64)
    days = np.array(sorted(draw(st.sets(st.integers(-10, 40)))), dtype=np.int64)
    return first, first + length, days


@HYP
@given(_intervals())
def test_expand_intervals_lists_every_day_of_every_interval_row_by_row(case):
    first, last, days = case
    rows, at = expand_intervals(first, last, days)
    want = [(r, j) for r in range(first.size) for j in range(days.size) if first[r] <= days[j] <= last[r]]
    assert list(zip(rows.tolist(), at.tolist(), strict=True)) == want
    counts = interval_counts(first, last, days)
    assert counts.tolist() == [sum(1 for r in range(first.size) if first[r] <= d <= last[r]) for d in days]


@HYP
@given(st.lists(st.integers(0, 50), max_size=40), st.integers(1, 120))
def test_day_batches_cover_the_days_in_order_under_the_bound(counts, max_rows):
    batches = day_batches(np.array(counts, dtype=np.int64), max_rows)
    assert [i for a, b in batches for i in range(a, b)] == list(range(len(counts)))
    for a, b in batches:
        assert b > a and (sum(counts[a:b]) <= max_rows or b - a == 1)
    # greedy: a batch ends only where the next day would not fit
    for (a, b), _ in zip(batches, batches[1:], strict=False):
        assert sum(counts[a : b + 1]) > max_rows


# ---------------------------------------------------------------------------------------------------------
# End to end: a warehouse with firing signals and their health


WAREHOUSE_DAYS = [  # scattered, unsorted, some outside the data
    date(2025, 3, 16),
    date(2024, 12, 1),
    date(2025, 1, 1),
    date(2025, 2, 10),
    date(2025, 2, 11),
    date(2025, 3, 1),
    date(2025, 3, 15),
    date(2025, 3, 31),
    date(2025, 5, 20),
    date(2026, 1, 1),
]


def _edge_outcomes() -> pl.DataFrame:
    """`outcomes_frame` (starts, conversions and window ends at midnight: on partition boundaries) and accounts
    starting, converting and closing off midnight, converting as the window closes, closing at the end of a
    scored day."""
    base = outcomes_frame()
    extra = base.head(6).with_columns(
        pl.format("edge_{}", pl.int_range(pl.len())).alias("account_id"),
        pl.Series(
            "started_at",
            [
                datetime(2025, 2, 10, 13, 5),
                datetime(2025, 2, 28, 23, 59, 59),
                datetime(2025, 3, 1),
                datetime(2025, 1, 20, 6),
                datetime(2025, 3, 14, 12),
                datetime(2025, 1, 5),
            ],
        ),
        pl.Series(
            "converted_at",
            [datetime(2025, 3, 16, 0, 0, 1), None, datetime(2025, 3, 16), datetime(2025, 3, 21, 6), None, None],
            dtype=pl.Datetime("us"),
        ),
        pl.Series("converted", [True, False, True, True, False, False]),
        pl.Series("arr", [5000.0, None, 7000.0, 9000.0, None, None]),
        pl.Series(
            "outcome_window_end_at",
            [
                datetime(2025, 4, 11, 13, 5),
                datetime(2025, 3, 16),  # closes at the end of 15 March
                datetime(2025, 4, 30),
                datetime(2025, 3, 21, 6),  # converts as the window closes
                datetime(2025, 3, 16, 0, 0, 1),
                datetime(2025, 3, 6),
            ],
        ),
    )
    return pl.concat([base, extra])


@pytest.fixture
def con(tmp_path):
    import duckdb

    path = tmp_path / "warehouse.duckdb"
    outcomes = _edge_outcomes()
    create_outcomes(path, outcomes)
    with duckdb.connect(str(path)) as c:
        create_signals(c, enabled=True)
        c.execute("delete from beton.signals where source <> 'custom'")
        c.execute(
            "insert into beton.signals (signal_id, source, enabled, kind, candidate_key, definition, lift) "
            "values ('c2', 'custom', true, 'intent', 'custom:c2', 'intent c2', 1.5), "
            "('c3', 'custom', true, 'condition', 'custom:c3', 'custom c3', 3.0)"
        )
        ids = outcomes["account_id"].to_list()
        firings = [
            (a, s, outcomes["started_at"][i] + timedelta(days=k, hours=3 * k))
            for i, a in enumerate(ids)
            for k, s in enumerate(("c1", "c2", "c3"))
            if (i + k) % (2 + k) == 0
        ]
        c.execute(
            "create table beton.custom_signal_firings (account_id varchar, signal_id varchar, fired_at timestamp)"
        )
        c.executemany("insert into beton.custom_signal_firings values (?, ?, ?)", firings)
        health = [
            (
                d,
                s,
                "degrading"
                if s == "c1" and d >= date(2025, 3, 10)
                else "broken"
                if s == "c3" and d >= date(2025, 3, 15)
                else "healthy",
            )
            for d in (date(2025, 2, 1) + timedelta(days=i) for i in range(50))
            for s in ("c1", "c2", "c3")
        ]
        c.execute("create table beton.signal_health (day date, signal_id varchar, health varchar)")
        c.executemany("insert into beton.signal_health values (?, ?, ?)", health)
        yield c


def _same(got: pl.DataFrame, want: pl.DataFrame) -> None:
    """Equal frames: every column exactly, but for floats to 1e-12 relative (a row's raw score is the sum of its
    contributions in join order, which polars does not fix: the last bit can differ between two runs)."""
    assert_frame_equal(got, want, check_exact=False, rtol=1e-12, atol=1e-15)


def _batched(max_rows: int) -> Settings:
    return Settings.model_validate({"scoring": {"max_rows_per_batch": max_rows}})


def test_scores_and_revenue_are_those_of_the_cross_join_with_a_batch_per_day(con, monkeypatch):
    got = compute_account_scores(con, _batched(1), WAREHOUSE_DAYS)
    n_days_in_play = got.scores["day"].n_unique()
    assert got.n_batches >= n_days_in_play >= 6  # one row per batch: every day in play is a batch of its own
    with monkeypatch.context() as m:
        m.setattr(scoring, "in_play", _in_play_by_cross_join)
        m.setattr(scoring, "revenue_metrics", _revenue_by_cross_join)
        want = compute_account_scores(con, _batched(10**9), WAREHOUSE_DAYS)
    assert want.n_batches == 1
    assert got.scores.height > 100 and (got.scores["n_signals_fired"] > 0).sum() > 50
    assert set(got.scores["signals_fired"].explode().struct.field("health").drop_nulls()) >= {"degrading", "broken"}
    _same(got.scores, want.scores)
    _same(got.revenue, want.revenue)
    _same(got.calibration, want.calibration)
    assert got.days == want.days == WAREHOUSE_DAYS and got.days_without_health == want.days_without_health
    # the days outside the data are there, with nobody in play
    assert got.revenue.filter(pl.col("day") == date(2026, 1, 1))["accounts_in_play"].item() == 0
    # and any batch size gives the same rows
    for max_rows in (40, 100):
        again = compute_account_scores(con, _batched(max_rows), WAREHOUSE_DAYS)
        assert 1 < again.n_batches < got.n_batches
        _same(again.scores, want.scores)
        _same(again.revenue, want.revenue)


def test_an_empty_batch_has_the_columns_of_a_full_one(con):
    s = scoring._prepare(con, Settings(), [date(2025, 3, 15)])
    full, full_revenue = scoring._score_days(s, [date(2025, 3, 15)])
    empty, empty_revenue = scoring._score_days(s, [])  # a batch of days without accounts in play
    assert full.height and empty.is_empty() and empty_revenue.is_empty()
    assert empty.schema == full.schema and empty_revenue.schema == full_revenue.schema


def _table(con, name: str) -> pl.DataFrame:
    return con.sql(f"select * from {name} order by day, score_rank").pl()


def test_refresh_writes_the_rows_batch_by_batch_each_day_whole(con, monkeypatch):
    keys = [d.isoformat() for d in WAREHOUSE_DAYS]
    result = refresh_account_scores(con, _batched(1), keys)
    covered = sorted(result.days)
    assert result.scores.is_empty() and result.n_batches == len(covered) > 3
    want = compute_account_scores(con, Settings(), covered)
    written = _table(con, "beton.account_scores")
    assert result.n_scores == written.height == want.scores.height
    _same(written, want.scores)
    _same(con.sql("select * from beton.revenue_metrics order by day").pl(), want.revenue)
    _same(result.revenue.sort("day"), want.revenue)

    # a failure in the third batch: the first two batches' days are new, the others keep their old rows
    calls = {"n": 0}
    real = scoring._score_days

    def failing(s, days):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real(s, days)

    con.execute("update beton.account_scores set score = -1")
    monkeypatch.setattr(scoring, "_score_days", failing)
    with pytest.raises(RuntimeError, match="boom"):
        refresh_account_scores(con, _batched(1), keys)
    assert calls["n"] == 3
    after = _table(con, "beton.account_scores")
    new_days = covered[:2]
    _same(after.filter(pl.col("day").is_in(new_days)), want.scores.filter(pl.col("day").is_in(new_days)))
    old = after.filter(~pl.col("day").is_in(new_days))
    assert old.height == want.scores.filter(~pl.col("day").is_in(new_days)).height and (old["score"] == -1).all()


def test_the_scores_benchmark_runs_every_monitoring_day_in_batches_under_the_warehouse_limit(
    con, tmp_path, monkeypatch, capsys
):
    """`benchmarks/scores.py` (the figures in README's performance section): it scores every monitoring day
    of the warehouse with the batch size asked for, and its memory limit is the warehouse's own setting
    (`BETON_DUCKDB_MEMORY_LIMIT`), as the connection reports it."""
    import json

    import duckdb

    from benchmarks import scores as bench
    from beton_pipeline.store.daily import data_days, monitoring_day_keys

    monkeypatch.setenv("BETON_DUCKDB_MEMORY_LIMIT", "2GB")  # restored after the test: main() sets it
    config = tmp_path / "beton.yaml"
    config.write_text('monitoring:\n  start_date: "2024-01-01"\n')
    path = con.sql("select path from duckdb_databases() where database_name = current_database()").fetchall()[0][0]
    bench.main(["--warehouse", path, "--config", str(config), "--max-rows-per-batch", "3", "--memory-limit", "300MB"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    days = monitoring_day_keys(data_days(con), date(2024, 1, 1))
    want = compute_account_scores(con, Settings(), [date.fromisoformat(d) for d in days])
    assert report["days"] == len(days) > 3 and report["max_rows_per_batch"] == 3
    assert report["account_scores_rows"] == want.scores.height > 0
    with duckdb.connect() as scratch:
        scratch.execute("set memory_limit = '300MB'")
        assert report["memory_limit"] == scratch.sql("select current_setting('memory_limit')").fetchall()[0][0]
