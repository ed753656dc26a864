"""The live signals: only enabled discovered signals are scored and monitored, with what `signal_firings`
needs of them and their reference counts. (Their firings are checked end to end in tests/e2e.)"""

import duckdb
import polars as pl
import pytest

from beton_pipeline.store.live_signals import SIGNAL_COLUMNS, enabled_signals


def create_signals(con: duckdb.DuckDBPyConnection, enabled: bool) -> None:
    """beton.signals with a discovered signal (`enabled` or not), a disabled one and an enabled custom one."""
    con.execute("create schema if not exists beton")
    con.execute(
        """
        create or replace table beton.signals as
        select * from (values
            ('s1', 'discovered', ?, 'event_count', 'event:invited:first_14d:>=2', 'invited ≥ 2 in 14 days', 'invited', 2),
            ('s2', 'discovered', false, 'event_count', 'event:exported:first_14d:>=1', 'exported ≥ 1 in 14 days', 'exported', 1),
            ('c1', 'custom', true, 'condition', 'custom:c1', 'custom c1', null, null)
        ) t(signal_id, source, enabled, kind, candidate_key, definition, event, threshold)
        """,
        [enabled],
    )
    con.execute(
        "alter table beton.signals add column property varchar; alter table beton.signals add column value varchar; "
        "alter table beton.signals add column window_days integer default 14; "
        "alter table beton.signals add column part_a_id varchar; alter table beton.signals add column part_b_id varchar; "
        "alter table beton.signals add column lift double default 2.0; "
        "alter table beton.signals add column conversions_with integer default 20; alter table beton.signals add column n_with integer default 100; "
        "alter table beton.signals add column conversions_without integer default 50; alter table beton.signals add column n_without integer default 500"
    )


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
