"""An interrupted `beton run` (killed mid-way) followed by a re-run leaves no duplicate and the same
tables as an uninterrupted run: every write replaces exactly what it owns, in one transaction."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb

from beton_pipeline.settings import PROJECT_ROOT

BETON = str(Path(sys.executable).parent / "beton")

UNIQUE_KEYS = {
    "raw.raw_events": "uuid",
    "beton.signals": "signal_id",
    "beton.signal_cohort_counts": "cohort_month, key",
    "beton.signal_health": "day, signal_id",
    "beton.account_scores": "day, account_id",
    "beton.signal_backtests": "signal_id, cohort_month",
    "beton.playbook_actions": "idempotency_key",
}


def _env(tmp: Path, source: Path, name: str) -> dict:
    home = tmp / f"home_{name}"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    return {
        **os.environ,
        "BETON_SOURCE_DIR": str(source),
        "BETON_WAREHOUSE": str(tmp / f"{name}.duckdb"),
        "DAGSTER_HOME": str(home),
    }


def _counts(warehouse: str) -> dict[str, int]:
    with duckdb.connect(warehouse, read_only=True) as con:
        return {t: con.sql(f"select count(*) from {t}").fetchall()[0][0] for t in UNIQUE_KEYS}


def test_rerun_after_a_kill_gives_the_tables_of_a_clean_run(tmp_path):
    from beton_pipeline.sources.demo import generate_demo

    source = tmp_path / "source"
    generate_demo(source, n_accounts=1200, seed=5)
    interrupted = _env(tmp_path, source, "interrupted")
    proc = subprocess.Popen(
        [BETON, "run"], env=interrupted, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    time.sleep(20)  # somewhere in ingest or dbt on this machine; any point will do
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    rerun = subprocess.run([BETON, "run"], env=interrupted, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    clean_env = _env(tmp_path, source, "clean")
    clean = subprocess.run([BETON, "run"], env=clean_env, capture_output=True, text=True, timeout=900)
    assert clean.returncode == 0, clean.stderr[-2000:]

    with duckdb.connect(interrupted["BETON_WAREHOUSE"], read_only=True) as con:
        for table, key in UNIQUE_KEYS.items():
            dupes = con.sql(
                f"select count(*) from (select {key} from {table} group by {key} having count(*) > 1)"
            ).fetchall()[0][0]
            assert dupes == 0, f"{table} has duplicate {key}"
    assert _counts(interrupted["BETON_WAREHOUSE"]) == _counts(clean_env["BETON_WAREHOUSE"])
