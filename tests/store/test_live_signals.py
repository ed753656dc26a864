"""The live signals: the enabled signals, discovered and custom, are scored and monitored, with what
`signal_firings` needs of them and their reference counts; custom signals' firings are read from
beton.custom_signal_firings. (Discovered firings are checked end to end in tests/e2e.)"""

from datetime import datetime

import duckdb
import polars as pl
import pytest

from beton_pipeline.store.custom_signals import write_custom_firings
from beton_pipeline.store.firings import FIRING_SCHEMA
from beton_pipeline.store.live_signals import SIGNAL_COLUMNS, enabled_firings, enabled_signals
from tests.store.daily_fixtures import create_signals


@pytest.fixture
def con(tmp_path):
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as c:
        yield c


def test_no_signals_before_discovery(con):
    assert enabled_signals(con).is_empty()


def test_enabled_discovered_and_custom_signals_are_live(con):
    create_signals(con, enabled=True)
    live = enabled_signals(con)
    assert live["signal_id"].to_list() == ["c1", "s1"]  # custom first, then discovered
    assert live["source"].to_list() == ["custom", "discovered"]
    assert live.columns == [c.strip().split(" as ")[-1] for c in SIGNAL_COLUMNS.split(",")]
    assert live.filter(pl.col("signal_id") == "s1").row(0, named=True)["key"] == "event:invited:first_14d:>=2"
    create_signals(con, enabled=False)
    assert enabled_signals(con).height == 0 and isinstance(enabled_signals(con), pl.DataFrame)


def test_custom_firings_come_from_the_stored_table_for_enabled_custom_signals_only(con):
    create_signals(con, enabled=True)
    live = enabled_signals(con).filter(pl.col("source") == "custom")
    assert enabled_firings(con, live).is_empty()  # before the first custom_signals run: no table, no firings
    stored = pl.DataFrame(
        {
            "account_id": ["a", "b", "a"],
            "signal_id": ["c1", "c1", "c_other"],
            "fired_at": [datetime(2025, 1, 2), datetime(2025, 1, 5), datetime(2025, 1, 3)],
        },
        schema=FIRING_SCHEMA,
    )
    write_custom_firings(con, stored)
    fired = enabled_firings(con, live).sort("account_id")
    assert fired.equals(stored.filter(pl.col("signal_id") == "c1").sort("account_id"))
