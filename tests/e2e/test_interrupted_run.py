"""An interrupted `beton run` (killed mid-way) followed by a re-run leaves no duplicate and the same
tables as an uninterrupted run: every write replaces exactly what it owns, in one transaction.

The uninterrupted run is the shared live run (`tests/e2e/conftest.py`: 600 accounts, 6 months, playbooks
sending to local fakes; every compared table has rows); the interrupted run uses the same export and
settings with fakes of its own. The kill lands after the ingest has written `raw_events` (watched in the
Dagster instance, not guessed from the clock), so the re-run starts on a warehouse holding a part of a
run, and must end with the very row counts of the clean run and no duplicate key in any table."""

import os
import signal
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from tests.e2e.conftest import BETON, RUN_TIMEOUT, live_destinations, live_env
from tests.e2e.servers import ServerError, wait_until

pytestmark = pytest.mark.slow(seconds=180)  # with the shared live run

KILL_AFTER_TIMEOUT = 900
"""Generous bound for the ingest to write `raw_events` on a loaded machine (it takes seconds when idle)."""

UNIQUE_KEYS = {
    "raw.raw_events": "uuid",
    "beton.signals": "signal_id",
    "beton.signal_cohort_counts": "cohort_month, key",
    "beton.signal_health": "day, signal_id",
    "beton.account_scores": "day, account_id",
    "beton.signal_backtests": "signal_id, cohort_month",
    "beton.playbook_actions": "idempotency_key",
}


def _counts(warehouse: str) -> dict[str, int]:
    with duckdb.connect(warehouse, read_only=True) as con:
        return {t: con.sql(f"select count(*) from {t}").fetchall()[0][0] for t in UNIQUE_KEYS}


def _kill_once_raw_events_is_written(proc: subprocess.Popen, home: Path) -> None:
    """Wait (bounded) until the run's event log records a materialization of raw_events, then SIGKILL the run.

    The event log's index file is read with a read-only SQLite connection, never through a Dagster
    instance: opening an instance initialises its storage, and two processes initialising the same
    SQLite files at once can stamp two schema versions into one of them (Dagster's alembic table), which
    the re-run then refuses to open. Until the file and its table exist, the wait goes on."""
    index = home / "history" / "runs" / "index.db"

    def raw_events_written() -> bool:
        if proc.poll() is not None:
            raise ServerError(f"beton run exited {proc.returncode} before it could be interrupted")
        if not index.exists():
            return False
        try:
            with closing(sqlite3.connect(f"{index.as_uri()}?mode=ro", uri=True, timeout=1)) as con:
                row = con.execute(
                    "select count(*) from event_logs where dagster_event_type = 'ASSET_MATERIALIZATION' "
                    "and asset_key = ?",
                    [dg.AssetKey("raw_events").to_string()],
                ).fetchone()
        except sqlite3.OperationalError:  # the run is still creating the file or its tables
            return False
        return row[0] > 0

    wait_until(raw_events_written, KILL_AFTER_TIMEOUT, "beton run to write raw_events", interval=0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_rerun_after_a_kill_gives_the_tables_of_a_clean_run(live_run, tmp_path):
    with live_destinations() as fakes:
        interrupted = live_env(tmp_path, live_run.source, "interrupted", fakes)
        proc = subprocess.Popen(
            [BETON, "run"],
            env=interrupted,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd=tmp_path,
        )
        try:
            _kill_once_raw_events_is_written(proc, Path(interrupted["DAGSTER_HOME"]))
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        rerun = subprocess.run(
            [BETON, "run"], env=interrupted, capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=tmp_path
        )
        assert rerun.returncode == 0, rerun.stderr[-2000:]

    with duckdb.connect(interrupted["BETON_WAREHOUSE"], read_only=True) as con:
        for table, key in UNIQUE_KEYS.items():
            dupes = con.sql(
                f"select count(*) from (select {key} from {table} group by {key} having count(*) > 1)"
            ).fetchall()[0][0]
            assert dupes == 0, f"{table} has duplicate {key}"
    clean_counts = _counts(live_run.warehouse)
    assert all(clean_counts.values()), f"a compared table is empty, so the comparison proves nothing: {clean_counts}"
    assert _counts(interrupted["BETON_WAREHOUSE"]) == clean_counts
