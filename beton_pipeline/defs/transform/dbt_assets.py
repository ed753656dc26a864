"""dbt models as assets: staging → intermediate → marts, grouped by their folder."""

import json
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, dbt_assets

from beton_pipeline.dbt_project import beton_dbt_project, run_target_path
from beton_pipeline.defs.resources import WAREHOUSE_POOL, SettingsResource, WarehouseResource, warehouse_env


class BetonDbtTranslator(DagsterDbtTranslator):
    """Asset keys are model names; groups follow the folders (staging, intermediate, marts)."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            return super().get_asset_key(dbt_resource_props)
        return dg.AssetKey(dbt_resource_props["name"])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        fqn = dbt_resource_props.get("fqn", [])
        if dbt_resource_props["resource_type"] == "seed":
            return "reference"
        return fqn[1] if len(fqn) > 2 else "dbt"


CONTRACT_TESTS = "tag:contract"
"""The staging models' data tests: they restate what ingest guarantees (dbt_project.yml), so the pipeline's
build leaves them out (the test suite runs them)."""


@dbt_assets(
    manifest=beton_dbt_project.manifest_path,
    project=beton_dbt_project,
    exclude=CONTRACT_TESTS,
    dagster_dbt_translator=BetonDbtTranslator(),
    pool=WAREHOUSE_POOL,
)
def beton_dbt_models(
    context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: WarehouseResource, settings: SettingsResource
):
    """Build (run + data tests) the selected dbt models with the windows and thresholds from beton.yaml.

    dbt's unit tests check the models' SQL on fixed inputs, not the data: they run in the test suite
    (tests/e2e/test_dbt_unit_tests.py) and in development, not in every pipeline run (dbt's own advice); so do
    the staging models' `contract` tests, which restate what ingest guarantees.
    Every build into one warehouse uses the same target folder (`run_target_path`: partial parsing, no
    folder left per run); dbt's log file there keeps info-level lines (debug adds every SQL statement and
    ~2 s of CPU per build; the SQL of a failing model is in the Dagster event log)."""
    dbt_vars = json.dumps(settings.load().dbt_vars())
    # --exclude again for a subset of the models (dagster-dbt then selects them by name, not by the decorator).
    args = ["build", "--exclude-resource-type", "unit_test", "--exclude", CONTRACT_TESTS, "--vars", dbt_vars]
    args += ["--log-level-file", "info"]
    target = run_target_path(warehouse.resolved_path)
    with warehouse_env(warehouse):
        yield from dbt.cli(args, context=context, target_path=target).stream()
