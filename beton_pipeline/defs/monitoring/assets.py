"""Daily assets: signal health, live account scores, revenue numbers (one partition per day).

One partition per data day (`partitions.monitoring_days`). A run over many days (`beton run`, a
backfill) records each day's own numbers on that day's partition (`add_day_metadata`), so the UI's
plots show the trend.
"""

import dagster as dg
import polars as pl

from beton_pipeline.core.formatting import fmt, fmt_estimate, markdown_table
from beton_pipeline.defs.monitoring.partitions import monitoring_days
from beton_pipeline.defs.resources import WAREHOUSE_POOL, SettingsResource, WarehouseResource
from beton_pipeline.store.firings import FIRING_INPUTS
from beton_pipeline.store.monitoring import HEALTH_STATES, refresh_signal_health
from beton_pipeline.store.scoring import ScoresResult, refresh_account_scores

SIGNAL_HEALTH_DESCRIPTION = (
    "beton.signal_health: for every enabled signal and day, precision and lift (Katz CI) over accounts whose "
    "outcome window closed in the trailing `monitoring.window_days`, compared with its backtested lift. "
    "Health (healthy/degrading/broken/insufficient_data) by the rule `monitoring.method` names (`health_rule`): "
    "`bonferroni` (default) tests the window at alpha / looks_per_year; `sequential` accumulates the evidence of "
    "each day's newly closed outcomes (Shiryaev–Roberts; `degrading_evidence` and `broken_evidence`, log R in "
    "nats, alarm at `alarm_threshold` = log(2 · looks_per_year / alpha)). Either way a stable signal is flagged "
    "in at most alpha of its years of daily looks. Scores of the same day weight each signal by its health."
)

ACCOUNT_SCORES_DESCRIPTION = (
    "beton.account_scores: every account in play (started, not converted, conversion window open) at the end of "
    "each day, scored by its enabled signals (weight = log backtested lift, halved every `scoring.half_life_days` "
    "after the signal fired, times the signal's health factor that day: degrading × `scoring.degrading_weight`, "
    "broken 0), calibrated to a probability by logistic regression on historical accounts observed "
    "at the same ages. Lists the signals that fired, when, why any counts less (`weight_note`), the top "
    "contributions and the intent signals. "
    "Also writes beton.score_calibration (predicted vs observed by decile on the later cohorts) and "
    "beton.revenue_metrics (leads surfaced, conversion rate, pipeline influenced, signal accuracy)."
)


def _warn_without_days(context: dg.AssetExecutionContext, days: list) -> None:
    if not days:
        context.log.warning(
            f"No data for {context.partition_key_range}: the warehouse's outcomes do not cover these days"
        )


def _number(value) -> dg.MetadataValue:
    """A plottable number: int as int, anything else (None, NaN included) as float."""
    if isinstance(value, int) and not isinstance(value, bool):
        return dg.MetadataValue.int(value)
    return dg.MetadataValue.float(float("nan") if value is None else float(value))


def health_day_metadata(rows: pl.DataFrame) -> dict[str, dg.MetadataValue]:
    """One day's signal health: signals per health state, and its table (`rows` = that day's rows; none
    without an enabled signal)."""
    counts = {state: rows.filter(pl.col("health") == state).height if rows.height else 0 for state in HEALTH_STATES}
    table = markdown_table(
        ["signal", "health", "window lift", "backtest lift", "n with"],
        [
            [r["definition"], r["health"], fmt(r["lift"], ".2f"), fmt(r["backtest_lift"], ".2f"), r["n_with"]]
            for r in rows.iter_rows(named=True)
        ],
        empty="No enabled signal or no data.",
    )
    return {
        "signals": dg.MetadataValue.int(rows.height),
        **{f"signals_{state}": dg.MetadataValue.int(n) for state, n in counts.items()},
        "health": dg.MetadataValue.md(table),
    }


REVENUE_NUMBERS = (
    "accounts_in_play",
    "leads_surfaced",
    "outcomes_closed_30d",
    "conversions_30d",
    "conversion_rate_30d",
    "signal_accuracy_30d",
    "pipeline_influenced_arr_30d",
)
"""beton.revenue_metrics columns reported as numbers on each day's `account_scores` partition."""


def scores_day_metadata(revenue_row: dict) -> dict[str, dg.MetadataValue]:
    """One day's revenue numbers (a beton.revenue_metrics row), plotted by the UI over the partitions."""
    return {name: _number(revenue_row[name]) for name in REVENUE_NUMBERS}


def calibration_metadata(result: ScoresResult) -> dict[str, dg.MetadataValue]:
    """The calibration check (one for the whole run: it does not depend on the day)."""
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
    return {"days_in_run": dg.MetadataValue.int(len(result.days)), "calibration": dg.MetadataValue.md(calibration)}


def add_day_metadata(context: dg.AssetExecutionContext, days: list, rows: pl.DataFrame, build) -> None:
    """Attach `build(that day's rows)` to the partition materialization of each day computed, so a run over
    many days records each day's own numbers (what the UI plots), not the last day's on every partition."""
    by_day = {key[0]: frame for key, frame in rows.group_by("day")} if rows.height else {}
    for day in days:
        context.add_asset_metadata(build(by_day.get(day, rows.clear())), partition_key=day.isoformat())


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
        # custom_signals writes the custom signals' firings (beton.custom_signal_firings) that health reads.
        deps=["signals", "custom_signals", "account_outcomes", *FIRING_INPUTS],
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
        add_day_metadata(context, health.days, health.rows, health_day_metadata)
        broken = health.broken
        return dg.MaterializeResult(
            metadata={"days_in_run": dg.MetadataValue.int(len(health.days))},
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
        # signal_health first: a day's scores weight each signal by its health that day (same partition);
        # custom_signals writes the custom signals' firings; FIRING_INPUTS: account_features too.
        deps=[signal_health, "signals", "custom_signals", "account_outcomes", *FIRING_INPUTS],
        description=ACCOUNT_SCORES_DESCRIPTION,
    )
    def account_scores(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings: SettingsResource
    ) -> dg.MaterializeResult:
        cfg = settings.load()
        with warehouse.connect() as con:
            result = refresh_account_scores(con, cfg, context.partition_keys)
        _warn_without_days(context, result.days)
        if result.days_without_health:
            context.log.warning(
                f"No signal health for {len(result.days_without_health)} scored day(s) "
                f"({result.days_without_health[0]} … {result.days_without_health[-1]}): their signals kept full weight"
            )
        add_day_metadata(
            context, result.days, result.revenue, lambda frame: scores_day_metadata(frame.row(0, named=True))
        )
        return dg.MaterializeResult(metadata=calibration_metadata(result))

    return [signal_health, account_scores]


signal_health, account_scores = build_monitoring_assets(monitoring_days)
