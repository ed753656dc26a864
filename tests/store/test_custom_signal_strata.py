"""Custom signals among equally active accounts, on a small hand-made warehouse: the `custom_signals` counts per
activity band use the bands of the discovered candidates of the same month and window (the observation
window), so a custom condition that equals a discovered candidate gets exactly its adjusted figures and its
recommendation (the singles' rule: adjusted bar, holdout replication); without custom band counts (a warehouse counted before they existed) custom rows keep the marginal rule alone."""

import duckdb
import polars as pl
import pytest

from beton_pipeline.core.discovery import ADJUSTED_COLUMNS
from beton_pipeline.settings import Settings
from beton_pipeline.store import custom_signals as custom
from beton_pipeline.store import signals as store
from beton_pipeline.warehouse import connect
from tests.store.signal_marts import MONTHS, make_marts

OBSERVATION = Settings().windows.observation_days
INVITES_YAML = f"""\
name: Invites
when:
  event: invited_teammate
  count: ">= 3"
  within_days: {OBSERVATION}
"""
DISCOVERED_KEY = f"event:invited_teammate:first_{OBSERVATION}d:>=3"


@pytest.fixture
def counted(tmp_path):
    warehouse = make_marts(tmp_path / "warehouse.duckdb")
    signals_dir = tmp_path / "signals"
    signals_dir.mkdir()
    (signals_dir / "invites.yml").write_text(INVITES_YAML)
    with connect(warehouse) as con:
        for m in MONTHS:
            store.count_cohort(con, Settings(), m)
    custom.count_custom_signals(warehouse, Settings(), signals_dir)
    return warehouse


def _table(con: duckdb.DuckDBPyConnection, table: str, where: str = "true") -> pl.DataFrame:
    return con.sql(f"select * exclude (key) from {table} where {where} order by all").pl()


def test_custom_bands_are_the_discovered_bands_of_the_observation_window(counted):
    window = f"activity_window_days = {OBSERVATION}"
    with duckdb.connect(str(counted), read_only=True) as con:
        [key] = con.sql(f"select distinct key from {custom.CUSTOM_STRATUM_COUNTS_TABLE}").fetchall()[0]
        discovered_strata = con.sql(f"select * from {store.STRATA_TABLE} where {window} order by all").pl()
        custom_strata = con.sql(f"select * from {custom.CUSTOM_STRATA_TABLE} order by all").pl()
        discovered = _table(con, store.STRATUM_COUNTS_TABLE, f"key = '{DISCOVERED_KEY}'")
        counted_custom = _table(con, custom.CUSTOM_STRATUM_COUNTS_TABLE)
        marginal = con.sql(
            f"select cohort_month, n_with, conversions_with from {custom.CUSTOM_COUNTS_TABLE} order by all"
        ).pl()
    assert key.startswith(custom.CONDITION_PREFIX)
    assert custom_strata.height > len(MONTHS)  # several bands per month
    assert custom_strata.equals(discovered_strata)
    assert counted_custom.height > 0 and counted_custom.equals(discovered)
    summed = (
        counted_custom.group_by("cohort_month").agg(pl.col("n_with", "conversions_with").sum()).sort("cohort_month")
    )
    assert summed.equals(marginal.filter(pl.col("n_with") > 0))


def test_a_custom_signal_gets_the_adjusted_figures_of_the_same_discovered_candidate(counted):
    with connect(counted) as con:
        written = store.discover(con, Settings()).written
    custom_row = written.filter(pl.col("source") == "custom")
    discovered_row = written.filter(pl.col("key") == DISCOVERED_KEY)
    assert custom_row.height == discovered_row.height == 1
    compared = [*ADJUSTED_COLUMNS, "lift", "lift_ci_low", "p_value", "holdout_lift", "recommendation"]
    assert custom_row.select(compared).equals(discovered_row.select(compared))
    assert custom_row["adjustment_method"].item() is not None
    assert f"first {OBSERVATION} days" in custom_row["adjustment_method"].item()
    assert custom_row["adjusted_lift"].item() > 1
    # here invites are most of an account's activity: among equally active accounts the effect is not
    # significant, so the custom signal is `review` like the candidate (the marginal rule alone enables it:
    # test_without_custom_band_counts_custom_rows_keep_the_marginal_rule)
    assert custom_row["recommendation"].item() == "review"
    assert custom_row["recommendation_reason"].item().startswith("explained by overall activity")


def test_without_custom_band_counts_custom_rows_keep_the_marginal_rule(counted):
    with connect(counted) as con:
        con.execute(f"drop table {custom.CUSTOM_STRATA_TABLE}")
        written = store.discover(con, Settings()).written
    row = written.filter(pl.col("source") == "custom")
    assert row.select(ADJUSTED_COLUMNS).null_count().row(0) == (1,) * len(ADJUSTED_COLUMNS)
    assert row["recommendation"].item() == "enable"  # the marginal rule alone (strong planted effect)
    assert written.filter(pl.col("key") == DISCOVERED_KEY)["adjustment_method"].item() is not None


def test_an_empty_signal_folder_empties_the_band_tables(counted, tmp_path):
    empty = tmp_path / "none"
    empty.mkdir()
    assert custom.count_custom_signals(counted, Settings(), empty) == []
    with duckdb.connect(str(counted), read_only=True) as con:
        for table in (custom.CUSTOM_STRATUM_COUNTS_TABLE, custom.CUSTOM_STRATA_TABLE):
            assert con.sql(f"select count(*) from {table}").fetchall() == [(0,)]
