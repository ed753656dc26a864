"""The first hour in the Dagster UI after `beton run`: no sensor or automation redoes what the run
materialised, nothing it built shows as stale ("Unsynced"), the daily partitions end at the data's
as-of day, and each day's partition carries that day's own numbers.

One small `beton run` (600 demo accounts, six months) in a temporary instance, shared by the module.
"""

from datetime import date, timedelta

import dagster as dg
import duckdb
import pytest

from tests.conftest import env_vars, project_instance
from tests.defs.test_sensors import request_range

pytestmark = pytest.mark.slow(seconds=80)

ACCOUNTS, MONTHS = 600, 6
"""Six months: five cohort months and ~120 daily partitions are as telling as a year here, at less than half
the daily health and score work."""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from beton_pipeline.runner import run_pipeline
    from beton_pipeline.sources.demo import generate_demo

    base = tmp_path_factory.mktemp("first_hour")
    source, warehouse = base / "source", base / "warehouse.duckdb"
    generate_demo(source, n_accounts=ACCOUNTS, seed=11, months=MONTHS)
    with env_vars(BETON_SOURCE_DIR=str(source), BETON_WAREHOUSE=str(warehouse), DAGSTER_HOME=str(base / "home")):
        from beton_pipeline.definitions import defs

        instance = project_instance(base / "home")
        summary = run_pipeline(instance, defs)
        yield defs, instance, warehouse, summary


def _resources(warehouse):
    from beton_pipeline.defs.resources import SettingsResource, WarehouseResource

    return {"warehouse": WarehouseResource(path=str(warehouse)), "settings": SettingsResource()}


def _sensors(defs) -> list[dg.SensorDefinition]:
    return [
        s for s in defs.get_repository_def().sensor_defs if not isinstance(s, dg.AutomationConditionSensorDefinition)
    ]


def test_no_sensor_redoes_what_beton_run_materialised(run):
    defs, instance, warehouse, _ = run
    sensors = _sensors(defs)
    assert {s.name for s in sensors} >= {"cohort_months_sensor", "signal_partitions_sensor", "daily_monitoring_sensor"}
    for sensor in sensors:
        with dg.build_sensor_context(instance=instance, resources=_resources(warehouse), definitions=defs) as context:
            data = sensor.evaluate_tick(context)
        assert data.run_requests == [], (sensor.name, [r.partition_key or r.tags for r in data.run_requests])


def test_automation_conditions_request_nothing_and_their_sensor_starts_stopped(run):
    defs, instance, _, _ = run
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert result.total_requested == 0, [r.key.to_user_string() for r in result.results if r.true_subset.size]
    automation = [
        s for s in defs.get_repository_def().sensor_defs if isinstance(s, dg.AutomationConditionSensorDefinition)
    ]
    assert automation and all(s.default_status == dg.DefaultSensorStatus.STOPPED for s in automation)


def test_every_schedule_targets_an_unpartitioned_job(run):
    """A schedule over a partitioned job would re-request its last partition every day; the only schedule
    is the daily ingest (new data in, nothing redone)."""
    defs, _, _, _ = run
    schedules = defs.get_repository_def().schedule_defs
    assert [s.name for s in schedules] == ["daily_ingest_schedule"]
    assert all(s.job.partitions_def is None for s in schedules)


def test_nothing_beton_run_built_is_stale(run):
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._core.loader import LoadingContextForTest

    defs, instance, _, _ = run
    graph = defs.resolve_asset_graph()
    resolver = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))
    stale = {
        key.to_user_string(): [c.reason for c in resolver.get_stale_causes(key)]
        for key in graph.materializable_asset_keys
        if not graph.get(key).is_partitioned and resolver.get_status(key) == StaleStatus.STALE
    }
    assert stale == {}


def test_daily_partitions_end_at_the_data_as_of(run):
    from beton_pipeline.defs.monitoring.partitions import monitoring_days
    from beton_pipeline.store.daily import data_days

    _, instance, warehouse, summary = run
    with duckdb.connect(str(warehouse), read_only=True) as con:
        first, as_of = data_days(con)
        latest_event = con.sql("select max(occurred_at)::date from staging.stg_posthog__events").fetchall()[0][0]
    keys = instance.get_dynamic_partitions(monitoring_days.name)
    assert keys[-1] == as_of.isoformat() == summary.monitoring_days[1]
    assert as_of <= latest_event < date.today()
    assert keys == [(first + timedelta(days=i)).isoformat() for i in range((as_of - first).days + 1)]
    materialised = instance.get_materialized_partitions(dg.AssetKey("account_scores"))
    assert materialised == set(keys)  # none "Missing"


def test_each_day_of_beton_run_carries_its_own_numbers(run):
    _, instance, warehouse, _ = run
    _assert_per_day_metadata(instance, warehouse, days=None)


def test_three_days_materialised_carry_their_own_numbers(run, tmp_path):
    defs, _, warehouse, summary = run
    from beton_pipeline.defs.monitoring.partitions import monitoring_days

    first, last = (date.fromisoformat(d) for d in summary.monitoring_days)
    span = (last - first).days
    days = [(first + timedelta(days=span * k // 4)).isoformat() for k in (1, 2, 3)]
    instance = dg.DagsterInstance.local_temp(str(tmp_path))
    instance.add_dynamic_partitions(monitoring_days.name, days)
    job = defs.resolve_job_def("daily_monitoring_job")
    with env_vars(BETON_WAREHOUSE=str(warehouse)):
        result = job.execute_in_process(
            instance=instance,
            tags={"dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[-1]},
        )
    assert result.success
    _assert_per_day_metadata(instance, warehouse, days=days)


def test_a_new_ingest_requests_only_what_it_made_out_of_date(run):
    """After account_outcomes is rebuilt, the cohort sensor recounts the months (their inputs changed), and
    the monitoring sensor requests nothing until the as-of moves (every day is scored already)."""
    defs, instance, warehouse, summary = run
    repo = defs.get_repository_def()

    def tick(name: str):
        with dg.build_sensor_context(instance=instance, resources=_resources(warehouse), definitions=defs) as context:
            return repo.get_sensor_def(name)(context)

    instance.report_runless_asset_event(dg.AssetMaterialization("account_outcomes"))  # last test: it changes state
    cohort = tick("cohort_months_sensor")
    months = sorted(summary.cohort_months)
    assert [request_range(r) for r in cohort.run_requests] == [(months[0], months[-1])]
    # The ingest evaluates the custom signals after the dbt models: until then the day waits for their firings.
    waiting = tick("daily_monitoring_sensor")
    assert isinstance(waiting, dg.SkipReason) and "custom_signals" in waiting.skip_message, waiting
    instance.report_runless_asset_event(dg.AssetMaterialization("custom_signals"))
    monitoring = tick("daily_monitoring_sensor")
    assert isinstance(monitoring, dg.SensorResult) and monitoring.run_requests == [], monitoring


def _assert_per_day_metadata(instance, warehouse, days):
    from beton_pipeline.defs.monitoring.assets import REVENUE_NUMBERS

    scores = _latest_by_partition(instance, "account_scores")
    health = _latest_by_partition(instance, "signal_health")
    days = days or sorted(scores)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        revenue = {
            str(r[0]): r[1:]
            for r in con.sql(f"select day, {', '.join(REVENUE_NUMBERS)} from beton.revenue_metrics").fetchall()
        }
        states = con.sql("select day::varchar, health, count(*) from beton.signal_health group by all").fetchall()
    for day in days:
        numbers = tuple(scores[day][name].value for name in REVENUE_NUMBERS)
        assert numbers == pytest.approx(tuple(float("nan") if v is None else v for v in revenue[day]), nan_ok=True)
        expected = {f"signals_{h}": n for d, h, n in states if d == day}
        got = {k: v.value for k, v in health[day].items() if k.startswith("signals_") and v.value}
        assert got == expected, day
    plotted = {tuple(scores[d][n].value for n in ("accounts_in_play", "leads_surfaced")) for d in days}
    assert len(plotted) > 1  # not one day's numbers on every partition


def _latest_by_partition(instance, asset: str) -> dict[str, dict]:
    records = instance.fetch_materializations(dg.AssetKey(asset), limit=10_000).records
    out: dict[str, dict] = {}
    for record in records:  # newest first
        out.setdefault(record.partition_key, record.asset_materialization.metadata)
    return out
