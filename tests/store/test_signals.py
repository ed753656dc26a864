"""store/signals.py on a small hand-made warehouse: cohort counts replace exactly their month, discovery
needs every month and rewrites only discovered and custom rows, overrides survive re-runs."""

import polars as pl
import pytest

from beton_pipeline.settings import Settings
from beton_pipeline.store import signals as store
from beton_pipeline.warehouse import connect
from tests.store.signal_marts import AS_OF, MONTHS, PER_MONTH, make_marts


@pytest.fixture
def warehouse(tmp_path):
    return make_marts(tmp_path / "warehouse.duckdb")


def _rows_per_month(con) -> dict[str, int]:
    return dict(con.sql(f"select cohort_month, count(*) from {store.COHORT_COUNTS_TABLE} group by 1").fetchall())


def test_recounting_a_month_replaces_exactly_its_rows(warehouse):
    settings = Settings()
    with connect(warehouse) as con:
        counted = [store.count_cohort(con, settings, m) for m in MONTHS]
        before = _rows_per_month(con)
        other = con.sql(
            f"select * from {store.COHORT_COUNTS_TABLE} where cohort_month <> ? order by all", params=[MONTHS[1]]
        ).fetchall()
        again = store.count_cohort(con, settings, MONTHS[1])
        assert _rows_per_month(con) == before
        assert (
            con.sql(
                f"select * from {store.COHORT_COUNTS_TABLE} where cohort_month <> ? order by all", params=[MONTHS[1]]
            ).fetchall()
            == other
        )
        totals = con.sql(
            f"select distinct n_total from {store.COHORT_COUNTS_TABLE} where cohort_month = ?", params=[MONTHS[1]]
        ).fetchall()
    assert set(before) == set(MONTHS) and again == counted[1]
    assert [c.eligible_accounts for c in counted] == [PER_MONTH] * len(MONTHS) and totals == [(PER_MONTH,)]
    assert all(c.candidates_seen > 0 for c in counted)


def test_discovery_refuses_to_run_on_missing_months(warehouse):
    settings = Settings()
    with connect(warehouse) as con:
        store.count_cohort(con, settings, MONTHS[0])
        with pytest.raises(store.MissingCohortMonthsError) as err:
            store.discover(con, settings)
    assert err.value.months == list(MONTHS[1:])


def test_discovery_rewrites_its_rows_and_keeps_overrides(warehouse):
    settings = Settings()
    with connect(warehouse) as con:
        for m in MONTHS:
            store.count_cohort(con, settings, m)
        first = store.discover(con, settings)
        ids = sorted(first.written.get_column("signal_id").to_list())
        planted = first.written.filter(pl.col("key") == "event:invited_teammate:first_14d:>=3").row(0, named=True)
        store.set_override(con, planted["signal_id"], not planted["enabled"], "test", "checking overrides")
        second = store.discover(con, settings)
        table = con.sql(
            f"select signal_id, enabled, enabled_override, as_of from {store.SIGNALS_TABLE} order by signal_id"
        ).pl()
        listed = store.read_signals(con)
    assert first.tested == second.tested == len(ids) > 0
    assert first.cohort_months == len(MONTHS) and first.split.holdout_months  # the latest month(s) held out
    assert table.get_column("signal_id").to_list() == ids  # replaced, not appended
    row = table.filter(pl.col("signal_id") == planted["signal_id"]).row(0, named=True)
    assert row["enabled"] is (not planted["enabled"]) and row["enabled_override"] is (not planted["enabled"])
    assert table.get_column("as_of").unique().to_list() == [AS_OF]
    assert listed.height == listed.get_column("family").n_unique()  # one row per family by default
