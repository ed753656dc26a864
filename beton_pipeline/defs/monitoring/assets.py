"""Daily assets: signal health, live account scores, revenue numbers (one partition per day)."""

import dagster as dg
import polars as pl

from beton_pipeline.defs.partitions import monitoring_days
from beton_pipeline.defs.resources import WAREHOUSE_POOL, SettingsResource, WarehouseResource
from beton_pipeline.store.scoring import (
    clamp_days,
    compute_account_scores,
    compute_signal_health,
    data_days,
    write_days,
)
from beton_pipeline.store.tables import replace_rows

DAILY = dict(
    partitions_def=monitoring_days,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="monitoring",
    kinds={"python", "polars", "duckdb"},
    pool=WAREHOUSE_POOL,
)


def _days(context: dg.AssetExecutionContext, con) -> list:
    days = clamp_days(list(context.partition_keys), data_days(con))
    if not days:
        context.log.warning(f"No data for {context.partition_key_range}: the warehouse's outcomes do not cover these days")
    return days


@dg.asset(
    **DAILY,
    deps=["signals", "account_outcomes", "int_events_resolved", "int_account_windows"],
    description=(
        "beton.signal_health: for every enabled signal and day, precision and lift (Katz CI) over accounts whose "
        "outcome window closed in the trailing `monitoring.window_days`, compared with its backtested lift. "
        "Health (healthy/degrading/broken/insufficient_data) uses one-sided tests at alpha / looks_per_year "
        "(Bonferroni alpha spending over a year of daily looks), so repeated checks do not inflate false alarms."
    ),
    check_specs=[dg.AssetCheckSpec("no_enabled_signal_broken", asset="signal_health", description="on the latest day computed, no enabled signal is broken")],
)
def signal_health(context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings: SettingsResource) -> dg.MaterializeResult:
    cfg = settings.load()
    with warehouse.connect() as con:
        days = _days(context, con)
        frame = compute_signal_health(con, cfg, days) if days else pl.DataFrame()
        if days and not frame.is_empty():
            write_days(con, "beton.signal_health", frame, days)
    latest = frame.filter(pl.col("day") == frame["day"].max()) if not frame.is_empty() else frame
    counts = {h: latest.filter(pl.col("health") == h).height for h in ("healthy", "degrading", "broken", "insufficient_data")} if not latest.is_empty() else {}
    broken = latest.filter(pl.col("health") == "broken")["definition"].to_list() if not latest.is_empty() else []
    table = "\n".join(
        f"| {r['definition']} | {r['health']} | {r['lift'] if r['lift'] is None else round(r['lift'], 2)} | {round(r['backtest_lift'], 2)} | {r['n_with']} |"
        for r in latest.iter_rows(named=True)
    ) if not latest.is_empty() else ""
    return dg.MaterializeResult(
        metadata={
            "days": dg.MetadataValue.int(len(days)),
            **{f"signals_{k}": dg.MetadataValue.int(v) for k, v in counts.items()},
            "latest_day": dg.MetadataValue.text(str(frame["day"].max()) if not frame.is_empty() else "none"),
            "health": dg.MetadataValue.md("| signal | health | window lift | backtest lift | n with |\n|---|---|---|---|---|\n" + table if table else "No enabled signal or no data."),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="no_enabled_signal_broken",
                passed=not broken,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={"broken": dg.MetadataValue.json(broken)},
            )
        ],
    )


@dg.asset(
    **DAILY,
    deps=["signals", "account_outcomes", "account_features", "int_events_resolved", "int_account_windows"],
    description=(
        "beton.account_scores: every account in play (started, not converted, conversion window open) at the end of "
        "each day, scored by its enabled signals (weight = log backtested lift, halved every `scoring.half_life_days` "
        "after the signal fired), calibrated to a probability by logistic regression on historical accounts observed "
        "at the same ages. Lists the signals that fired, when, the top contributions and the intent signals. "
        "Also writes beton.score_calibration (predicted vs observed by decile on the later cohorts) and "
        "beton.revenue_metrics (leads surfaced, conversion rate, pipeline influenced, signal accuracy)."
    ),
)
def account_scores(context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings: SettingsResource) -> dg.MaterializeResult:
    cfg = settings.load()
    with warehouse.connect() as con:
        days = _days(context, con)
        if not days:
            return dg.MaterializeResult(metadata={"days": 0})
        result = compute_account_scores(con, cfg, days)
        write_days(con, "beton.account_scores", result.scores, days)
        write_days(con, "beton.revenue_metrics", result.revenue, days)
        if not result.calibration.is_empty():
            replace_rows(con, "beton.score_calibration", result.calibration, "true")
    latest = result.revenue.filter(pl.col("day") == max(days)).row(0, named=True)
    calib = "\n".join(
        f"| {r['decile']} | {r['n']} | {r['predicted_rate']:.3f} | {r['observed_rate']:.3f} ({r['observed_ci_low']:.3f}–{r['observed_ci_high']:.3f}) |"
        for r in result.calibration.iter_rows(named=True)
    )
    return dg.MaterializeResult(
        metadata={
            "days": dg.MetadataValue.int(len(days)),
            "accounts_scored": dg.MetadataValue.int(result.scores.height),
            "latest_day": dg.MetadataValue.text(str(max(days))),
            "leads_surfaced": dg.MetadataValue.int(int(latest["leads_surfaced"])),
            "accounts_in_play": dg.MetadataValue.int(int(latest["accounts_in_play"])),
            "conversion_rate_30d": dg.MetadataValue.float(float(latest["conversion_rate_30d"] or 0.0)),
            "pipeline_influenced_arr_30d": dg.MetadataValue.float(float(latest["pipeline_influenced_arr_30d"])),
            "signal_accuracy_30d": dg.MetadataValue.float(float(latest["signal_accuracy_30d"] or 0.0)),
            "calibration": dg.MetadataValue.md(
                "| decile | n | predicted | observed (95% CI) |\n|---|---|---|---|\n" + calib if calib else "No holdout cohort to check calibration on."
            ),
        }
    )
