"""Keep backtests fresh: after `signals` or `custom_signals` materialise, register new signal partitions
and re-run every backtested signal's partition."""

import dagster as dg

from beton_pipeline.defs.backtests.jobs import signal_backtests_job
from beton_pipeline.defs.backtests.partitions import signal_partitions
from beton_pipeline.defs.resources import WarehouseResource
from beton_pipeline.store.backtests import backtested_signal_ids

WATCHED = ("signals", "custom_signals")


@dg.sensor(
    job=signal_backtests_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "After `signals` or `custom_signals` materialise: add a `signals` partition for every new enabled discovered "
        "or custom signal and request one backtest run per backtested signal (run key = the materializations seen "
        "and the signal, so each change is backtested once)."
    ),
)
def signal_partitions_sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource):
    latest = [context.instance.fetch_materializations(dg.AssetKey(name), limit=1).records for name in WATCHED]
    if not any(latest):
        return dg.SkipReason("neither signals nor custom_signals has been materialised yet")
    marker = ":".join(str(records[0].storage_id) if records else "0" for records in latest)
    if marker == context.cursor:
        return dg.SkipReason("no new materialization of signals or custom_signals")
    ids = warehouse.read_or_skip(backtested_signal_ids)
    if isinstance(ids, dg.SkipReason):
        return ids
    existing = set(context.instance.get_dynamic_partitions(signal_partitions.name))
    new = [i for i in ids if i not in existing]
    return dg.SensorResult(
        dynamic_partitions_requests=[signal_partitions.build_add_request(new)] if new else [],
        run_requests=[dg.RunRequest(run_key=f"{marker}:{i}", partition_key=i) for i in ids],
        cursor=marker,
    )
