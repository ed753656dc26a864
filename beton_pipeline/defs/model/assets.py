"""The lead-score model asset: train on the earlier cohorts, backtest on the later ones, compare with
the enabled-signals score, the base rate and the CRM, and keep the fitted model as a table
(`store.model` reads, computes and writes; this module adds the metadata)."""

import math

import dagster as dg
import polars as pl

from beton_pipeline.core.formatting import fmt, fmt_interval, markdown_table
from beton_pipeline.core.model import METRIC_NAMES, SCORERS, CrmComparison, LeadScoreBacktest, PenaltySearch
from beton_pipeline.defs.resources import WAREHOUSE_POOL, SettingsResource, WarehouseResource
from beton_pipeline.store.model import MODEL_INPUTS, run_lead_score_model

PLOTTED = {
    "roc_auc": ("model", "roc_auc"),
    "pr_auc": ("model", "pr_auc"),
    "precision_at_k": ("model", "precision_at_k"),
    "brier": ("model", "brier"),
    "signals_roc_auc": ("signals", "roc_auc"),
    "signals_pr_auc": ("signals", "pr_auc"),
    "signals_precision_at_k": ("signals", "precision_at_k"),
    "base_rate": ("base_rate", "observed_rate"),
}
"""Metadata numbers plotted over time in the UI: name → (scorer, metric)."""


def penalty_search_markdown(search: PenaltySearch) -> str:
    """The C search: each grid point's CV log loss ("not tried" past the point where the walk stopped), and
    the accounts it cross-validated on (a stratified subsample, or all training accounts)."""
    rows = [
        [fmt(c, ".4g"), "not tried" if math.isnan(loss) else fmt(loss, ".5f"), "chosen" if c == search.c else ""]
        for c, loss in zip(search.cs, search.cv_log_loss, strict=True)
    ]
    table = markdown_table([f"C ({search.n_folds}-fold CV)", "CV log loss", ""], rows)
    if search.subsampled:
        scope = (
            f"Cross-validated on a stratified random subsample of {search.n_searched:,} of the {search.n_training:,} "
            "training accounts (discovery.model_search_max_accounts); the model is refitted at the chosen C on all of them."
        )
    else:
        scope = (
            f"Cross-validated on all {search.n_training:,} training accounts; refitted at the chosen C on all of them."
        )
    return table + "\n\n" + scope


def metrics_markdown(backtest: LeadScoreBacktest) -> str:
    """Metric rows × scorer columns."""
    rows = [[metric, *(fmt(backtest.metric(s, metric)) for s in SCORERS)] for metric in METRIC_NAMES]
    split = (
        f"k = {backtest.k} of {backtest.test_scores.height} test accounts ({', '.join(backtest.split.holdout_months)})"
    )
    return markdown_table(["metric", *SCORERS], rows) + "\n\n" + split


def calibration_markdown(calibration: pl.DataFrame, scorer: str = "model") -> str:
    """Win rate by confidence bucket for one scorer."""
    rows = [
        [
            r["bucket"],
            r["n_accounts"],
            fmt(r["predicted_mean"]),
            f"{fmt(r['observed_rate'])} ({fmt_interval(r['observed_ci_low'], r['observed_ci_high'], '.3f')})",
        ]
        for r in calibration.filter(pl.col("scorer") == scorer).iter_rows(named=True)
    ]
    return markdown_table(["decile", "accounts", "predicted", "observed (95% CI)"], rows)


def features_markdown(features: pl.DataFrame, limit: int = 15) -> str:
    """The strongest features by |coefficient|."""
    rows = [
        [
            r["definition"] or r["feature_key"],
            fmt(r["coefficient"], "+.3f"),
            fmt(r["odds_ratio"], ".2f"),
            r["n_train_with"],
        ]
        for r in features.filter(pl.col("kind") != "intercept").head(limit).iter_rows(named=True)
    ]
    return markdown_table(["feature", "coefficient", "odds ratio", "training accounts with it"], rows)


def crm_markdown(crm: CrmComparison, limit: int = 10) -> str:
    """The CRM confusion matrix and the first false positives and negatives with the AE's reason."""
    c = crm.confusion
    progressed = c.tp + c.fn
    lines = [
        f"Test accounts with a deal: {c.n_accounts}, of which {progressed} ({fmt(progressed / c.n_accounts if c.n_accounts else None)}) "
        f"progressed beyond the first stage; qualified by the model: {c.n_qualified}. Qualified test accounts without any deal: "
        f"{crm.qualified_without_deal}.",
        "",
        markdown_table(["", "deal progressed", "did not"], [["qualified", c.tp, c.fp], ["not qualified", c.fn, c.tn]]),
        "",
        f"precision {fmt(c.precision)}, recall {fmt(c.recall)}",
    ]
    for name, accounts in (
        ("false positives", crm.false_positives),
        ("false negatives", crm.false_negatives),
    ):  # None prints —
        rows = [
            [
                r["account_id"],
                fmt(r["score"]),
                r["latest_stage"],
                f"{r['latest_reason']} ({r['reason_stage']})" if r["latest_reason"] else None,
            ]
            for r in accounts.head(limit).iter_rows(named=True)
        ]
        lines += [
            "",
            f"**{name}**",
            "",
            markdown_table(["account", "score", "latest stage", "AE's latest reason (at stage)"], rows),
        ]
    return "\n".join(lines)


@dg.asset(
    group_name="model",
    kinds={"python", "scikitlearn", "duckdb"},
    pool=WAREHOUSE_POOL,
    deps=list(MODEL_INPUTS),
    automation_condition=dg.AutomationCondition.eager().ignore(dg.AssetSelection.groups("marts")),
    description=(
        "Lead-score model: an L1 logistic regression on the candidate features (event counts per first-N-days window, "
        "property values, attributes, intent), trained on the earlier eligible cohorts and tested on the later ones "
        "(discovery's temporal split). Compared with the enabled-signals score and the base rate: ROC AUC, PR AUC, "
        "precision/recall at k (sales capacity), Brier score (beton.model_backtest), win rate by score decile with "
        "Wilson intervals (beton.model_calibration), confusion matrices at the top-k threshold (beton.model_confusion), "
        "and, where CRM deals exist, qualified accounts against deals that progressed beyond the first stage "
        "(marts.account_deal_progress → beton.model_crm_comparison). The fitted model (coefficients, intercept, "
        "feature keys) is beton.model_features."
    ),
)
def lead_score_model(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings: SettingsResource
) -> dg.MaterializeResult:
    run = run_lead_score_model(warehouse.resolved_path, settings.load())
    if run.backtest is None:
        context.log.warning(f"lead-score model not trained: {run.skipped}")
        return dg.MaterializeResult(metadata={"skipped": run.skipped})
    backtest = run.backtest
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
        "fit": dg.MetadataValue.text(
            "reused: the training accounts, their features and outcomes, and the settings are those of the last fit"
            if backtest.fit_reused
            else "fitted on this run's training accounts"
        ),
    }
    if backtest.penalty_search is not None:
        search = backtest.penalty_search
        metadata["c_search"] = dg.MetadataValue.md(penalty_search_markdown(search))
        metadata["c_search_accounts"] = dg.MetadataValue.int(search.n_searched)
        metadata["c_search_subsampled"] = dg.MetadataValue.bool(search.subsampled)
    numbers = {name: backtest.metric(scorer, metric) for name, (scorer, metric) in PLOTTED.items()}
    if run.crm_skipped is not None:
        context.log.warning(f"CRM comparison skipped: {run.crm_skipped}")
        metadata["crm_comparison"] = dg.MetadataValue.text(f"skipped: {run.crm_skipped}")
    if run.crm is not None:
        metadata["crm_comparison"] = dg.MetadataValue.md(crm_markdown(run.crm))
        numbers |= {"crm_precision": run.crm.confusion.precision, "crm_recall": run.crm.confusion.recall}
    metadata |= {name: dg.MetadataValue.float(value) for name, value in numbers.items() if not math.isnan(value)}
    return dg.MaterializeResult(metadata=metadata)
