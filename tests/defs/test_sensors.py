"""The cohort sensor, evaluated directly against the session run's instance and warehouse."""

import dagster as dg

from beton_pipeline.defs.resources import WarehouseResource
from beton_pipeline.defs.signals.sensors import cohort_months_sensor


def test_cohort_sensor_requests_nothing_right_after_beton_run(pipeline_run):
    """`beton run` counted every month after the newest account_outcomes: the first tick redoes nothing."""
    resources = {"warehouse": WarehouseResource(path=str(pipeline_run.warehouse))}
    with dg.build_sensor_context(instance=pipeline_run.instance, resources=resources) as context:
        result = cohort_months_sensor(context)
    assert isinstance(result, dg.SkipReason) or not result.run_requests, result


def test_cohort_sensor_requests_every_eligible_month_once(pipeline_run):
    """A new account_outcomes with no month counted after it (a fresh instance, so the session's is left
    alone): one run over the range of eligible months, then nothing for the same materialization."""
    resources = {"warehouse": WarehouseResource(path=str(pipeline_run.warehouse))}
    instance = dg.DagsterInstance.ephemeral()
    instance.report_runless_asset_event(dg.AssetMaterialization("account_outcomes"))
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = cohort_months_sensor(context)
    assert isinstance(result, dg.SensorResult)
    months = sorted(pipeline_run.summary.cohort_months)
    assert len(months) > 1, "one eligible month would not show a range"
    assert [request_range(r) for r in result.run_requests] == [(months[0], months[-1])]
    (added,) = result.dynamic_partitions_requests
    assert sorted(added.partition_keys) == months
    assert result.cursor
    # the same materialization is never counted twice: with the cursor, the next tick skips
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=result.cursor) as context:
        again = cohort_months_sensor(context)
    assert isinstance(again, dg.SkipReason)


def request_range(request: dg.RunRequest) -> tuple[str, str]:
    """(first, last) partition of a run request over a range of partitions."""
    return (request.tags["dagster/asset_partition_range_start"], request.tags["dagster/asset_partition_range_end"])


def test_new_months_come_after_the_registered_ones_in_partition_order():
    from beton_pipeline.defs.partitions import new_and_ordered

    # a month added late (a backfilled export) sorts after the months registered before it
    assert new_and_ordered(["2025-02", "2025-03"], ["2025-03", "2025-01", "2025-02"]) == (
        ["2025-01"],
        ["2025-02", "2025-03", "2025-01"],
    )
    assert new_and_ordered([], ["2025-02", "2025-01"]) == (["2025-02", "2025-01"], ["2025-02", "2025-01"])
