"""Signal health's warehouse side on a small warehouse: which partition days are computed and written.
The health numbers themselves (stable signals healthy, a drifting one degrading) are checked end to end
in tests/e2e/test_monitoring.py, and the rules in tests/core/test_monitoring.py."""

from datetime import date

import pytest

from beton_pipeline.settings import Settings
from beton_pipeline.store.monitoring import compute_signal_health, refresh_signal_health
from tests.store.daily_fixtures import create_signals, outcomes_warehouse


@pytest.fixture
def con(tmp_path):
    with outcomes_warehouse(tmp_path) as c:
        yield c


def _beton_tables(con) -> list[str]:
    return [
        r[0]
        for r in con.sql(
            "select table_name from information_schema.tables where table_schema = 'beton' order by 1"
        ).fetchall()
    ]


def test_no_health_before_discovery_or_without_days(con):
    assert compute_signal_health(con, Settings(), [date(2025, 3, 15)]).is_empty()  # no beton.signals yet
    create_signals(con, enabled=False)
    assert compute_signal_health(con, Settings(), [date(2025, 3, 15)]).is_empty()  # no enabled signal
    create_signals(con, enabled=True)
    assert compute_signal_health(con, Settings(), []).is_empty()


def test_refresh_without_enabled_signals_leaves_an_empty_table_for_its_readers(con):
    health = refresh_signal_health(con, Settings(), ["2025-01-05", "2025-03-15", "2025-03-16", "2025-07-01"])
    assert health.days == [date(2025, 3, 15), date(2025, 3, 16)]  # windows close from 2 March; the as-of is 30 June
    assert health.rows.is_empty() and health.latest.is_empty() and health.broken == []
    assert _beton_tables(con) == ["signal_health"]
    assert con.sql("select count(*) from beton.signal_health").fetchall() == [(0,)]


def test_days_without_enabled_signals_drop_their_old_health_rows(con):
    """A signal disabled since: recomputing a day removes that day's rows instead of keeping stale health."""
    refresh_signal_health(con, Settings(), ["2025-03-15"])
    con.execute(
        "insert into beton.signal_health (day, signal_id, health) values ('2025-03-15', 'sig_old', 'healthy'), "
        "('2025-03-16', 'sig_old', 'healthy')"
    )
    refresh_signal_health(con, Settings(), ["2025-03-15"])
    assert con.sql("select day::varchar from beton.signal_health").fetchall() == [("2025-03-16",)]


def test_refresh_without_covered_days_computes_nothing(con):
    create_signals(con, enabled=True)
    health = refresh_signal_health(con, Settings(), ["2024-12-30", "2024-12-31"])
    assert health.days == [] and health.rows.is_empty()
    assert _beton_tables(con) == ["signals"]
