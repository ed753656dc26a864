"""The warehouse file locked by another process: bounded waiting, then a clear failure; released, work goes on."""

import subprocess
import sys
import time

import dagster as dg
import pytest

from beton_pipeline.warehouse import WarehouseLockedError, connect

HOLDER = """
import duckdb, sys, time
con = duckdb.connect(sys.argv[1])
con.execute("create table if not exists t as select 1 as x")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_lock(path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_locked_warehouse_fails_with_a_clear_error_after_a_bounded_wait(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    holder = hold_lock(path, 30)
    try:
        started = time.monotonic()
        with pytest.raises(WarehouseLockedError, match="locked by another process"), connect(path, wait_seconds=1.0):
            pass
        assert time.monotonic() - started < 10
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_writer_waits_for_the_lock_to_be_released(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    holder = hold_lock(path, 1.5)
    try:
        with connect(path, wait_seconds=20.0) as con:
            assert con.sql("select x from t").fetchall() == [(1,)]
    finally:
        holder.wait(timeout=20)


def test_ingest_run_on_a_locked_warehouse_fails_and_names_the_lock(tmp_path, monkeypatch):
    from pathlib import Path

    from beton_pipeline.defs.ingest.assets import build_ingest_assets
    from beton_pipeline.defs.resources import SettingsResource, SourceResource, WarehouseResource

    path = tmp_path / "warehouse.duckdb"
    monkeypatch.setenv("BETON_LOCK_WAIT_SECONDS", "1")
    holder = hold_lock(path, 30)
    try:
        fixture = Path(__file__).parent / "fixtures" / "contract_dir"
        result = dg.materialize(
            [a for a in build_ingest_assets({}) if a.key.to_user_string() == "raw_crm_people"],
            resources={
                "warehouse": WarehouseResource(path=str(path)),
                "source": SourceResource(source_dir=str(fixture)),
                "settings": SettingsResource(),
            },
            raise_on_error=False,
        )
        assert not result.success
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        assert "locked by another process" in str(failure.event_specific_data.error)
    finally:
        holder.kill()
        holder.wait(timeout=10)
