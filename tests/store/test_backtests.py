"""store/backtests.py on a small hand-made warehouse: backtests replace exactly their signals' rows, keep
launchpad rows, drop rows of signals that left beton.signals; discovered and custom signals agree."""

import polars as pl
import pytest

from beton_pipeline.settings import Settings
from beton_pipeline.store import backtests as store
from beton_pipeline.store.signals import count_cohort, discover
from beton_pipeline.warehouse import connect, table_exists
from tests.store.signal_marts import MONTHS, make_marts

PLANTED_KEY = "event:invited_teammate:first_14d:>=3"
DISCOVERY = Settings(discovery={"activity_strata": 1})
"""The hand-made marts' planted event is most of the accounts' activity: with activity bands nothing would be
left to compare within a band (tests/store/test_signal_thresholds.py does the same); cohort months stay strata."""
INVITES_YAML = 'name: Invites\nwhen:\n  event: invited_teammate\n  count: ">= 3"\n  within_days: 14\n'


@pytest.fixture
def warehouse(tmp_path):
    path = make_marts(tmp_path / "warehouse.duckdb")
    with connect(path) as con:
        for month in MONTHS:
            count_cohort(con, DISCOVERY, month)
        discover(con, DISCOVERY)
    return path


def _signal_ids(warehouse, key=None) -> list[str]:
    with connect(warehouse, read_only=True) as con:
        where = "where source = 'discovered' and enabled" if key is None else f"where candidate_key = '{key}'"
        return [r[0] for r in con.sql(f"select signal_id from beton.signals {where} order by 1").fetchall()]


def _table(warehouse) -> pl.DataFrame:
    with connect(warehouse, read_only=True) as con:
        return con.sql(f"select * from {store.BACKTESTS_TABLE} order by signal_id, cohort_month").pl()


def test_a_discovered_signal_is_backtested_on_every_month_with_its_discovery_counts(warehouse):
    [planted] = _signal_ids(warehouse, PLANTED_KEY)
    run = store.run_backtests(warehouse, Settings(), [planted, "sig_gone"])
    rows = _table(warehouse)
    assert run.missing == ["sig_gone"]
    assert rows.get_column("cohort_month").to_list() == list(MONTHS) and rows.get_column(
        "origin"
    ).unique().to_list() == ["discovery"]
    assert run.summary.height == 1 and run.summary.row(0, named=True)["signal_id"] == planted
    with connect(warehouse, read_only=True) as con:
        n_with, holdout_n_with = con.sql(
            "select n_with, holdout_n_with from beton.signals where signal_id = ?", params=[planted]
        ).fetchall()[0]
    assert rows.filter(pl.col("split") == "discovery").get_column("fired").sum() == n_with
    assert rows.filter(pl.col("split") == "holdout").get_column("fired").sum() == holdout_n_with


def test_rewriting_replaces_exactly_the_given_signals_and_keeps_launchpad_rows(warehouse):
    settings = Settings()
    enabled = _signal_ids(warehouse)
    [planted] = _signal_ids(warehouse, PLANTED_KEY)
    with connect(warehouse, read_only=True) as con:
        assert store.backtested_signal_ids(con) == enabled and planted in enabled
    pad = store.record_launchpad_backtest(INVITES_YAML, "auto", settings, warehouse)
    store.run_backtests(warehouse, settings, enabled)
    before = _table(warehouse)
    store.run_backtests(warehouse, settings, [planted])
    after = _table(warehouse)
    assert after.equals(before)  # re-materialising one partition: same rows, no duplicates
    assert set(after.get_column("signal_id")) == set(enabled) | {pad.signal.signal_id}
    assert after.filter(pl.col("signal_id") == pad.signal.signal_id).get_column("origin").unique().to_list() == [
        "launchpad"
    ]
    with connect(warehouse) as con:  # the planted signal leaves beton.signals' backtested set
        con.execute("update beton.signals set enabled = false where signal_id = ?", [planted])
        store.write_backtests(con, pl.DataFrame(schema=store.BACKTESTS_SCHEMA), [])
    left = set(_table(warehouse).get_column("signal_id"))
    assert planted not in left and pad.signal.signal_id in left


def test_a_definition_backtests_like_the_discovered_signal_without_writing(warehouse):
    [planted] = _signal_ids(warehouse, PLANTED_KEY)
    single = store.backtest_definition(INVITES_YAML, "invites.yml", "auto", Settings(), warehouse)
    discovered = store.compute_backtests(warehouse, Settings(), [planted]).rows
    assert single.signal.kind == "condition" and single.signal_row.height == 1
    assert single.periods.get_column("fired").to_list() == discovered.get_column("fired").to_list()
    assert single.periods.get_column("origin").unique().to_list() == ["invites.yml"]
    with connect(warehouse, read_only=True) as con:
        assert not table_exists(con, "beton", "signal_backtests")
