"""The daily partitions of signal health, account scores and revenue metrics: one per data day, from
`monitoring.start_date` (or the first day an outcome window closed, if later) through the data's as-of
day (`windows.as_of`, else the latest event) — never the wall clock, so no partition is "Missing" for
a day the data cannot speak for.

Dynamic partitions, kept in the Dagster instance: `beton run` registers the days it scores, and
`daily_monitoring_sensor` registers each new as-of day after the daily ingest. Nothing is read at
definitions load, so the definitions load without a warehouse (a fresh clone) and while another process
writes it.
"""

from datetime import date

import dagster as dg

from beton_pipeline.store.daily import monitoring_day_keys

monitoring_days = dg.DynamicPartitionsDefinition(name="monitoring_days")


def register_monitoring_days(
    instance: dg.DagsterInstance, bounds: tuple[date, date] | None, start_date: str
) -> list[str]:
    """Add the monitoring days of the data `bounds` (first day, as-of day) that are not partitions yet;
    returns every monitoring day of the data, in order."""
    keys = monitoring_day_keys(bounds, date.fromisoformat(start_date))
    existing = set(instance.get_dynamic_partitions(monitoring_days.name))
    new = [k for k in keys if k not in existing]
    if new:
        instance.add_dynamic_partitions(monitoring_days.name, new)
    return keys
