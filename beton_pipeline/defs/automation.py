"""Jobs and schedules."""

import dagster as dg

from beton_pipeline.defs.partitions import monitoring_days
from beton_pipeline.settings import load_settings

ingest_and_transform = dg.AssetSelection.groups("ingest", "reference", "staging", "intermediate", "marts") | dg.AssetSelection.assets(
    "custom_signals"
)

daily_ingest_job = dg.define_asset_job(
    "daily_ingest_job",
    selection=ingest_and_transform,
    description="Ingest every source table, rebuild the dbt feature tables and count the custom signals.",
)

discovery_job = dg.define_asset_job(
    "discovery_job",
    selection=dg.AssetSelection.assets("signals", "lead_score_model"),
    description=(
        "Aggregate the per-cohort counts into beton.signals (run after the cohort partitions are fresh), "
        "then train and backtest the lead-score model."
    ),
)


daily_monitoring_job = dg.define_asset_job(
    "daily_monitoring_job",
    selection=dg.AssetSelection.assets("signal_health", "account_scores"),
    partitions_def=monitoring_days,
    description="Signal health and live account scores for one day (backfill any range from the UI).",
)


@dg.definitions
def schedules() -> dg.Definitions:
    # Read at definitions load (not a secret): the hour and timezone of the daily run.
    schedule = load_settings().schedule
    minute, hour = (int(x) if x.isdigit() else 0 for x in schedule.cron.split()[:2])
    return dg.Definitions(
        jobs=[daily_ingest_job, discovery_job, daily_monitoring_job],
        schedules=[
            dg.ScheduleDefinition(
                name="daily_ingest_schedule",
                job=daily_ingest_job,
                cron_schedule=schedule.cron,
                execution_timezone=schedule.timezone,
                default_status=dg.DefaultScheduleStatus.RUNNING,
                description="Daily: ingest the sources and rebuild the feature tables.",
            ),
            # Two hours after the ingest (cohort counts and discovery follow it by sensor and automation),
            # score the day that just ended.
            dg.build_schedule_from_partitioned_job(
                daily_monitoring_job,
                name="daily_monitoring_schedule",
                hour_of_day=(hour + 2) % 24,
                minute_of_hour=minute,
                default_status=dg.DefaultScheduleStatus.RUNNING,
                description="Daily: signal health and account scores for the day that just ended.",
            ),
        ],
    )
