"""The daily monitoring job and the sensor that runs it for each new data day.

After the daily ingest rebuilds `account_outcomes` (and then evaluates the custom signals, whose firings the
day's health and scores read), the data's as-of day moves on: the sensor registers
the new days as partitions and requests one run over the days whose signal health or scores were never
materialised: the new day(s) only. After `beton run` it requests nothing (every day the data covers was
scored); a past day is redone only by a backfill from the UI.
"""

from datetime import date

import dagster as dg

from beton_pipeline.defs.monitoring.partitions import monitoring_days
from beton_pipeline.defs.partitions import latest_storage_id, outdated_partitions, range_tags
from beton_pipeline.defs.resources import SettingsResource, WarehouseResource
from beton_pipeline.store.daily import data_days, monitoring_day_keys

DAILY_ASSETS = ("signal_health", "account_scores")
ACCOUNT_OUTCOMES = dg.AssetKey("account_outcomes")
CUSTOM_SIGNALS = dg.AssetKey("custom_signals")
"""Evaluated after the dbt models in the same ingest; its firings feed the day's health and scores."""

daily_monitoring_job = dg.define_asset_job(
    "daily_monitoring_job",
    selection=dg.AssetSelection.assets(*DAILY_ASSETS),
    partitions_def=monitoring_days,
    description="Signal health and live account scores for one day (backfill any range from the UI).",
)


@dg.sensor(
    job=daily_monitoring_job,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "After account_outcomes is rebuilt and the custom signals evaluated on it (the daily ingest): register the new data days (through the as-of) as "
        "partitions and request one run over the days whose signal health or scores were never materialised (the new "
        "days only). Requests nothing after `beton run`, which scored every day the data covers."
    ),
)
def daily_monitoring_sensor(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource, settings: SettingsResource
):
    inputs_at = latest_storage_id(context.instance, [ACCOUNT_OUTCOMES])
    if inputs_at is None:
        return dg.SkipReason("account_outcomes has not been materialised yet")
    if context.cursor == str(inputs_at):
        return dg.SkipReason("account_outcomes was not rebuilt since the last tick")
    custom_at = latest_storage_id(context.instance, [CUSTOM_SIGNALS])
    if custom_at is None or custom_at < inputs_at:
        # cursor kept: the same ingest evaluates the custom signals next, and their firings feed these days
        return dg.SkipReason("custom_signals has not been evaluated on the new account_outcomes yet")
    bounds = warehouse.read_or_skip(data_days)
    if isinstance(bounds, dg.SkipReason):
        return bounds  # cursor kept: looked at again on the next tick
    keys = monitoring_day_keys(bounds, date.fromisoformat(settings.load().monitoring.start_date))
    existing = set(context.instance.get_dynamic_partitions(monitoring_days.name))
    new = [k for k in keys if k not in existing]
    added = [monitoring_days.build_add_request(new)] if new else []
    # Only days never scored: a past day keeps what was known then (backfill it from the UI to redo it).
    todo = sorted(
        {k for name in DAILY_ASSETS for k in outdated_partitions(context.instance, dg.AssetKey(name), keys, None)}
    )
    if not todo:
        return dg.SensorResult(
            skip_reason="every data day through the as-of is scored",
            dynamic_partitions_requests=added,
            cursor=str(inputs_at),
        )
    context.log.info(f"{len(todo)} day(s) to score: {todo[0]} … {todo[-1]}")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"{inputs_at}:{todo[0]}:{todo[-1]}", tags=range_tags(todo))],
        dynamic_partitions_requests=added,
        cursor=str(inputs_at),
    )
