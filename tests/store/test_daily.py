"""The daily tables' days: which days the data covers, partition keys clamped to them, and a write that
replaces exactly its days' rows (re-running a day is idempotent; other days are untouched)."""

from datetime import date, timedelta

import polars as pl
import pytest

from beton_pipeline.store.daily import clamp_days, data_days, partition_days, write_days
from tests.store.daily_fixtures import AS_OF, FIRST_START, WINDOW_DAYS, outcomes_warehouse


@pytest.fixture
def con(tmp_path):
    with outcomes_warehouse(tmp_path) as c:
        yield c


def _rows(day: date, value: float) -> pl.DataFrame:
    return pl.DataFrame({"day": [day, day], "signal_id": ["a", "b"], "value": [value, value]})


def test_data_days_run_from_the_first_closed_window_to_the_as_of(con):
    assert data_days(con) == ((FIRST_START + timedelta(days=WINDOW_DAYS)).date(), AS_OF.date())
    con.execute("update marts.account_outcomes set has_events = false where account_id = 'acc_000'")
    assert (
        data_days(con)[0] == (FIRST_START + timedelta(days=WINDOW_DAYS + 1)).date()
    )  # accounts without events do not count


def test_no_data_days_when_no_window_has_closed_or_no_account_has_events(con):
    con.execute(
        f"update marts.account_outcomes set as_of_at = timestamp '{FIRST_START + timedelta(days=WINDOW_DAYS - 1)}'"
    )
    assert data_days(con) is None
    con.execute("update marts.account_outcomes set has_events = false")
    assert data_days(con) is None


def test_clamp_days_keeps_the_keys_within_the_bounds():
    keys = ["2025-02-27", "2025-02-28", "2025-03-01", "2025-03-02"]
    assert clamp_days(keys, (date(2025, 2, 28), date(2025, 3, 1))) == [date(2025, 2, 28), date(2025, 3, 1)]
    assert clamp_days(keys, None) == []
    assert clamp_days([], (date(2025, 1, 1), date(2025, 12, 31))) == []


def test_partition_days_are_the_keys_the_warehouse_covers(con):
    lo, hi = data_days(con)
    keys = [str(lo - timedelta(days=1)), str(lo), str(hi), str(hi + timedelta(days=1))]
    assert partition_days(con, keys) == [lo, hi]


def test_write_days_replaces_exactly_its_days(con):
    days = [date(2025, 3, 1) + timedelta(days=i) for i in range(5)]
    write_days(con, "beton.daily_test", pl.concat([_rows(d, 1.0) for d in days]), days)
    write_days(con, "beton.daily_test", pl.concat([_rows(d, 2.0) for d in days[1:3]]), days[1:3])
    write_days(con, "beton.daily_test", pl.concat([_rows(d, 2.0) for d in days[1:3]]), days[1:3])  # idempotent
    got = con.sql("select day, value, count(*) as n from beton.daily_test group by all order by day").fetchall()
    assert got == [(days[0], 1.0, 2), (days[1], 2.0, 2), (days[2], 2.0, 2), (days[3], 1.0, 2), (days[4], 1.0, 2)]


def test_write_days_with_an_empty_frame_clears_the_days_or_does_nothing(con):
    day = date(2025, 3, 1)
    write_days(con, "beton.never_written", pl.DataFrame(), [day])  # no table, nothing to write: no table made
    assert con.sql("select count(*) from information_schema.tables where table_name = 'never_written'").fetchall() == [
        (0,)
    ]
    write_days(con, "beton.daily_test", _rows(day, 1.0), [day])
    write_days(con, "beton.daily_test", _rows(day, 1.0).clear(), [day])
    assert con.sql("select count(*) from beton.daily_test").fetchall() == [(0,)]
