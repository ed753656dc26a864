"""The Definitions object: loads, has the whole graph, the daily schedule and sensors, and one warehouse pool."""

import dagster as dg

from beton_pipeline.defs.resources import WAREHOUSE_POOL


def test_definitions_load_with_every_asset_and_a_daily_schedule():
    from beton_pipeline.definitions import defs

    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    for expected in (
        "raw_events",
        "raw_intent_signals",
        "stg_posthog__events",
        "int_events_resolved",
        "account_features",
        "account_outcomes",
        "signal_cohort_counts",
        "signals",
        "lead_score_model",
        "signal_health",
        "account_scores",
    ):
        assert expected in keys
    schedule = defs.resolve_schedule_def("daily_ingest_schedule")
    assert schedule.cron_schedule == "0 6 * * *"
    # the daily partitions are the data's days, kept in the instance: nothing is read when the definitions load
    monitoring = defs.resolve_sensor_def("daily_monitoring_sensor")
    assert isinstance(monitoring.job.partitions_def, dg.DynamicPartitionsDefinition)
    assert monitoring.job.partitions_def.name == "monitoring_days"
    defs.resolve_job_def("daily_ingest_job")
    defs.resolve_job_def("discovery_job")


def test_every_warehouse_writer_is_in_the_single_pool():
    from beton_pipeline.definitions import defs

    graph = defs.resolve_asset_graph()
    writers = [k for k in graph.get_all_asset_keys() if not graph.get(k).is_external]
    for key in writers:
        node = graph.get(key)
        assert set(node.pools) == {WAREHOUSE_POOL}, key


def test_every_asset_is_described():
    from beton_pipeline.definitions import defs

    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        spec = graph.get(key)
        if spec.is_external:
            continue
        assert spec.description, key
