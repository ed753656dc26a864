"""Keep discovery fresh: when the marts are rebuilt, register new cohort months and recount them."""

import dagster as dg

from beton_pipeline.defs.partitions import (
    cohort_months,
    latest_storage_id,
    new_and_ordered,
    outdated_partitions,
    range_tags,
)
from beton_pipeline.defs.resources import WarehouseResource
from beton_pipeline.store.tables import eligible_cohort_months

cohort_counts_job = dg.define_asset_job(
    "cohort_counts_job",
    selection=dg.AssetSelection.assets("signal_cohort_counts"),
    partitions_def=cohort_months,
    description="Recount cohort months' candidate statistics (one month, or a range in one run).",
)

ACCOUNT_OUTCOMES = dg.AssetKey("account_outcomes")
COUNTS = dg.AssetKey("signal_cohort_counts")


@dg.sensor(
    job=cohort_counts_job,
    # A tick with nothing new is one indexed read; 30 s lets discovery follow a daily ingest within a minute.
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "After account_outcomes is rebuilt: add cohort months that gained eligible accounts as partitions "
        "and request one run recounting the eligible months whose counts are older than the newest "
        "account_outcomes (the range from the first to the last of them, in partition order; run key = that "
        "materialization's storage id and the range, so a materialization is never counted twice). "
        "Requests nothing after `beton run`, which counted every month after the outcomes. `signals` follows by "
        "its automation condition."
    ),
)
def cohort_months_sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource):
    # The cursor is the storage id of the last account_outcomes materialization handled; it only moves
    # once the months were read, so a tick that finds the warehouse locked is retried on the next tick.
    latest = latest_storage_id(context.instance, [ACCOUNT_OUTCOMES])
    if latest is None or context.cursor == str(latest):
        return dg.SkipReason("account_outcomes was not rebuilt since the last tick")
    months = warehouse.read_or_skip(eligible_cohort_months)
    if isinstance(months, dg.SkipReason):
        return months
    new, ordered = new_and_ordered(context.instance.get_dynamic_partitions(cohort_months.name), months)
    # One run over the range (the asset's single-run backfill policy): the months between the first and
    # the last outdated one, in the order the partitions were added (new ones last), are recounted too.
    outdated = set(outdated_partitions(context.instance, COUNTS, months, latest))
    span = [m for m in ordered if m in outdated]
    runs = [dg.RunRequest(run_key=f"{latest}:{span[0]}:{span[-1]}", tags=range_tags(span))] if span else []
    return dg.SensorResult(
        dynamic_partitions_requests=[cohort_months.build_add_request(new)] if new else [],
        run_requests=runs,
        skip_reason=None if span else "every eligible month was counted after the latest account_outcomes",
        cursor=str(latest),
    )
