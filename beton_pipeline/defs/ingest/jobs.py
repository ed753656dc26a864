"""The daily ingest job and its schedule: pull the enabled connectors, ingest every source table, rebuild the dbt models, count the
custom signals. The schedule's cron and timezone are settings, read when the definitions load."""

import dagster as dg

from beton_pipeline.settings import load_settings

ingest_and_transform = dg.AssetSelection.groups(
    "connectors", "ingest", "reference", "staging", "intermediate", "marts"
) | dg.AssetSelection.assets("custom_signals")

daily_ingest_job = dg.define_asset_job(
    "daily_ingest_job",
    selection=ingest_and_transform,
    description=(
        "Pull the enabled connectors, ingest every source table, rebuild the dbt feature tables and count the "
        "custom signals."
    ),
)


@dg.definitions
def ingest_jobs() -> dg.Definitions:
    """`daily_ingest_job` and `daily_ingest_schedule` (the hour and timezone of the daily run, not a secret)."""
    schedule = load_settings().schedule
    return dg.Definitions(
        jobs=[daily_ingest_job],
        schedules=[
            dg.ScheduleDefinition(
                name="daily_ingest_schedule",
                job=daily_ingest_job,
                cron_schedule=schedule.cron,
                execution_timezone=schedule.timezone,
                default_status=dg.DefaultScheduleStatus.RUNNING,
                description="Daily: ingest the sources and rebuild the feature tables.",
            )
        ],
    )
