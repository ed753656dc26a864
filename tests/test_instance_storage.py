"""The batched SQLite event log (beton_pipeline/instance_storage.py) stores what Dagster's own SQLite event log
stores: the same runs over a range of dynamic partitions, with per-partition metadata and an asset check,
give the same events, partitions, metadata and asset records in both; and it really writes in batches."""

import shutil
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest
import yaml

from beton_pipeline.instance_storage import BatchedSqliteEventLogStorage
from beton_pipeline.settings import PROJECT_ROOT

days = dg.DynamicPartitionsDefinition(name="days")
DAYS = [f"2025-01-{d:02d}" for d in range(1, 31)]


@dg.asset(
    partitions_def=days,
    backfill_policy=dg.BackfillPolicy.single_run(),
    check_specs=[dg.AssetCheckSpec("ok", asset="scores")],
)
def scores(context: dg.AssetExecutionContext):
    for key in context.partition_keys:
        context.add_asset_metadata({"day": key, "value": int(key[-2:]) * 3}, partition_key=key)
    yield dg.MaterializeResult(metadata={"days_in_run": len(context.partition_keys)})
    yield dg.AssetCheckResult(check_name="ok", passed=True)


@dg.asset(deps=[scores])
def summary() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"rows": 1})


JOB = dg.define_asset_job("scores_job", selection=[scores, summary], partitions_def=days)
DEFS = dg.Definitions(assets=[scores, summary], jobs=[JOB])


def _run_twice(instance: dg.DagsterInstance) -> list[str]:
    instance.add_dynamic_partitions(days.name, DAYS)
    job = DEFS.resolve_job_def("scores_job")
    run_ids = []
    for first, last in ((DAYS[0], DAYS[-1]), (DAYS[10], DAYS[19])):  # a full range, then a re-run of a part
        tags = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
        result = job.execute_in_process(instance=instance, tags=tags)
        assert result.success
        run_ids.append(result.run_id)
    return run_ids


def _stored(instance: dg.DagsterInstance, run_ids: list[str]) -> dict:
    """What the event log holds, without storage ids, run ids and timestamps (they differ by construction)."""
    key = dg.AssetKey("scores")
    by_partition = instance.get_latest_storage_id_by_partition(key, dg.DagsterEventType.ASSET_MATERIALIZATION)
    metadata = {}
    for record in instance.fetch_materializations(key, limit=1000).records:
        mat = record.asset_materialization
        metadata.setdefault(mat.partition, {k: v.value for k, v in mat.metadata.items()})
    planned = instance.fetch_planned_materializations(key, limit=1000).records
    entry = instance.get_asset_records([key])[0].asset_entry
    return {
        "events per run": [
            sorted(
                Counter(
                    r.event_log_entry.dagster_event_type for r in instance.get_records_for_run(run_id).records
                ).items()
            )
            for run_id in run_ids
        ],
        "partitions": sorted(by_partition),
        "partition order": [p for p, _ in sorted(by_partition.items(), key=lambda kv: kv[1])],
        "metadata": metadata,
        "planned": sorted(Counter(r.partition_key for r in planned).items()),
        "last materialization": entry.last_materialization.dagster_event.partition,
        "check": instance.event_log_storage.get_latest_asset_check_execution_by_key([dg.AssetCheckKey(key, "ok")])
        != {},
        "summary rows": instance.fetch_materializations(dg.AssetKey("summary"), limit=10)
        .records[0]
        .asset_materialization.metadata["rows"]
        .value,
    }


@pytest.fixture
def batched_instance(tmp_path, monkeypatch) -> dg.DagsterInstance:
    """An instance from the project's dagster.yaml (DAGSTER_HOME = its folder), as `beton run` and `make ui` build it."""
    home = tmp_path / "batched"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")  # what the storage sets; restored after the test
    instance = dg.DagsterInstance.get()
    yield instance
    instance.dispose()


def test_the_project_instance_uses_the_batched_event_log(batched_instance):
    config = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
    assert config["event_log_storage"]["class"] == BatchedSqliteEventLogStorage.__name__
    assert isinstance(batched_instance.event_log_storage, BatchedSqliteEventLogStorage)
    assert (
        Path(batched_instance.event_log_storage._base_dir).resolve()
        == (Path(batched_instance.root_directory) / "history" / "runs").resolve()
    )


def test_batched_and_stock_event_logs_store_the_same(batched_instance, tmp_path, monkeypatch):
    (tmp_path / "stock").mkdir()
    stock = dg.DagsterInstance.local_temp(str(tmp_path / "stock"))
    assert type(stock.event_log_storage).__name__ == "SqliteEventLogStorage"

    batches: list[int] = []
    original = BatchedSqliteEventLogStorage._store_asset_stretch

    def counted(self, events):
        batches.append(len(events))
        return original(self, events)

    monkeypatch.setattr(BatchedSqliteEventLogStorage, "_store_asset_stretch", counted)
    batched = _stored(batched_instance, _run_twice(batched_instance))
    expected = _stored(stock, _run_twice(stock))
    stock.dispose()

    assert batched == expected
    assert expected["partitions"] == DAYS and len(expected["metadata"]) == len(DAYS)
    assert expected["metadata"]["2025-01-07"] == {"day": "2025-01-07", "value": 21, "days_in_run": 30}
    # the partitions' planned and materialization events went in stretches, not one by one
    assert max(batches) >= len(DAYS), batches


def test_a_relative_base_dir_needs_dagster_home(monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    with pytest.raises(ValueError, match="DAGSTER_HOME"):
        BatchedSqliteEventLogStorage.from_config_value(None, {"base_dir": "history/runs"})


def test_each_database_file_keeps_one_engine_and_commits_without_a_disk_flush(tmp_path):
    """One engine per file, reused (Dagster's log built and disposed one per write), at most ENGINE_CACHE
    kept; connections in WAL mode with synchronous = NORMAL (1); wiped files are initialised again."""
    from beton_pipeline import instance_storage

    storage = BatchedSqliteEventLogStorage(str(tmp_path / "runs"))
    try:
        with storage.index_connection() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        index_engine = storage._engines["index"]
        with storage.index_connection():
            pass
        assert storage._engines["index"] is index_engine
        for i in range(instance_storage.ENGINE_CACHE + 3):
            with storage.run_connection(f"run-{i}") as conn:
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1
        assert len(storage._engines) == instance_storage.ENGINE_CACHE
        assert "run-0" not in storage._engines and f"run-{instance_storage.ENGINE_CACHE + 2}" in storage._engines
        storage.wipe()
        with storage.run_connection("run-1") as conn:  # its file was deleted: created and initialised again
            assert conn.exec_driver_sql("select count(*) from event_logs").scalar() == 0
    finally:
        storage.dispose()
    assert storage._engines == {}


def test_a_table_found_is_remembered_and_dynamic_partitions_survive_a_wipe(tmp_path):
    """Dynamic-partitions reads check their table first: a table found is not looked up again (no SQL), a
    missing one is looked up every time, and after `wipe` the partitions start empty, not broken."""
    from sqlalchemy import event

    storage = BatchedSqliteEventLogStorage(str(tmp_path / "runs"))
    statements: list[str] = []
    try:
        engine = storage._shard_engine("index")
        event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
        assert storage.has_table("dynamic_partitions")
        looked_up = len(statements)
        assert looked_up > 0
        assert storage.has_table("dynamic_partitions") and len(statements) == looked_up
        assert not storage.has_table("no_such_table") and not storage.has_table("no_such_table")
        assert len(statements) > looked_up
        storage.add_dynamic_partitions("days", ["2025-01-01", "2025-01-02"])
        assert storage.get_dynamic_partitions("days") == ["2025-01-01", "2025-01-02"]
        assert storage.has_dynamic_partition("days", "2025-01-02")
        storage.wipe()
        assert storage.get_dynamic_partitions("days") == []
        storage.add_dynamic_partitions("days", ["2025-02-01"])
        assert storage.has_dynamic_partition("days", "2025-02-01")
    finally:
        storage.dispose()
