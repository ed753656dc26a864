"""The daily monitoring job and its schedule, and the monitoring domain's definitions.

The daily partitions start at `monitoring.start_date` in the schedule's timezone, so the assets, the
job and the schedule are built from the settings when the definitions load (`monitoring_definitions`),
never at import.
"""

import dagster as dg

from beton_pipeline.defs.monitoring.assets import build_monitoring_assets
from beton_pipeline.defs.monitoring.partitions import monitoring_days
from beton_pipeline.settings import ScheduleSettings, load_settings


def daily_monitoring_job(days: dg.PartitionsDefinition):  # -> an asset job (its class is not public)
    """`daily_monitoring_job`: signal health and account scores over the partitions `days`."""
    return dg.define_asset_job(
        "daily_monitoring_job",
        selection=dg.AssetSelection.assets("signal_health", "account_scores"),
        partitions_def=days,
        description="Signal health and live account scores for one day (backfill any range from the UI).",
    )


def daily_monitoring_schedule(job, schedule: ScheduleSettings) -> dg.ScheduleDefinition:
    """`daily_monitoring_schedule`: two hours after the daily ingest (cohort counts and discovery follow it by
    sensor and automation), score the day that just ended."""
    minute, hour = (int(x) if x.isdigit() else 0 for x in schedule.cron.split()[:2])
    return dg.build_schedule_from_partitioned_job(
        job,
        name="daily_monitoring_schedule",
        hour_of_day=(hour + 2) % 24,
        minute_of_hour=minute,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Daily: signal health and account scores for the day that just ended.",
    )


@dg.definitions
def monitoring_definitions() -> dg.Definitions:
    """The monitoring domain: daily assets, job and schedule, from the settings (read at definitions load)."""
    settings = load_settings()
    days = monitoring_days(settings)
    job = daily_monitoring_job(days)
    return dg.Definitions(
        assets=build_monitoring_assets(days), jobs=[job], schedules=[daily_monitoring_schedule(job, settings.schedule)]
    )
