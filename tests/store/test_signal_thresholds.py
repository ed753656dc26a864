"""Count thresholds from the data, through the warehouse: `count_thresholds: auto` counts every cohort month
on the same grid, discovery enables a planted effect at exactly its threshold (4, or 38 among counts in
the dozens), and the backtest of that signal fires for exactly the accounts discovery counted."""

import duckdb
import numpy as np
import polars as pl
import pytest

from beton_pipeline.settings import Settings
from beton_pipeline.store import backtests
from beton_pipeline.store import signals as store
from beton_pipeline.warehouse import connect
from tests.store.signal_marts import MONTHS, make_marts


def planted_warehouse(path, event: str, counts: np.ndarray, threshold: int):
    """The signal marts with one more event (`counts` per account, every window) and outcomes replaced:
    accounts whose count reaches `threshold` convert at 70 %, the others at 10 %."""
    make_marts(path)
    windows = Settings().feature_windows
    rng = np.random.default_rng(11)
    with duckdb.connect(str(path)) as con:
        ids = [r[0] for r in con.sql("select account_id from marts.account_outcomes order by account_id").fetchall()]
        converted = rng.random(len(ids)) < np.where(counts >= threshold, 0.7, 0.1)
        outcome = pl.DataFrame({"account_id": ids, "_converted": converted})
        features = pl.DataFrame(
            {
                "account_id": ids,
                "event_name": event,
                **{f"n_first_{d}d": counts for d in windows},
                "n_in_window": counts,
            }
        ).filter(pl.col("n_in_window") > 0)
        con.register("_outcome", outcome.to_arrow())
        con.execute(
            "update marts.account_outcomes o set converted = x._converted, "
            "arr = case when x._converted then 12000.0 end from _outcome x where o.account_id = x.account_id"
        )
        con.register("_features", features.to_arrow())
        con.execute("insert into marts.account_event_features by name select * from _features")
    return path


@pytest.mark.parametrize(
    ("event", "high", "threshold", "cap"),
    [("support_call", 9, 4, 16), ("api_call", 81, 38, 24)],
)
def test_a_planted_threshold_is_enabled_exactly_and_backtests_on_its_accounts(tmp_path, event, high, threshold, cap):
    counts = np.random.default_rng(3).integers(0, high, 160)
    path = planted_warehouse(tmp_path / "warehouse.duckdb", event, counts, threshold)
    # The planted event is most of these accounts' activity (up to 80 events against a few others), so among
    # equally active accounts nothing is left to compare: one activity band per month keeps this test about
    # thresholds (tests/store/test_signal_strata.py and the core tests cover the adjustment).
    settings = Settings(discovery={"max_thresholds_per_event": cap, "activity_strata": 1})
    with connect(path) as con:
        for month in MONTHS:
            store.count_cohort(con, settings, month)
        store.discover(con, settings)
        family = con.sql(
            "select threshold, window_days, enabled, n_with, holdout_n_with, signal_id from beton.signals "
            "where family = ? order by window_days, threshold",
            params=[f"event:{event}"],
        ).pl()
    per_window = family.group_by("window_days").len().get_column("len")
    assert per_window.max() <= cap
    enabled = family.filter(pl.col("enabled"))
    assert enabled.get_column("threshold").to_list() == [threshold]
    row = enabled.row(0, named=True)
    run = backtests.run_backtests(path, settings, [row["signal_id"]])
    assert run.missing == []
    with connect(path, read_only=True) as con:
        rows = con.sql(
            f"select split, sum(fired) as fired from {backtests.BACKTESTS_TABLE} where signal_id = ? group by 1",
            params=[row["signal_id"]],
        ).fetchall()
    fired = dict(rows)
    assert fired["discovery"] == row["n_with"] and fired["holdout"] == row["holdout_n_with"]
