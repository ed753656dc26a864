"""A new CRM with a couple of won deals: the lead-score model still trains and is backtested, and the CRM
comparison is skipped with the counts (scikit-learn refuses an empty confusion matrix: it used to crash
the asset with "Found empty input array")."""

import duckdb
import polars as pl
import pytest

from beton_pipeline.settings import load_settings
from beton_pipeline.store.model import CRM_TABLE, run_lead_score_model
from tests.core.test_model import synthetic_frames
from tests.store.test_model import _progress, _write_marts


@pytest.fixture(scope="module")
def frames():
    return synthetic_frames(n=3000)


def _count(path, table: str, where: str = "true") -> int:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.sql(f"select count(*) from {table} where {where}").fetchall()[0][0]


def test_two_won_deals_skip_the_crm_comparison_with_the_counts(tmp_path, frames):
    path = tmp_path / "warehouse.duckdb"
    _write_marts(path, frames, _progress(frames))
    assert run_lead_score_model(path, load_settings()).crm is not None and _count(path, CRM_TABLE) > 0
    earliest = frames.accounts.sort("cohort_month", "account_id").head(2).get_column("account_id")
    two_won = _progress(frames, every=1).filter(pl.col("account_id").is_in(earliest.to_list()))
    two_won = two_won.with_columns(pl.lit(True).alias("progressed"))
    _write_marts(path, frames, two_won)

    run = run_lead_score_model(path, load_settings())

    assert run.skipped is None and run.backtest is not None and run.crm is None
    assert run.crm_skipped == (
        "not enough CRM deals to compare with: 0 test account(s) have a deal (0 progressed beyond the first "
        "stage; 2 account(s) with a deal in all), need at least 10 with both outcomes"
    )
    assert _count(path, CRM_TABLE) == 0  # no stale comparison stays
    assert _count(path, "beton.model_confusion", "truth = 'deal_progressed'") == 0
    assert _count(path, "beton.model_backtest") > 0
