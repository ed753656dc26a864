"""dbt models as assets: staging → intermediate → marts, grouped by their folder.

The same asset builds them on either engine (`warehouse.engine`): on DuckDB, in the warehouse file; on Spark,
from the raw tables exported to Parquet, after which every relation Spark built is copied into the warehouse
file (`store.transform`). Everything downstream reads that file, so the graph is the same for both."""

import importlib.util
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, dbt_assets

from beton_pipeline.dbt_project import beton_dbt_project, run_target_path
from beton_pipeline.defs.resources import (
    WAREHOUSE_POOL,
    SettingsResource,
    WarehouseResource,
    env_set,
    warehouse_env,
)
from beton_pipeline.settings import spark_dir
from beton_pipeline.store import transform as transform_store


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

SPARK_TARGET = "spark"
"""The profile's target (dbt_project/profiles.yml) of `warehouse.engine: spark`."""


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
    config = settings.load()
    target = run_target_path(warehouse.resolved_path)
    if config.warehouse.engine == "spark":
        yield from build_on_spark(context, dbt, warehouse, config.dbt_vars(), target)
        return
    with warehouse_env(warehouse):
        yield from dbt.cli(build_args(config.dbt_vars()), context=context, target_path=target).stream()


def build_args(dbt_vars: dict) -> list[str]:
    """`dbt build` of the selection without unit tests and contract tests (--exclude again for a subset of the
    models: dagster-dbt then selects them by name, not by the decorator), with beton.yaml's values as --vars."""
    args = ["build", "--exclude-resource-type", "unit_test", "--exclude", CONTRACT_TESTS]
    return [*args, "--vars", json.dumps(dbt_vars), "--log-level-file", "info"]


def build_on_spark(
    context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: WarehouseResource, dbt_vars: dict, target: Path
) -> Iterator:
    """The selected models built by Spark, then copied into the warehouse file.

    1. The raw tables the models read go out as Parquet to the warehouse's Spark folder (`settings.spark_dir`),
       where the profile's on-run-start hook registers them as Spark tables (macros/raw_tables.sql).
    2. `dbt build --target spark`: Spark in local mode inside dbt's process, its tables and metastore in the same
       folder (kept between runs, so a build of some models reads the others from an earlier one).
    3. Every model and seed that built is copied into the warehouse file in one transaction, and only then are
       dbt's events (materializations, test results) reported: a materialized model is one the Python stages
       can read. A model that failed keeps the warehouse's previous version, and the step fails as on DuckDB."""
    problem = spark_unavailable()
    if problem:
        raise dg.Failure(description=problem)
    folder = spark_dir(warehouse.resolved_path)
    with warehouse.connect(read_only=True) as con:
        exported = transform_store.export_raw_tables(con, raw_source_tables(), folder / "raw")
    args = [*build_args({**dbt_vars, "spark_raw_tables": exported}), "--target", SPARK_TARGET]
    (target / "run_results.json").unlink(missing_ok=True)  # the previous build's: this one may fail before writing
    with env_set("BETON_SPARK_DIR", str(folder)):
        invocation = dbt.cli(args, context=context, target_path=target, raise_on_error=False)
        events = list(invocation.stream())
    built = built_relations(target) if (target / "run_results.json").exists() else []  # none: dbt failed to start
    with warehouse.connect() as con:
        published = transform_store.publish_relations(con, folder / "warehouse", built)
    context.log.info(f"Spark built {len(built)} relations: {sum(published.values())} rows copied into the warehouse")
    yield from events
    error = invocation.get_error()
    if error is not None:
        raise error


def spark_unavailable() -> str | None:
    """Why the Spark engine cannot run here (dbt-spark, pyspark or Java missing), or None."""
    missing = [name for name in ("dbt.adapters.spark", "pyspark") if importlib.util.find_spec(name) is None]
    if missing:
        return (
            f"warehouse.engine is spark, but {' and '.join(missing)} is not installed: install beton's spark extra "
            "(uv sync --extra spark, or pip install 'beton[spark]'), or set warehouse.engine: duckdb (BETON_ENGINE)."
        )
    java_home = os.environ.get("JAVA_HOME")
    if not (java_home and (Path(java_home) / "bin" / "java").exists()) and shutil.which("java") is None:
        return (
            "warehouse.engine is spark, but no Java runtime was found (JAVA_HOME, or java on PATH): Spark 3.5 "
            "needs Java 17 (e.g. apt-get install openjdk-17-jre-headless), or set warehouse.engine: duckdb."
        )
    return None


def raw_source_tables() -> list[str]:
    """The raw tables the models read: the `raw` source's tables in the dbt manifest."""
    manifest = json.loads(Path(beton_dbt_project.manifest_path).read_text())
    return sorted(node["name"] for node in manifest["sources"].values() if node["source_name"] == "raw")


def built_relations(target: Path) -> list[transform_store.Relation]:
    """The models and seeds the dbt build whose artifacts are in `target` built (status success), as relations."""
    run_results = json.loads((target / "run_results.json").read_text())
    manifest = json.loads((target / "manifest.json").read_text())
    built = []
    for result in run_results["results"]:
        node = manifest["nodes"].get(result["unique_id"], {})
        if result["status"] == "success" and node.get("resource_type") in ("model", "seed"):
            built.append(transform_store.Relation(node["schema"], node["alias"]))
    return built
