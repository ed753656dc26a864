"""Signal discovery assets: per-cohort-month sufficient statistics, then `beton.signals` (store/signals.py)."""

import dagster as dg
import polars as pl

from beton_pipeline.core.formatting import fmt, fmt_estimate, markdown_table
from beton_pipeline.core.links import page_url
from beton_pipeline.defs.partitions import cohort_months
from beton_pipeline.defs.resources import WAREHOUSE_POOL, SettingsResource, WarehouseResource
from beton_pipeline.settings import signal_dirs
from beton_pipeline.store import signals as signals_store
from beton_pipeline.store.custom_signals import refresh_custom_signals
from beton_pipeline.store.firings import FIRING_INPUTS

MARTS = [
    "account_features",
    "account_event_features",
    "account_property_features",
    "account_intent_features",
    "account_outcomes",
]


@dg.asset(
    partitions_def=cohort_months,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="signals",
    kinds={"python", "polars", "duckdb"},
    pool=WAREHOUSE_POOL,
    deps=MARTS,
    description=(
        "Sufficient statistics for every candidate signal in one cohort month (accounts whose first product "
        "event fell in that month and whose outcome window has closed): accounts with the candidate, their "
        "conversions and ARR, and the cohort's totals. Counted with one sparse matrix product. "
        "Table `beton.signal_cohort_counts`; re-materialising a month replaces exactly that month's rows. "
        "One run counts a range of months (single-run backfill), each month with its own metadata."
    ),
)
def signal_cohort_counts(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings: SettingsResource
) -> dg.MaterializeResult:
    config = settings.load()
    with warehouse.connect() as con:
        counted = [signals_store.count_cohort(con, config, month) for month in context.partition_keys]
    for month in counted:
        context.add_asset_metadata(
            {
                "cohort_month": month.cohort_month,
                "eligible_accounts": month.eligible_accounts,
                "conversions": month.conversions,
                "candidates_seen": month.candidates_seen,
            },
            partition_key=month.cohort_month,
        )
    return dg.MaterializeResult(metadata={"months_in_run": dg.MetadataValue.int(len(counted))})


@dg.asset(
    group_name="signals",
    kinds={"python", "polars", "duckdb"},
    pool=WAREHOUSE_POOL,
    deps=sorted({*MARTS, *FIRING_INPUTS}),  # the occurrence models give the firing times
    description=(
        "User-defined signals from `signals/*.yml` (conditions on event counts, event properties, CRM/billing "
        "attributes and intent, combined with all/any/not) and `signals/*.sql` (one sandboxed SELECT returning "
        "account_id, optionally fired_at), evaluated on the eligible accounts and counted per cohort month into "
        "`beton.custom_signal_cohort_counts`, and per activity band of the observation window (the bands of the "
        "discovered candidates of the same month and window) into `beton.custom_signal_stratum_counts` with the "
        "bands' totals in `beton.custom_signal_strata`, for the adjusted lift. A file that cannot be used (invalid YAML or SQL, an unknown key, a "
        "name this data does not have) is left out and listed with its file, line, reason and nearest known name "
        "(metadata `problems`, table `beton.custom_signal_problems`); it fails the run only with signals.strict. "
        "The `signals` asset tests them with the discovered candidates in one Benjamini–Hochberg family and lists "
        "them in beton.signals with source = custom; signal_id is a hash of the normalised definition. "
        "Also writes `beton.custom_signal_firings` (account_id, signal_id, fired_at): every account with events "
        "whose signal is true, with the moment it fired (conditions: the t-th occurrence of a counted event, the "
        "start for CRM attributes, the first subscription for plan attributes, the latest intent signal; all = "
        "latest child, any = earliest true child; not and <, <=, ==, != at the feature window end; SQL: its "
        "fired_at, else the feature window end; never after the window end). Daily health and scores read the "
        "enabled ones' firings."
    ),
)
def custom_signals(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings: SettingsResource
) -> dg.MaterializeResult:
    config = settings.load()
    report = refresh_custom_signals(warehouse.resolved_path, config, signal_dirs())
    problems = {"problems": dg.MetadataValue.json([p.text for p in report.problems])}
    if report.problems and config.signals.strict:
        raise dg.Failure(description=report.paragraph(strict=True), metadata=problems)
    if report.problems:
        context.log.warning(report.paragraph(strict=False))
    if report.missing_leaf_times:
        context.log.warning(
            f"{report.missing_leaf_times} condition leaf/account pair(s) are true by the marts' counts but have no "
            "time in the occurrence models: they fire at the feature window end (rebuild the dbt models together)"
        )
    return dg.MaterializeResult(
        metadata={
            "signals_dirs": dg.MetadataValue.json([str(d) for d in report.directories]),
            "custom_signals": dg.MetadataValue.int(len(report.signals)),
            "files": dg.MetadataValue.json([s.origin for s in report.signals]),
            "left_out": dg.MetadataValue.int(len(report.problems)),
            "firings": dg.MetadataValue.int(report.firings.height),
            "leaf_times_missing": dg.MetadataValue.int(report.missing_leaf_times),
            **problems,
            "definitions": dg.MetadataValue.md(
                "\n".join(f"- `{s.signal_id}` {s.definition}" for s in report.signals) or "No custom signal."
            ),
        }
    )


def signals_markdown(signals: pl.DataFrame, limit: int = 15, app_base_url: str | None = None) -> str:
    """A markdown table of the best signals (one per family), best first; with `app_base_url` (`app.base_url`) a
    last column links each signal's page in `beton serve`."""
    if signals.is_empty():
        return "No signal tested: no account has a known outcome yet."
    top = (
        signals.filter(pl.col("is_family_best"))
        .sort(["recommendation_order", "q_value", "lift"], descending=[False, False, True])
        .head(limit)
    )
    link = ["page"] if app_base_url else []
    return markdown_table(
        ["signal", "recommendation", "lift (95% CI)", "n with", "q", "holdout lift", *link],
        [
            [
                r["definition"],
                r["recommendation"],
                fmt_estimate(r["lift"], r["lift_ci_low"], r["lift_ci_high"]),
                r["n_with"],
                fmt(r["q_value"], ".2g"),
                fmt(r["holdout_lift"], ".2f"),
                *([f"[{r['signal_id']}]({page_url(app_base_url, 'signal', r['signal_id'])})"] if link else []),
            ]
            for r in top.iter_rows(named=True)
        ],
    )


@dg.asset(
    group_name="signals",
    kinds={"python", "polars", "duckdb"},
    pool=WAREHOUSE_POOL,
    deps=[signal_cohort_counts, custom_signals],
    description=(
        "beton.signals: every candidate tested in this run — discovered candidates and the custom signals of "
        "signals/ (source = custom) — with counts, rates, lift and its CI (Katz log), "
        "a two-sided p-value (pooled z-test, Fisher exact below expected count 5), Benjamini–Hochberg q-values "
        "over all candidates, the lift on the later holdout cohorts, projected ARR and a recommendation "
        "(enable/review/reject). `enabled` follows the recommendation unless a user override says otherwise."
    ),
    # custom_signals is rebuilt by the daily job with the marts; cohort counts by the cohort sensor.
    automation_condition=dg.AutomationCondition.eager().ignore(dg.AssetSelection.assets("custom_signals")),
    check_specs=[
        dg.AssetCheckSpec(
            "all_cohorts_counted", asset="signals", description="every eligible cohort month has its counts partition"
        )
    ],
)
def signals(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings: SettingsResource
) -> dg.MaterializeResult:
    cfg = settings.load()
    try:
        with warehouse.connect() as con:
            run = signals_store.discover(con, cfg)
    except signals_store.MissingCohortMonthsError as exc:
        raise dg.Failure(description=str(exc), metadata={"missing_months": exc.months}) from None
    if not run.split.discovery_months:
        context.log.warning("No eligible account (outcome window closed) yet: beton.signals has no discovered rows")
    written = run.written
    return dg.MaterializeResult(
        metadata={
            "candidates_tested": dg.MetadataValue.int(run.tested),
            "enabled": dg.MetadataValue.int(written.filter(pl.col("enabled")).height),
            "review": dg.MetadataValue.int(written.filter(pl.col("recommendation") == "review").height),
            "discovery_accounts": dg.MetadataValue.int(run.split.n_discovery),
            "holdout_accounts": dg.MetadataValue.int(run.split.n_holdout),
            "holdout_months": dg.MetadataValue.json(list(run.split.holdout_months)),
            "top_signals": dg.MetadataValue.md(signals_markdown(written, app_base_url=cfg.app.base_url)),
            **({"pages": dg.MetadataValue.url(f"{cfg.app.base_url}/signals")} if cfg.app.base_url else {}),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="all_cohorts_counted", passed=True, metadata={"cohort_months": run.cohort_months}
            )
        ],
    )
