"""Warehouse side of the lead-score model: read its inputs, train and backtest (`core.model`), write
the `beton.model_*` tables.

Inputs: the feature marts (`tables.read_feature_frames`), the enabled signals (`beton.signals`), the
run's as-of (`marts.account_outcomes`) and, for the CRM comparison, `marts.account_deal_progress`
(per CRM company: did a deal progress beyond the first stage; dbt). Training runs on a read-only
connection, so it holds no write lock; the results are written afterwards in one short connection.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

from beton_pipeline.core.candidates import FeatureFrames
from beton_pipeline.core.model import (
    CrmComparison,
    FittedLogistic,
    LeadScoreBacktest,
    ModelDataError,
    PenaltySearch,
    backtest_lead_score,
    crm_comparison,
)
from beton_pipeline.settings import Settings
from beton_pipeline.store.tables import as_of_time, read_feature_frames, replace_rows
from beton_pipeline.warehouse import STATE_SCHEMA, connect, table_exists

BACKTEST_TABLE = "beton.model_backtest"
CALIBRATION_TABLE = "beton.model_calibration"
CONFUSION_TABLE = "beton.model_confusion"
CRM_TABLE = "beton.model_crm_comparison"
FEATURES_TABLE = "beton.model_features"
MODEL_TABLES = (BACKTEST_TABLE, CALIBRATION_TABLE, CONFUSION_TABLE, CRM_TABLE, FEATURES_TABLE)
FIT_TABLE = f"{STATE_SCHEMA}.model_fit"
"""The last fit (`core.model.FittedLogistic`), one row: the next run reuses it when its training data and
settings are the same (`core.model.training_key`)."""

MODEL_INPUTS = (
    "account_features",
    "account_event_features",
    "account_property_features",
    "account_intent_features",
    "account_outcomes",
    "account_deal_progress",
    "signals",
)
"""The assets (dbt models by name, and `signals`) this module reads: the model asset's deps."""

DEAL_PROGRESS_SCHEMA = {
    "account_id": pl.String,
    "n_deals": pl.Int64,
    "progressed": pl.Boolean,
    "latest_stage": pl.String,
    "latest_changed_at": pl.Datetime("us"),
    "latest_reason": pl.String,
    "reason_stage": pl.String,
}
ENABLED_SCHEMA = {"candidate_key": pl.String, "lift": pl.Float64}


@dataclass(frozen=True)
class ModelInputs:
    frames: FeatureFrames
    enabled: pl.DataFrame
    as_of: datetime | None
    deal_progress: pl.DataFrame | None
    last_fit: FittedLogistic | None = None


@dataclass(frozen=True)
class LeadScoreRun:
    """What one run of the model produced: the backtest and the CRM comparison, or why it was skipped."""

    backtest: LeadScoreBacktest | None = None
    crm: CrmComparison | None = None
    skipped: str | None = None
    crm_skipped: str | None = None
    """Why the CRM comparison did not run (too few deals), None when it ran or there is no deal."""


def read_deal_progress(con: duckdb.DuckDBPyConnection) -> pl.DataFrame | None:
    """`marts.account_deal_progress`, or None when it is missing or empty (the CRM export has no deals)."""
    if not table_exists(con, "marts", "account_deal_progress"):
        return None
    progress = con.sql(
        f"select {', '.join(DEAL_PROGRESS_SCHEMA)} from marts.account_deal_progress order by account_id"
    ).pl()
    return None if progress.is_empty() else progress.cast(DEAL_PROGRESS_SCHEMA)


def read_model_inputs(con: duckdb.DuckDBPyConnection, settings: Settings) -> ModelInputs:
    enabled = (
        con.sql("select candidate_key, lift from beton.signals where enabled").pl()
        if table_exists(con, "beton", "signals")
        else pl.DataFrame(schema=ENABLED_SCHEMA)
    )
    return ModelInputs(
        frames=read_feature_frames(con, settings.feature_windows),
        enabled=enabled,
        as_of=as_of_time(con),
        deal_progress=read_deal_progress(con),
        last_fit=read_last_fit(con),
    )


def read_last_fit(con: duckdb.DuckDBPyConnection) -> FittedLogistic | None:
    """The fit the last run kept (`FIT_TABLE`), or None."""
    if not table_exists(con, *FIT_TABLE.split(".")):
        return None
    rows = con.sql(f"select key, coefficients, intercept, search from {FIT_TABLE}").fetchall()
    if len(rows) != 1:
        return None
    key, coefficients, intercept, search = rows[0]
    fields = json.loads(search)
    search = PenaltySearch(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    return FittedLogistic(key, np.asarray(coefficients, dtype=np.float64), float(intercept), search)


def save_fit(con: duckdb.DuckDBPyConnection, fit: FittedLogistic) -> None:
    """Keep `fit` as the last fit (replacing the one kept before)."""
    con.execute(f"create schema if not exists {STATE_SCHEMA}")
    con.execute(
        f"create or replace table {FIT_TABLE} (key varchar, coefficients double[], intercept double, search varchar)"
    )
    con.execute(
        f"insert into {FIT_TABLE} values (?, ?, ?, ?)",
        [fit.key, fit.coefficients.tolist(), fit.intercept, json.dumps(asdict(fit.search))],
    )


def _nan_to_null(frame: pl.DataFrame) -> pl.DataFrame:
    """NaN (an undefined metric, e.g. ROC AUC on a one-class test set) stored as SQL NULL."""
    return frame.with_columns(pl.col(c).fill_nan(None) for c, dtype in frame.schema.items() if dtype == pl.Float64)


def clear_model_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Empty every `beton.model_*` table (the model could not be trained: no stale results stay)."""
    for table in MODEL_TABLES:
        if table_exists(con, *table.split(".")):
            con.execute(f"delete from {table}")


def write_model_tables(
    con: duckdb.DuckDBPyConnection, backtest: LeadScoreBacktest, crm: CrmComparison | None, as_of: datetime | None
) -> None:
    """Replace the `beton.model_*` tables with this run's results, each row stamped with `as_of`."""
    stamp = [pl.lit(as_of, pl.Datetime("us")).alias("as_of")]
    run_columns = [
        pl.lit(backtest.k, pl.Int64).alias("k"),
        pl.lit(backtest.model.n_train, pl.Int64).alias("n_train"),
        pl.lit(backtest.test_scores.height, pl.Int64).alias("n_test"),
        pl.lit(",".join(backtest.split.discovery_months)).alias("train_months"),
        pl.lit(",".join(backtest.split.holdout_months)).alias("test_months"),
    ]
    confusion = backtest.confusion
    if crm is not None:
        confusion = pl.concat([confusion, pl.DataFrame([crm.confusion.as_row()])], how="vertical_relaxed")
    replace_rows(con, BACKTEST_TABLE, _nan_to_null(backtest.metrics.with_columns(*run_columns, *stamp)), "true")
    replace_rows(con, CALIBRATION_TABLE, _nan_to_null(backtest.calibration.with_columns(*stamp)), "true")
    replace_rows(con, CONFUSION_TABLE, _nan_to_null(confusion.with_columns(*stamp)), "true")
    replace_rows(con, FEATURES_TABLE, backtest.features.with_columns(*stamp), "true")
    if backtest.fit is not None and not backtest.fit_reused:
        save_fit(con, backtest.fit)
    if crm is not None and crm.accounts.height:
        replace_rows(con, CRM_TABLE, _nan_to_null(crm.accounts.with_columns(*stamp)), "true")
    elif table_exists(con, *CRM_TABLE.split(".")):
        con.execute(f"delete from {CRM_TABLE}")


def run_lead_score_model(warehouse: Path | str, settings: Settings) -> LeadScoreRun:
    """Train and backtest the lead-score model on the warehouse at `warehouse` and write its tables.

    When the data cannot train a model (`ModelDataError`), the tables are emptied and the run says why.
    """
    with connect(warehouse, read_only=True) as con:  # training holds no write lock
        inputs = read_model_inputs(con, settings)
    try:
        backtest = backtest_lead_score(
            inputs.frames, inputs.enabled, settings.feature_spec(), settings.lead_score_config(), inputs.last_fit
        )
    except ModelDataError as exc:
        with connect(warehouse) as con:
            clear_model_tables(con)
        return LeadScoreRun(skipped=str(exc))
    crm, crm_skipped = None, None
    if inputs.deal_progress is not None:
        config = settings.lead_score_config()
        try:
            crm = crm_comparison(
                backtest.test_scores,
                inputs.deal_progress,
                "model",
                backtest.model.qualify_threshold,
                backtest.k,
                config.min_crm_accounts,
            )
        except ModelDataError as exc:
            crm_skipped = str(exc)
    with connect(warehouse) as con:
        write_model_tables(con, backtest, crm, inputs.as_of)
    return LeadScoreRun(backtest=backtest, crm=crm, crm_skipped=crm_skipped)
