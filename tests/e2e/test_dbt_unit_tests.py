"""dbt's unit tests (the models' SQL on fixed inputs: identity resolution, windows, annualisation, exposures)
and its `contract` data tests (the staging models' keys unique and present, required columns non-null,
allowed values: what ingest guarantees).

`beton run` builds the models and their other data tests, but neither of these: unit tests check the SQL, not
the data, so they belong in the test suite, as dbt advises; the contract tests restate ingest's guarantees,
which the ingest tests check row by row, and `unique(event_id)` alone scans every event of every run. They run
here once, on a copy of the session run's warehouse: a unit test needs its models' parents to exist, to read
their column types."""

import json
import os
import shutil
import subprocess
from pathlib import Path

from beton_pipeline.dbt_project import beton_dbt_project, dbt_executable, run_target_path


def test_every_dbt_unit_test_and_contract_test_passes(pipeline_run, tmp_path):
    warehouse = tmp_path / "warehouse.duckdb"
    shutil.copy(pipeline_run.warehouse, warehouse)
    project = Path(beton_dbt_project.project_dir)
    target = tmp_path / "target"
    done = subprocess.run(
        [
            dbt_executable(),
            "test",
            "--select",
            "test_type:unit tag:contract",
            "--project-dir",
            str(project),
            "--profiles-dir",
            str(project),
            "--target-path",
            str(target),
            "--log-path",
            str(tmp_path / "logs"),
        ],
        env=os.environ | {"BETON_WAREHOUSE": str(warehouse), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    manifest = json.loads((target / "manifest.json").read_text())
    results = json.loads((target / "run_results.json").read_text())["results"]
    passed = {r["unique_id"] for r in results if r["status"] == "pass"}
    assert manifest["unit_tests"], "the dbt project has no unit test: this test would prove nothing"
    assert set(manifest["unit_tests"]) <= passed, sorted(set(manifest["unit_tests"]) - passed)
    contract = {uid for uid, node in manifest["nodes"].items() if "contract" in node.get("tags", [])}
    staging = {
        uid
        for uid, node in manifest["nodes"].items()
        if node["resource_type"] == "test" and node["original_file_path"].startswith("models/staging/")
    }
    assert contract and contract == staging, sorted(contract ^ staging)
    assert contract <= passed, sorted(contract - passed)


def test_the_pipeline_build_runs_the_other_data_tests_but_not_the_contract_ones(pipeline_run):
    """The session run's dbt build (its run_results.json in the warehouse's target folder) ran the models'
    data tests and none tagged `contract`."""
    target = run_target_path(pipeline_run.warehouse)
    manifest = json.loads((target / "manifest.json").read_text())
    ran = {r["unique_id"] for r in json.loads((target / "run_results.json").read_text())["results"]}
    tests = {uid for uid, node in manifest["nodes"].items() if node["resource_type"] == "test"}
    contract = {uid for uid in tests if "contract" in manifest["nodes"][uid].get("tags", [])}
    assert contract and not (ran & contract), sorted(ran & contract)
    assert tests - contract <= ran, sorted(tests - contract - ran)
