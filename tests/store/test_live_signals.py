"""The live signals: only enabled discovered signals are scored and monitored, with what `signal_firings`
needs of them and their reference counts. (Their firings are checked end to end in tests/e2e.)"""

import duckdb
import polars as pl
import pytest

from beton_pipeline.store.live_signals import SIGNAL_COLUMNS, enabled_signals
from tests.store.daily_fixtures import create_signals


@pytest.fixture
def con(tmp_path):
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as c:
        yield c


def test_no_signals_before_discovery(con):
    assert enabled_signals(con).is_empty()


def test_only_enabled_discovered_signals_are_live(con):
    create_signals(con, enabled=True)
    live = enabled_signals(con)
    assert live["signal_id"].to_list() == ["s1"]
    assert live.columns == [c.strip().split(" as ")[-1] for c in SIGNAL_COLUMNS.split(",")]
    assert live.row(0, named=True)["key"] == "event:invited:first_14d:>=2"
    create_signals(con, enabled=False)
    assert enabled_signals(con).height == 0 and isinstance(enabled_signals(con), pl.DataFrame)
