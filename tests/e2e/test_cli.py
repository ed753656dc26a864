"""The `beton` command, run as a user runs it (the installed console script, in a subprocess)."""

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb

BETON = str(Path(sys.executable).parent / "beton")


def beton(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [BETON, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def test_help_lists_the_commands():
    done = beton("--help")
    assert done.returncode == 0
    for command in ("demo", "run", "signals"):
        assert command in done.stdout


def test_demo_writes_a_contract_directory(tmp_path):
    done = beton("demo", "--accounts", "500", "--seed", "3", "--out", str(tmp_path / "src"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "src" / "TRUTH.json").exists()
    assert any((tmp_path / "src" / "events").glob("*.parquet"))


def test_signals_json_lists_enabled_first(warehouse_env):
    done = beton("signals", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert rows and rows[0]["enabled"] is True
    flags = [r["enabled"] for r in rows]
    assert flags == sorted(flags, reverse=True)
    assert all(r["is_family_best"] for r in rows)
    assert len(json.loads(beton("signals", "--json", "--all").stdout)) > len(rows)


def test_signals_without_a_warehouse_is_a_one_line_error(tmp_path):
    done = beton("signals", env={"BETON_WAREHOUSE": str(tmp_path / "none.duckdb")})
    assert done.returncode == 1
    assert "no warehouse yet" in done.stderr and done.stderr.count("\n") <= 2


def test_invalid_settings_name_the_file_and_field(tmp_path):
    bad = tmp_path / "beton.yaml"
    bad.write_text("thresholds:\n  fdr_alpha: 2\n")
    done = beton("run", env={"BETON_CONFIG": str(bad), "BETON_WAREHOUSE": str(tmp_path / "w.duckdb")})
    assert done.returncode == 1
    assert str(bad) in done.stderr and "thresholds.fdr_alpha" in done.stderr


def test_disable_survives_rediscovery_and_enable_restores(warehouse_env):
    run = warehouse_env
    with duckdb.connect(str(run.warehouse), read_only=True) as con:
        signal_id = con.sql("select signal_id from beton.signals where enabled order by q_value limit 1").fetchall()[0][
            0
        ]
    done = beton("signals", "disable", signal_id, "--reason", "sales says it is seasonal", "--by", "ana")
    assert done.returncode == 0, done.stderr

    from beton_pipeline.definitions import defs

    defs.resolve_job_def("discovery_job").execute_in_process(instance=run.instance)
    with duckdb.connect(str(run.warehouse), read_only=True) as con:
        enabled, override = con.sql(
            "select enabled, enabled_override from beton.signals where signal_id = ?", params=[signal_id]
        ).fetchall()[0]
        who = con.sql(
            "select changed_by, reason from beton.signal_overrides where signal_id = ?", params=[signal_id]
        ).fetchall()
    assert (enabled, override) == (False, False)
    assert who == [("ana", "sales says it is seasonal")]
    assert beton("signals", "enable", signal_id).returncode == 0
    with duckdb.connect(str(run.warehouse), read_only=True) as con:
        assert con.sql("select enabled from beton.signals where signal_id = ?", params=[signal_id]).fetchall() == [
            (True,)
        ]
    assert beton("signals", "enable", "sig_doesnotexist").returncode == 1


def test_rematerialising_a_cohort_partition_is_idempotent(warehouse_env):
    run = warehouse_env
    from beton_pipeline.definitions import defs

    month = run.summary.cohort_months[0]
    job = defs.resolve_implicit_global_asset_job_def()

    def snapshot():
        with duckdb.connect(str(run.warehouse), read_only=True) as con:
            return con.sql("select * from beton.signal_cohort_counts order by cohort_month, key").fetchall()

    before = snapshot()
    for _ in range(3):
        job.execute_in_process(
            instance=run.instance, partition_key=month, asset_selection=[dg.AssetKey("signal_cohort_counts")]
        )
    assert snapshot() == before
