"""`beton run` errors as a user sees them: a failed blocking check ends the command with a short paragraph
(which check on which table, the numbers, the setting to change) and a non-zero exit, never a stack trace.
The installed console script runs in a subprocess on a small generated export."""

import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

BIN = Path(sys.executable).parent
SMALL_EXPORT_ACCOUNTS = 300
"""Enough for a valid export; the run stops in its first job, so its size hardly matters."""


@pytest.fixture(scope="module")
def small_export(tmp_path_factory) -> Path:
    from beton_pipeline.sources.demo import generate_demo

    out = tmp_path_factory.mktemp("small_export")
    generate_demo(out, n_accounts=SMALL_EXPORT_ACCOUNTS, seed=3)
    return out


def beton_run(tmp_path: Path, source: Path, config: str, timeout: int = 420) -> subprocess.CompletedProcess:
    (tmp_path / "beton.yaml").write_text(config)
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # dbt lives beside beton
        "BETON_SOURCE_DIR": str(source),
        "BETON_WAREHOUSE": str(tmp_path / "warehouse.duckdb"),
        "BETON_CONFIG": str(tmp_path / "beton.yaml"),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    return subprocess.run(
        [str(BIN / "beton"), "run"], capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path
    )


def test_stale_events_end_beton_run_with_a_paragraph_not_a_trace(tmp_path, small_export):
    # The demo's newest event is late on 2025-12-31; an as-of 19 days later makes the events stale.
    done = beton_run(tmp_path, small_export, "windows:\n  as_of: '2026-01-20T00:00:00Z'\n")
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output and "Stack Trace" not in output, output
    assert "DagsterAssetCheckFailedError" not in output, output
    paragraph = done.stderr[done.stderr.index("error: ") :].strip().splitlines()
    assert len(paragraph) <= 4, paragraph
    text = " ".join(paragraph)
    assert "a blocking check failed" in text
    assert "check 'fresh' on raw_events" in text
    assert re.search(
        r"events: newest timestamp 2025-12-31 \d\d:\d\d is 19\.0 days behind the as-of 2026-01-20 00:00", text
    )
    assert "over the limit of 3 days" in text
    assert "set freshness.max_lag_days.events in beton.yaml" in text
    assert "beton run:" not in done.stdout  # no run summary: the run stopped


# --- The paragraph itself, from in-process runs of tiny jobs ---------------------------------------


@dg.asset
def breaks() -> None:
    raise ValueError("the export has 0 rows\nsecond line of the reason")


@dg.asset(check_specs=[dg.AssetCheckSpec("balanced", asset="guarded", blocking=True)])
def guarded() -> dg.MaterializeResult:
    return dg.MaterializeResult(
        check_results=[dg.AssetCheckResult(check_name="balanced", passed=False, metadata={"rows_read": 7})]
    )


@dg.asset(deps=[guarded])
def after_guarded() -> None:
    """Must not run: the blocking check on `guarded` failed."""


def _run(*assets) -> str:
    from beton_pipeline.runner import RunFailedError, _execute

    job = dg.Definitions(assets=list(assets), jobs=[dg.define_asset_job("tiny_job")]).resolve_job_def("tiny_job")
    with dg.instance_for_test() as instance, pytest.raises(RunFailedError) as failed:
        _execute(job, instance)
    return str(failed.value)


def test_a_failed_step_is_named_with_its_own_error_not_dagsters_wrapper():
    text = _run(breaks)
    assert text.startswith("tiny_job failed (the Dagster event log of run ")
    assert "- step breaks: ValueError: the export has 0 rows\n  second line of the reason" in text
    assert "Traceback" not in text and "DagsterExecutionStepExecutionError" not in text


def test_a_failed_check_without_description_shows_its_metadata():
    text = _run(guarded, after_guarded)
    assert "tiny_job: a blocking check failed, so nothing that depends on it ran" in text
    assert "- check 'balanced' on guarded: failed (rows_read 7)" in text
