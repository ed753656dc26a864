"""Partitions, defined once.

* `cohort_months` (dynamic): `beton run` and the cohort sensor add the months (`YYYY-MM`) that have
  eligible accounts, so a new month adds one partition.
* `monitoring_days` (daily): signal health, account scores and revenue metrics, one partition per day
  from `monitoring.start_date`; days are data days (the run's as-of), never after the data ends.
"""

import dagster as dg

from beton_pipeline.settings import load_settings

cohort_months = dg.DynamicPartitionsDefinition(name="cohort_months")

_settings = load_settings()
monitoring_days = dg.DailyPartitionsDefinition(
    start_date=_settings.monitoring.start_date, timezone=_settings.schedule.timezone, end_offset=1
)
