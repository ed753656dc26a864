"""Keep backtests fresh: after `signals` or `custom_signals` materialise, register new signal partitions
and re-run every backtested signal's partition."""

import dagster as dg

from beton_pipeline.defs.backtests.jobs import signal_backtests_job
from beton_pipeline.defs.backtests.partitions import signal_partitions
from beton_pipeline.defs.partitions import latest_storage_id, outdated_partitions
from beton_pipeline.defs.resources import WarehouseResource
from beton_pipeline.store.backtests import backtested_signal_ids

WATCHED = ("signals", "custom_signals")
BACKTESTS = dg.AssetKey("signal_backtests")


@dg.sensor(
    job=signal_backtests_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "After `signals` or `custom_signals` materialise: add a `signals` partition for every new enabled discovered "
        "or custom signal and request one backtest run per backtested signal whose backtest is older than them "
        "(run key = the materializations seen and the signal, so each change is backtested once). Requests nothing "
        "after `beton run`, which backtested every signal after discovery."
    ),
)
def signal_partitions_sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource):
    inputs_at = latest_storage_id(context.instance, [dg.AssetKey(name) for name in WATCHED])
    if inputs_at is None:
        return dg.SkipReason("neither signals nor custom_signals has been materialised yet")
    marker = str(inputs_at)
    if marker == context.cursor:
        return dg.SkipReason("no new materialization of signals or custom_signals")
    ids = warehouse.read_or_skip(backtested_signal_ids)
    if isinstance(ids, dg.SkipReason):
        return ids
    existing = set(context.instance.get_dynamic_partitions(signal_partitions.name))
    new = [i for i in ids if i not in existing]
    todo = outdated_partitions(context.instance, BACKTESTS, ids, inputs_at)
    return dg.SensorResult(
        dynamic_partitions_requests=[signal_partitions.build_add_request(new)] if new else [],
        run_requests=[dg.RunRequest(run_key=f"{marker}:{i}", partition_key=i) for i in todo],
        skip_reason=None if todo else "every signal was backtested after the latest signals and custom_signals",
        cursor=marker,
    )
