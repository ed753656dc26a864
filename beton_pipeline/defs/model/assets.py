"""The lead-score model asset: train on the earlier cohorts, backtest on the later ones, compare with
the enabled-signals score, the base rate and the CRM, and keep the fitted model as a table."""

import math

import dagster as dg
import polars as pl

from beton_pipeline.core.model import (
    SCORERS,
    LeadScoreBacktest,
    ModelDataError,
    backtest_lead_score,
    crm_comparison,
    deal_progress,
)
from beton_pipeline.defs.resources import WAREHOUSE_POOL, SettingsResource, WarehouseResource
from beton_pipeline.store.tables import read_feature_frames, replace_rows
from beton_pipeline.warehouse import table_exists

BACKTEST_TABLE = "beton.model_backtest"
CALIBRATION_TABLE = "beton.model_calibration"
CONFUSION_TABLE = "beton.model_confusion"
CRM_TABLE = "beton.model_crm_comparison"
FEATURES_TABLE = "beton.model_features"
MODEL_TABLES = (BACKTEST_TABLE, CALIBRATION_TABLE, CONFUSION_TABLE, CRM_TABLE, FEATURES_TABLE)

FIRST_DEAL_STAGE = "qualified"
"""A deal *progressed* when it reached a stage other than this one and `lost` (or was won)."""


def _fmt(value: float, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def metrics_markdown(backtest: LeadScoreBacktest) -> str:
    """Metric rows × scorer columns."""
    lines = ["| metric | " + " | ".join(SCORERS) + " |", "|---|" + "---|" * len(SCORERS)]
    for metric in ("roc_auc", "pr_auc", "precision_at_k", "recall_at_k", "lift_at_k", "brier", "mean_predicted", "observed_rate"):
        cells = [_fmt(backtest.metric(s, metric)) for s in SCORERS]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    lines.append(f"\nk = {backtest.k} of {backtest.test_scores.height} test accounts ({', '.join(backtest.split.holdout_months)})")
    return "\n".join(lines)


def calibration_markdown(calibration: pl.DataFrame, scorer: str = "model") -> str:
    """Win rate by confidence bucket for one scorer."""
    lines = ["| decile | accounts | predicted | observed (95% CI) |", "|---|---|---|---|"]
    for r in calibration.filter(pl.col("scorer") == scorer).iter_rows(named=True):
        lines.append(
            f"| {r['bucket']} | {r['n_accounts']} | {_fmt(r['predicted_mean'])} "
            f"| {_fmt(r['observed_rate'])} ({_fmt(r['observed_ci_low'])}–{_fmt(r['observed_ci_high'])}) |"
        )
    return "\n".join(lines)


def features_markdown(features: pl.DataFrame, limit: int = 15) -> str:
    """The strongest features by |coefficient|."""
    lines = ["| feature | coefficient | odds ratio | training accounts with it |", "|---|---|---|---|"]
    for r in features.filter(pl.col("kind") != "intercept").head(limit).iter_rows(named=True):
        lines.append(f"| {r['definition'] or r['feature_key']} | {r['coefficient']:+.3f} | {r['odds_ratio']:.2f} | {r['n_train_with']} |")
    return "\n".join(lines)


def crm_markdown(accounts: pl.DataFrame, confusion: dict, limit: int = 10) -> str:
    """The CRM confusion matrix and the first false positives and negatives with the AE's reason."""
    progressed = confusion["tp"] + confusion["fn"]
    share = progressed / confusion["n_accounts"] if confusion["n_accounts"] else float("nan")
    lines = [
        f"Test accounts with a deal: {confusion['n_accounts']}, of which {progressed} ({_fmt(share)}) progressed beyond "
        f"`{FIRST_DEAL_STAGE}`; qualified by the model: {confusion['n_qualified']}. Qualified test accounts without any deal: "
        f"{confusion['qualified_without_deal']}.",
        "",
        "| | deal progressed | did not |",
        "|---|---|---|",
        f"| qualified | {confusion['tp']} | {confusion['fp']} |",
        f"| not qualified | {confusion['fn']} | {confusion['tn']} |",
        "",
        f"precision {_fmt(confusion['precision'])}, recall {_fmt(confusion['recall'])}",
    ]
    for outcome in ("false_positive", "false_negative"):
        rows = accounts.filter(pl.col("outcome") == outcome).sort("score", descending=True).head(limit)
        lines += ["", f"**{outcome.replace('_', ' ')}s**", "", "| account | score | latest stage | AE's latest reason (at stage) |", "|---|---|---|---|"]
        lines += [
            f"| {r['account_id']} | {r['score']:.3f} | {r['latest_stage'] or '—'} | "
            f"{r['latest_reason'] + ' (' + r['reason_stage'] + ')' if r['latest_reason'] else '—'} |"
            for r in rows.iter_rows(named=True)
        ]
    return "\n".join(lines)


def _nan_to_null(frame: pl.DataFrame) -> pl.DataFrame:
    """NaN (an undefined metric, e.g. ROC AUC on a one-class test set) stored as SQL NULL."""
    return frame.with_columns(pl.col(c).fill_nan(None) for c, dtype in frame.schema.items() if dtype == pl.Float64)


def _read_deals(con) -> tuple[pl.DataFrame, pl.DataFrame] | None:
    """(deals, stage changes) from staging, or None when the CRM export has no deals."""
    if not (table_exists(con, "staging", "stg_attio__deals") and table_exists(con, "staging", "stg_attio__deal_stage_changes")):
        return None
    deals = con.sql("select deal_record_id, company_record_id, stage, status from staging.stg_attio__deals").pl()
    if deals.is_empty():
        return None
    changes = con.sql("select deal_record_id, stage, changed_at, reason from staging.stg_attio__deal_stage_changes").pl()
    return deals, changes


def _clear(con) -> None:
    for table in MODEL_TABLES:
        if table_exists(con, *table.split(".")):
            con.execute(f"delete from {table}")


@dg.asset(
    group_name="model",
    kinds={"python", "scikitlearn", "duckdb"},
    pool=WAREHOUSE_POOL,
    deps=["account_features", "account_event_features", "account_property_features", "account_intent_features", "account_outcomes", "signals"],
    automation_condition=dg.AutomationCondition.eager().ignore(dg.AssetSelection.groups("marts")),
    description=(
        "Lead-score model: an L1 logistic regression on the candidate features (event counts per first-N-days window, "
        "property values, attributes, intent), trained on the earlier eligible cohorts and tested on the later ones "
        "(discovery's temporal split). Compared with the enabled-signals score and the base rate: ROC AUC, PR AUC, "
        "precision/recall at k (sales capacity), Brier score (beton.model_backtest), win rate by score decile with "
        "Wilson intervals (beton.model_calibration), confusion matrices at the top-k threshold (beton.model_confusion), "
        "and, where CRM deals exist, qualified accounts against deals that progressed beyond the first stage "
        "(beton.model_crm_comparison). The fitted model (coefficients, intercept, feature keys) is beton.model_features."
    ),
)
def lead_score_model(context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings: SettingsResource) -> dg.MaterializeResult:
    cfg = settings.load()
    with warehouse.connect(read_only=True) as con:  # training holds no write lock
        frames = read_feature_frames(con, cfg.feature_windows)
        enabled = (
            con.sql("select candidate_key, lift from beton.signals where enabled").pl()
            if table_exists(con, "beton", "signals")
            else pl.DataFrame(schema={"candidate_key": pl.String, "lift": pl.Float64})
        )
        as_of = con.sql("select max(as_of_at) from marts.account_outcomes").fetchall()[0][0]
        deals = _read_deals(con)
    try:
        backtest = backtest_lead_score(frames, enabled, cfg.feature_spec(), cfg.lead_score_config())
    except ModelDataError as exc:
        context.log.warning(f"lead-score model not trained: {exc}")
        with warehouse.connect() as con:
            _clear(con)
        return dg.MaterializeResult(metadata={"skipped": str(exc)})

    confusion = backtest.confusion
    crm_rows, crm_summary = pl.DataFrame(), None
    if deals is not None:
        progress = deal_progress(*deals, first_stage=FIRST_DEAL_STAGE)
        crm = crm_comparison(backtest.test_scores, progress, "model", backtest.model.qualify_threshold, backtest.k)
        crm_summary = crm.confusion.as_row() | {"qualified_without_deal": crm.qualified_without_deal}
        confusion = pl.concat([confusion, pl.DataFrame([crm.confusion.as_row()])], how="vertical_relaxed")
        crm_rows = crm.accounts
    stamp = [pl.lit(as_of, pl.Datetime("us")).alias("as_of")]
    run_columns = [
        pl.lit(backtest.k, pl.Int64).alias("k"),
        pl.lit(backtest.model.n_train, pl.Int64).alias("n_train"),
        pl.lit(backtest.test_scores.height, pl.Int64).alias("n_test"),
        pl.lit(",".join(backtest.split.discovery_months)).alias("train_months"),
        pl.lit(",".join(backtest.split.holdout_months)).alias("test_months"),
    ]
    with warehouse.connect() as con:
        replace_rows(con, BACKTEST_TABLE, _nan_to_null(backtest.metrics.with_columns(*run_columns, *stamp)), "true")
        replace_rows(con, CALIBRATION_TABLE, _nan_to_null(backtest.calibration.with_columns(*stamp)), "true")
        replace_rows(con, CONFUSION_TABLE, _nan_to_null(confusion.with_columns(*stamp)), "true")
        replace_rows(con, FEATURES_TABLE, backtest.features.with_columns(*stamp), "true")
        if crm_rows.height:
            replace_rows(con, CRM_TABLE, _nan_to_null(crm_rows.with_columns(*stamp)), "true")
        elif table_exists(con, *CRM_TABLE.split(".")):
            con.execute(f"delete from {CRM_TABLE}")

    metadata: dict = {
        "metrics": dg.MetadataValue.md(metrics_markdown(backtest)),
        "calibration": dg.MetadataValue.md(calibration_markdown(backtest.calibration)),
        "top_features": dg.MetadataValue.md(features_markdown(backtest.features)),
        "k": dg.MetadataValue.int(backtest.k),
        "train_accounts": dg.MetadataValue.int(backtest.model.n_train),
        "test_accounts": dg.MetadataValue.int(backtest.test_scores.height),
        "test_months": dg.MetadataValue.json(list(backtest.split.holdout_months)),
        "candidate_features": dg.MetadataValue.int(backtest.n_candidate_features),
        "features_used": dg.MetadataValue.int(backtest.features.height - 1),
        "regularization_c": dg.MetadataValue.float(backtest.model.regularization_c),
        "training_seconds": dg.MetadataValue.float(round(backtest.training_seconds, 3)),
    }
    numbers = {
        "roc_auc": ("model", "roc_auc"), "pr_auc": ("model", "pr_auc"), "precision_at_k": ("model", "precision_at_k"),
        "brier": ("model", "brier"), "signals_roc_auc": ("signals", "roc_auc"), "signals_pr_auc": ("signals", "pr_auc"),
        "signals_precision_at_k": ("signals", "precision_at_k"), "base_rate": ("base_rate", "observed_rate"),
    }
    for name, (scorer, metric) in numbers.items():
        value = backtest.metric(scorer, metric)
        if not math.isnan(value):  # plotted over time in the UI
            metadata[name] = dg.MetadataValue.float(value)
    if crm_summary is not None:
        metadata["crm_comparison"] = dg.MetadataValue.md(crm_markdown(crm_rows, crm_summary))
        for name in ("precision", "recall"):
            if not math.isnan(crm_summary[name]):
                metadata[f"crm_{name}"] = dg.MetadataValue.float(crm_summary[name])
    return dg.MaterializeResult(metadata=metadata)
