"""store/signals.py's activity strata on a small hand-made warehouse: per cohort month, every candidate's
counts over the activity bands add up to its marginal counts, the bands to the month, the activity is every
event of the account in the candidate's window (excluded events left out); re-counting a month replaces
exactly its band rows, and discovery refuses to adjust with a month's bands missing."""

import duckdb
import numpy as np
import polars as pl
import pytest

from beton_pipeline.core.discovery import ACTIVITY_BAND_RATIO
from beton_pipeline.core.stratified import activity_strata
from beton_pipeline.settings import Settings
from beton_pipeline.store import signals as store
from beton_pipeline.warehouse import connect
from tests.store.signal_marts import MONTHS, make_marts


@pytest.fixture
def counted(tmp_path):
    warehouse = make_marts(tmp_path / "warehouse.duckdb")
    with connect(warehouse) as con:
        for m in MONTHS:
            store.count_cohort(con, Settings(), m)
    return warehouse


def _table(con: duckdb.DuckDBPyConnection, table: str) -> pl.DataFrame:
    return con.sql(f"select * from {table} order by all").pl()


def test_stratum_counts_add_up_to_the_marginal_counts_per_candidate_and_month(counted):
    with duckdb.connect(str(counted), read_only=True) as con:
        marginal = _table(con, store.COHORT_COUNTS_TABLE)
        by_band = _table(con, store.STRATUM_COUNTS_TABLE)
        strata = _table(con, store.STRATA_TABLE)
    summed = by_band.group_by("cohort_month", "key").agg(pl.col("n_with").sum(), pl.col("conversions_with").sum())
    fired = marginal.filter(pl.col("n_with") > 0)
    joined = fired.join(summed, on=["cohort_month", "key"], how="full", suffix="_bands")
    assert joined.height == fired.height == summed.height > 0
    assert (joined["n_with"] == joined["n_with_bands"]).all()
    assert (joined["conversions_with"] == joined["conversions_with_bands"]).all()
    assert by_band.group_by("key").agg(pl.col("activity_window_days").n_unique())["activity_window_days"].max() == 1
    month_totals = marginal.group_by("cohort_month").agg(pl.col("n_total").first(), pl.col("conversions_total").first())
    band_totals = strata.group_by("cohort_month", "activity_window_days").agg(
        pl.col("n_total").sum(), pl.col("conversions_total").sum()
    )
    check = band_totals.join(month_totals, on="cohort_month", suffix="_month")
    assert check.height == len(MONTHS) * len(Settings().feature_windows)
    assert (check["n_total"] == check["n_total_month"]).all()
    assert (check["conversions_total"] == check["conversions_total_month"]).all()
    assert (by_band["n_with"] > 0).all()  # compact: only bands where a candidate has holders


def test_the_bands_are_deciles_of_all_events_in_the_window(counted):
    """Each month's bands, recomputed from the event mart in SQL (every event but the excluded ones): deciles,
    each split so that 1 + activity varies by less than ACTIVITY_BAND_RATIO within a band."""
    settings = Settings()
    excluded = list(settings.discovery.excluded_events)
    with duckdb.connect(str(counted), read_only=True) as con:
        strata = _table(con, store.STRATA_TABLE)
        for days in settings.feature_windows:
            activity = con.sql(
                f"""
                select strftime(o.cohort_month, '%Y-%m') as cohort_month, o.account_id,
                       coalesce(sum(e.n_first_{days}d) filter (where not list_contains(?, e.event_name)), 0) as activity
                from marts.account_outcomes o left join marts.account_event_features e using (account_id)
                where o.is_eligible and o.has_events group by all
                """,
                params=[excluded],
            ).pl()
            for month in MONTHS:
                values = activity.filter(pl.col("cohort_month") == month)["activity"].cast(pl.Float64).to_numpy()
                decile = activity_strata(values, settings.discovery.activity_strata).stratum
                log_bin = np.floor(np.log1p(values) / np.log(ACTIVITY_BAND_RATIO)).astype(int)
                bands = pl.DataFrame({"decile": decile, "log_bin": log_bin, "a": values})
                want = bands.group_by("decile", "log_bin").agg(
                    pl.len().alias("n"), pl.col("a").min().alias("low"), pl.col("a").max().alias("high")
                )
                want = want.sort("decile", "log_bin")
                got = strata.filter((pl.col("cohort_month") == month) & (pl.col("activity_window_days") == days))
                assert got["n_total"].to_list() == want["n"].to_list()
                assert got["activity_low"].to_list() == want["low"].cast(pl.Float64).to_list()
                assert got["activity_high"].to_list() == want["high"].cast(pl.Float64).to_list()
                assert ((1 + got["activity_high"]) / (1 + got["activity_low"]) < ACTIVITY_BAND_RATIO).all()


def test_recounting_a_month_replaces_exactly_its_band_rows(counted):
    with connect(counted) as con:
        before = {t: _table(con, t) for t in (store.STRATUM_COUNTS_TABLE, store.STRATA_TABLE)}
        store.count_cohort(con, Settings(), MONTHS[2])
        after = {t: _table(con, t) for t in before}
    for table in before:
        assert after[table].equals(before[table]), table


def test_one_band_setting_gives_one_stratum_per_month(tmp_path):
    warehouse = make_marts(tmp_path / "warehouse.duckdb")
    settings = Settings(discovery={"activity_strata": 1})
    with connect(warehouse) as con:
        store.count_cohort(con, settings, MONTHS[0])
        assert con.sql(f"select distinct stratum from {store.STRATA_TABLE}").fetchall() == [(0,)]


def test_discovery_refuses_to_adjust_without_a_months_bands(counted):
    with connect(counted) as con:
        con.execute(f"delete from {store.STRATA_TABLE} where cohort_month = ?", [MONTHS[1]])
        with pytest.raises(store.MissingCohortMonthsError) as err:
            store.discover(con, Settings())
    assert err.value.months == [MONTHS[1]]


def test_discovery_writes_adjusted_columns_for_discovered_singles(counted):
    with connect(counted) as con:
        written = store.discover(con, Settings()).written
    singles = written.filter(pl.col("kind") != "pair")
    assert singles["adjustment_method"].is_not_null().all()
    assert singles["adjusted_lift"].is_not_null().sum() > 0
    assert (singles["activity_strata"] >= 0).all()


def test_both_lifts_in_plain_words():
    from beton_pipeline.store.signal_detail import lift_in_words

    row = {"lift": 3.14, "confidence_level": 0.95, "adjustment_method": "Mantel-Haenszel RR …"}
    adjusted = {"adjusted_lift": 1.62, "adjusted_lift_ci_low": 1.31, "adjusted_lift_ci_high": 2.04}
    assert lift_in_words(row | adjusted) == "lift 3.1×; among equally active accounts 1.6× (95% CI 1.3–2.0)"
    no_interval = {"adjusted_lift": float("inf"), "adjusted_lift_ci_low": None, "adjusted_lift_ci_high": None}
    status = {"adjustment_status": "no conversions without the candidate in its informative strata"}
    assert lift_in_words(row | no_interval | status) == (
        "lift 3.1×; cannot be separated from overall activity (no conversions without the candidate in its "
        "informative strata)"
    )
    assert lift_in_words({"lift": 2.0, "adjustment_method": None}).startswith("lift 2.0×; not adjusted")
