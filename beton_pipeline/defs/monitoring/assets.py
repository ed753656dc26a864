"""Daily assets: signal health, live account scores, revenue numbers (one partition per day).

Their partitions come from the settings, so the assets are built when the definitions load
(`build_monitoring_assets`, called by `jobs.monitoring_definitions`).
"""

import dagster as dg
import polars as pl

from beton_pipeline.core.formatting import fmt, fmt_estimate, markdown_table
from beton_pipeline.defs.resources import WAREHOUSE_POOL, SettingsResource, WarehouseResource
from beton_pipeline.store.firings import FIRING_INPUTS
from beton_pipeline.store.monitoring import HEALTH_STATES, SignalHealth, refresh_signal_health
from beton_pipeline.store.scoring import ScoresResult, refresh_account_scores

SIGNAL_HEALTH_DESCRIPTION = (
    "beton.signal_health: for every enabled signal and day, precision and lift (Katz CI) over accounts whose "
    "outcome window closed in the trailing `monitoring.window_days`, compared with its backtested lift. "
    "Health (healthy/degrading/broken/insufficient_data) uses one-sided tests at alpha / looks_per_year "
    "(Bonferroni alpha spending over a year of daily looks), so repeated checks do not inflate false alarms."
)

ACCOUNT_SCORES_DESCRIPTION = (
    "beton.account_scores: every account in play (started, not converted, conversion window open) at the end of "
    "each day, scored by its enabled signals (weight = log backtested lift, halved every `scoring.half_life_days` "
    "after the signal fired), calibrated to a probability by logistic regression on historical accounts observed "
    "at the same ages. Lists the signals that fired, when, the top contributions and the intent signals. "
    "Also writes beton.score_calibration (predicted vs observed by decile on the later cohorts) and "
    "beton.revenue_metrics (leads surfaced, conversion rate, pipeline influenced, signal accuracy)."
)


def _warn_without_days(context: dg.AssetExecutionContext, days: list) -> None:
    if not days:
        context.log.warning(
            f"No data for {context.partition_key_range}: the warehouse's outcomes do not cover these days"
        )


def health_metadata(health: SignalHealth) -> dict[str, dg.MetadataValue]:
    """Days computed, signals per health state on the latest day, and its table."""
    latest = health.latest
    counts = (
        {state: latest.filter(pl.col("health") == state).height for state in HEALTH_STATES}
        if not latest.is_empty()
        else {}
    )
    table = markdown_table(
        ["signal", "health", "window lift", "backtest lift", "n with"],
        [
            [r["definition"], r["health"], fmt(r["lift"], ".2f"), fmt(r["backtest_lift"], ".2f"), r["n_with"]]
            for r in latest.iter_rows(named=True)
        ],
        empty="No enabled signal or no data.",
    )
    return {
        "days": dg.MetadataValue.int(len(health.days)),
        **{f"signals_{state}": dg.MetadataValue.int(n) for state, n in counts.items()},
        "latest_day": dg.MetadataValue.text(str(latest["day"][0]) if not latest.is_empty() else "none"),
        "health": dg.MetadataValue.md(table),
    }


def scores_metadata(result: ScoresResult) -> dict[str, dg.MetadataValue]:
    """Accounts scored, the latest day's revenue numbers, and the calibration check."""
    latest = result.revenue.filter(pl.col("day") == max(result.days)).row(0, named=True)
    calibration = markdown_table(
        ["decile", "n", "predicted", "observed (95% CI)"],
        [
            [
                r["decile"],
                r["n"],
                fmt(r["predicted_rate"]),
                fmt_estimate(r["observed_rate"], r["observed_ci_low"], r["observed_ci_high"], ".3f"),
            ]
            for r in result.calibration.iter_rows(named=True)
        ],
        empty="No holdout cohort to check calibration on.",
    )
    return {
        "days": dg.MetadataValue.int(len(result.days)),
        "accounts_scored": dg.MetadataValue.int(result.scores.height),
        "latest_day": dg.MetadataValue.text(str(max(result.days))),
        "leads_surfaced": dg.MetadataValue.int(int(latest["leads_surfaced"])),
        "accounts_in_play": dg.MetadataValue.int(int(latest["accounts_in_play"])),
        "conversion_rate_30d": dg.MetadataValue.float(float(latest["conversion_rate_30d"] or 0.0)),
        "pipeline_influenced_arr_30d": dg.MetadataValue.float(float(latest["pipeline_influenced_arr_30d"])),
        "signal_accuracy_30d": dg.MetadataValue.float(float(latest["signal_accuracy_30d"] or 0.0)),
        "calibration": dg.MetadataValue.md(calibration),
    }


def build_monitoring_assets(days: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    """`signal_health` and `account_scores`, partitioned by `days`."""
    daily = dict(
        partitions_def=days,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name="monitoring",
        kinds={"python", "polars", "duckdb"},
        pool=WAREHOUSE_POOL,
    )

    @dg.asset(
        **daily,
        deps=["signals", "account_outcomes", *FIRING_INPUTS],
        description=SIGNAL_HEALTH_DESCRIPTION,
        check_specs=[
            dg.AssetCheckSpec(
                "no_enabled_signal_broken",
                asset="signal_health",
                description="on the latest day computed, no enabled signal is broken",
            )
        ],
    )
    def signal_health(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings: SettingsResource
    ) -> dg.MaterializeResult:
        cfg = settings.load()
        with warehouse.connect() as con:
            health = refresh_signal_health(con, cfg, context.partition_keys)
        _warn_without_days(context, health.days)
        broken = health.broken
        return dg.MaterializeResult(
            metadata=health_metadata(health),
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
        **daily,
        deps=["signals", "account_outcomes", *FIRING_INPUTS],  # FIRING_INPUTS includes account_features
        description=ACCOUNT_SCORES_DESCRIPTION,
    )
    def account_scores(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings: SettingsResource
    ) -> dg.MaterializeResult:
        cfg = settings.load()
        with warehouse.connect() as con:
            result = refresh_account_scores(con, cfg, context.partition_keys)
        _warn_without_days(context, result.days)
        return dg.MaterializeResult(metadata=scores_metadata(result) if result.days else {"days": 0})

    return [signal_health, account_scores]
