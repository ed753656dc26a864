"""The lead-score model asset on the session's demo warehouse (conftest.pipeline_run): trained on the
earlier cohorts, it must beat the base rate on the later ones, as must the enabled-signals score."""

import dagster as dg
import duckdb
import numpy as np
import polars as pl
import pytest
from scipy.stats import spearmanr

from beton_pipeline.core.model import SCORERS, PenaltySearch, model_from_frame, score_accounts
from beton_pipeline.defs.model.assets import lead_score_model, penalty_search_markdown
from beton_pipeline.defs.resources import SettingsResource, WarehouseResource
from beton_pipeline.settings import load_settings
from beton_pipeline.store.tables import read_feature_frames


@pytest.fixture(scope="module")
def model_run(pipeline_run):
    result = dg.materialize(
        [lead_score_model],
        instance=pipeline_run.instance,
        resources={"warehouse": WarehouseResource(path=str(pipeline_run.warehouse)), "settings": SettingsResource()},
    )
    assert result.success
    return result


@pytest.fixture(scope="module")
def con(model_run, pipeline_run):
    c = duckdb.connect(str(pipeline_run.warehouse), read_only=True)
    yield c
    c.close()


def metric(con, scorer: str, name: str) -> float:
    return con.sql(
        "select value from beton.model_backtest where scorer = ? and metric = ?", params=[scorer, name]
    ).fetchall()[0][0]


def test_backtest_has_every_metric_for_every_scorer(con):
    rows = con.sql("select scorer, count(*) from beton.model_backtest group by 1").fetchall()
    assert dict(rows) == {s: 8 for s in SCORERS}
    n_test, k = con.sql("select max(n_test), max(k) from beton.model_backtest").fetchall()[0]
    assert n_test > 500 and k == int(np.ceil(0.1 * n_test))  # no sales_capacity setting: the top 10 %


def test_model_and_signals_beat_the_base_rate(con):
    assert metric(con, "base_rate", "roc_auc") == pytest.approx(0.5)
    assert metric(con, "model", "roc_auc") > 0.6
    assert metric(con, "signals", "roc_auc") > 0.6
    base_rate = metric(con, "base_rate", "observed_rate")
    assert metric(con, "model", "pr_auc") > 1.5 * base_rate
    assert metric(con, "model", "precision_at_k") > 2 * base_rate
    assert metric(con, "model", "brier") < metric(con, "base_rate", "brier")


def test_win_rate_rises_with_the_model_decile(con):
    deciles = con.sql(
        "select bucket, observed_rate, observed_ci_low, observed_ci_high, n_accounts from beton.model_calibration "
        "where scorer = 'model' order by bucket"
    ).pl()
    assert deciles.height == 10
    assert spearmanr(deciles.get_column("bucket"), deciles.get_column("observed_rate")).statistic > 0.8
    assert (deciles.get_column("observed_ci_low") <= deciles.get_column("observed_rate")).all()
    assert (deciles.get_column("observed_rate") <= deciles.get_column("observed_ci_high")).all()


def test_stored_model_rebuilds_the_qualified_set(con, pipeline_run):
    model = model_from_frame(con.sql("select * from beton.model_features").pl())
    assert len(model.feature_keys) > 0
    frames = read_feature_frames(con, load_settings().feature_windows)
    scores = score_accounts(model, frames)
    months = frames.accounts.get_column("cohort_month").dt.strftime("%Y-%m").to_numpy()
    test_months = con.sql("select max(test_months) from beton.model_backtest").fetchall()[0][0].split(",")
    in_test = np.isin(months, test_months)
    tp, n_qualified = con.sql(
        "select tp, n_qualified from beton.model_confusion where scorer = 'model' and truth = 'converted'"
    ).fetchall()[0]
    qualified = scores[in_test] >= model.qualify_threshold
    assert qualified.sum() == n_qualified
    assert (qualified & frames.accounts.get_column("converted").to_numpy()[in_test]).sum() == tp


def test_crm_comparison_lists_false_positives_and_negatives_with_reasons(con):
    accounts = con.sql("select * from beton.model_crm_comparison").pl()
    assert accounts.height > 0
    row = (
        con.sql("select tp, fp, fn, tn, precision, recall from beton.model_confusion where truth = 'deal_progressed'")
        .pl()
        .row(0, named=True)
    )
    counts = dict(accounts.group_by("outcome").len().iter_rows())
    assert counts.get("true_positive", 0) == row["tp"] and counts.get("false_positive", 0) == row["fp"]
    assert counts.get("false_negative", 0) == row["fn"] and counts.get("true_negative", 0) == row["tn"]
    assert row["precision"] == pytest.approx(row["tp"] / (row["tp"] + row["fp"]))
    errors = accounts.filter(pl.col("outcome").is_in(["false_positive", "false_negative"]))
    assert errors.height > 0 and errors.get_column("latest_stage").null_count() == 0
    assert errors.get_column("latest_reason").drop_nulls().len() > 0


def test_materialization_metadata_has_plottable_numbers(model_run):
    materialization = model_run.asset_materializations_for_node("lead_score_model")[0]
    metadata = materialization.metadata
    for key in ("roc_auc", "pr_auc", "signals_roc_auc", "base_rate", "training_seconds"):
        assert isinstance(metadata[key], dg.FloatMetadataValue), key
    assert "| roc_auc |" in metadata["metrics"].value
    # The C search: one row per grid point, the chosen C among those tried.
    search = metadata["c_search"].value
    chosen = [line for line in search.splitlines() if line.rstrip().endswith("| chosen |")]
    assert len(chosen) == 1 and "not tried" not in chosen[0], search
    assert float(chosen[0].split("|")[1]) == pytest.approx(metadata["regularization_c"].value, rel=1e-3)
    # The demo's training cohorts are far below discovery.model_search_max_accounts: the search ran on all of them.
    assert metadata["c_search_subsampled"].value is False
    assert metadata["c_search_accounts"].value == metadata["train_accounts"].value
    assert f"on all {metadata['train_accounts'].value:,} training accounts" in search


def test_c_search_markdown_says_when_the_search_was_subsampled():
    cs = (0.01, 0.1, 1.0)
    sampled = PenaltySearch(
        cs=cs, cv_log_loss=(0.3, 0.2, float("nan")), c=0.1, n_folds=5, n_searched=20000, n_training=54093
    )
    text = penalty_search_markdown(sampled)
    assert "stratified random subsample of 20,000 of the 54,093 training accounts" in text
    assert "| 1 | not tried |" in text and "| 0.1 | 0.20000 | chosen |" in text
    whole = PenaltySearch(cs=cs, cv_log_loss=(0.3, 0.2, 0.25), c=0.1, n_folds=5, n_searched=900, n_training=900)
    assert "on all 900 training accounts" in penalty_search_markdown(whole) and not whole.subsampled
