"""Keep discovery fresh: when the marts are rebuilt, register new cohort months and recount them."""

import dagster as dg

from beton_pipeline.defs.partitions import cohort_months
from beton_pipeline.defs.resources import WarehouseResource
from beton_pipeline.store.tables import eligible_cohort_months

cohort_counts_job = dg.define_asset_job(
    "cohort_counts_job",
    selection=dg.AssetSelection.assets("signal_cohort_counts"),
    partitions_def=cohort_months,
    description="Recount one cohort month's candidate statistics.",
)

ACCOUNT_OUTCOMES = dg.AssetKey("account_outcomes")


@dg.sensor(
    job=cohort_counts_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "After account_outcomes is rebuilt: add cohort months that gained eligible accounts as partitions "
        "and request one recount per eligible month (run key = the materialization's storage id and the month, "
        "so a materialization is never counted twice). `signals` follows by its automation condition."
    ),
)
def cohort_months_sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource):
    # The cursor is the storage id of the last account_outcomes materialization handled; it only moves
    # once the months were read, so a tick that finds the warehouse locked is retried on the next tick.
    after = int(context.cursor) if context.cursor else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=ACCOUNT_OUTCOMES, after_storage_id=after), limit=1, ascending=False
    ).records
    if not records:
        return dg.SkipReason("account_outcomes was not rebuilt since the last tick")
    latest = records[0].storage_id
    months = warehouse.read_or_skip(eligible_cohort_months)
    if isinstance(months, dg.SkipReason):
        return months
    existing = set(context.instance.get_dynamic_partitions(cohort_months.name))
    new = [m for m in months if m not in existing]
    return dg.SensorResult(
        dynamic_partitions_requests=[cohort_months.build_add_request(new)] if new else [],
        run_requests=[dg.RunRequest(run_key=f"{latest}:{m}", partition_key=m) for m in months],
        cursor=str(latest),
    )
