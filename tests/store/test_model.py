"""The lead-score model's warehouse side on a real DuckDB: synthetic marts in, `beton.model_*` out,
the CRM comparison read from `marts.account_deal_progress`, stale results cleared when the data
cannot train a model."""

from datetime import datetime

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from beton_pipeline.settings import load_settings
from beton_pipeline.store.model import (
    CRM_TABLE,
    FIT_TABLE,
    MODEL_TABLES,
    read_deal_progress,
    run_lead_score_model,
)
from beton_pipeline.store.tables import replace_rows
from tests.core.test_model import ENABLED, synthetic_frames

AS_OF = datetime(2025, 12, 31)


def _write_marts(path, frames, progress: pl.DataFrame | None) -> None:
    accounts = frames.accounts
    with duckdb.connect(str(path)) as con:
        outcomes = accounts.select(
            "account_id",
            "cohort_month",
            pl.col("cohort_month").cast(pl.Datetime("us")).alias("started_at"),
            "converted",
            "arr",
            pl.lit(True).alias("is_eligible"),
            pl.lit(True).alias("has_events"),
            pl.lit(AS_OF).alias("as_of_at"),
        )
        replace_rows(con, "marts.account_outcomes", outcomes, "true")
        replace_rows(
            con,
            "marts.account_features",
            accounts.select("account_id", "industry", "employee_band", "plan_interval"),
            "true",
        )
        replace_rows(con, "marts.account_event_features", frames.events, "true")
        replace_rows(con, "marts.account_property_features", frames.properties, "true")
        replace_rows(con, "marts.account_intent_features", frames.intent, "true")
        replace_rows(con, "beton.signals", ENABLED.with_columns(pl.lit(True).alias("enabled")), "true")
        if progress is not None:
            replace_rows(con, "marts.account_deal_progress", progress, "true")


def _progress(frames, every: int = 3) -> pl.DataFrame:
    """A deal for every `every`-th account; it progressed for the converted ones and every 5th other."""
    with_deal = frames.accounts.with_row_index("i").filter(pl.col("i") % every == 0)
    return with_deal.select(
        "account_id",
        pl.lit(1, pl.Int64).alias("n_deals"),
        (pl.col("converted") | (pl.col("i") % 5 == 0)).alias("progressed"),
        pl.lit("demo").alias("latest_stage"),
        pl.lit(datetime(2025, 11, 1)).alias("latest_changed_at"),
        pl.lit("Asked for a demo").alias("latest_reason"),
        pl.lit("demo").alias("reason_stage"),
    )


def _count(path, table: str, where: str = "true") -> int:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.sql(f"select count(*) from {table} where {where}").fetchall()[0][0]


@pytest.fixture(scope="module")
def frames():
    return synthetic_frames(n=3000)


def test_run_writes_every_model_table_and_the_crm_comparison(tmp_path, frames):
    path = tmp_path / "warehouse.duckdb"
    progress = _progress(frames)
    _write_marts(path, frames, progress)
    run = run_lead_score_model(path, load_settings())
    assert run.skipped is None and run.backtest is not None and run.crm is not None
    for table in MODEL_TABLES:
        assert _count(path, table) > 0, table
        assert _count(path, table, "as_of is distinct from timestamp '2025-12-31'") == 0, table
    test_accounts = set(run.backtest.test_scores["account_id"])
    with duckdb.connect(str(path), read_only=True) as con:
        crm = con.sql(f"select * from {CRM_TABLE}").pl()
        deal_row = con.sql(
            "select n_accounts, tp, fn from beton.model_confusion where truth = 'deal_progressed'"
        ).fetchall()
    assert set(crm["account_id"]) == test_accounts & set(progress["account_id"])
    expected_progressed = progress.filter(pl.col("account_id").is_in(list(test_accounts)))["progressed"].sum()
    ((n_accounts, tp, fn),) = deal_row
    assert n_accounts == crm.height and tp + fn == expected_progressed == crm["progressed"].sum() > 0
    assert set(crm["outcome"]) <= {"true_positive", "false_positive", "false_negative", "true_negative"}


def test_without_deals_the_crm_comparison_is_emptied(tmp_path, frames):
    path = tmp_path / "warehouse.duckdb"
    _write_marts(path, frames, _progress(frames))
    run_lead_score_model(path, load_settings())
    assert _count(path, CRM_TABLE) > 0
    with duckdb.connect(str(path)) as con:
        con.execute("delete from marts.account_deal_progress")
        assert read_deal_progress(con) is None
    run = run_lead_score_model(path, load_settings())
    assert run.crm is None and run.backtest is not None
    assert _count(path, CRM_TABLE) == 0
    assert _count(path, "beton.model_confusion", "truth = 'deal_progressed'") == 0


def test_data_that_cannot_train_a_model_clears_stale_results(tmp_path, frames):
    path = tmp_path / "warehouse.duckdb"
    _write_marts(path, frames, _progress(frames))
    run_lead_score_model(path, load_settings())
    with duckdb.connect(str(path)) as con:
        con.execute(
            "delete from marts.account_outcomes where strftime(cohort_month, '%Y-%m') <> '2025-01'"
        )  # one cohort month
    run = run_lead_score_model(path, load_settings())
    assert run.backtest is None and "cohort month" in run.skipped
    assert all(_count(path, table) == 0 for table in MODEL_TABLES)


def test_deal_progress_is_none_before_dbt_built_it(tmp_path):
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        assert read_deal_progress(con) is None


def _model_tables(path) -> dict[str, pl.DataFrame]:
    with duckdb.connect(str(path), read_only=True) as con:
        return {t: con.sql(f"select * from {t} order by all").pl() for t in MODEL_TABLES}


def test_a_second_run_on_the_same_marts_reuses_the_fit_and_writes_the_same_tables(tmp_path, frames):
    """The fit is kept (`FIT_TABLE`) and reused by a run whose training data is the same: every model table
    is written again as it was. A training account's outcome changed: fitted anew."""
    path = tmp_path / "warehouse.duckdb"
    _write_marts(path, frames, _progress(frames))
    first = run_lead_score_model(path, load_settings())
    tables = _model_tables(path)
    second = run_lead_score_model(path, load_settings())
    assert not first.backtest.fit_reused and second.backtest.fit_reused
    after = _model_tables(path)
    for table in MODEL_TABLES:
        assert_frame_equal(after[table], tables[table])
    assert _count(path, FIT_TABLE) == 1

    trained = frames.accounts.filter(~pl.col("account_id").is_in(first.backtest.test_scores["account_id"].implode()))
    flip = trained["account_id"][0]
    with duckdb.connect(str(path)) as con:
        con.execute("update marts.account_outcomes set converted = not converted where account_id = ?", [flip])
    third = run_lead_score_model(path, load_settings())
    assert not third.backtest.fit_reused and third.backtest.fit.key != first.backtest.fit.key
