"""The daily partitions of signal health, account scores and revenue metrics: one per day from
`monitoring.start_date`, in the schedule's timezone. Days are data days (the run's as-of), never after
the data ends.

Built from the settings when the definitions load (`jobs.monitoring_definitions`), not at import.
"""

import dagster as dg

from beton_pipeline.settings import Settings


def monitoring_days(settings: Settings) -> dg.DailyPartitionsDefinition:
    """The daily partitions for `settings` (`end_offset=1`: today's partition exists, for the as-of day)."""
    return dg.DailyPartitionsDefinition(
        start_date=settings.monitoring.start_date, timezone=settings.schedule.timezone, end_offset=1
    )
