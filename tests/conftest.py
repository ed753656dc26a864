"""Shared fixtures. The whole graph is materialised once per session on a generated demo dataset
(dbt runs cost seconds each), and the end-to-end tests read the warehouse it leaves."""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

DEMO_ACCOUNTS = 8000
"""Large enough that every planted signal has power in the discovery and holdout cohorts."""


@dataclass(frozen=True)
class PipelineRun:
    source_dir: Path
    warehouse: Path
    truth: dict
    summary: object
    instance: dg.DagsterInstance


class env_vars:
    """Set environment variables for a block (session fixtures cannot use monkeypatch)."""

    def __init__(self, **values: str):
        self.values, self.saved = values, {}

    def __enter__(self):
        for k, v in self.values.items():
            self.saved[k] = os.environ.get(k)
            os.environ[k] = v

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def demo_source(tmp_path_factory) -> Path:
    from beton_pipeline.sources.demo import generate_demo

    out = tmp_path_factory.mktemp("demo_source")
    generate_demo(out, n_accounts=DEMO_ACCOUNTS, seed=7)
    return out


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory, demo_source) -> PipelineRun:
    from beton_pipeline.runner import run_pipeline

    home = tmp_path_factory.mktemp("dagster_home")
    warehouse = tmp_path_factory.mktemp("warehouse") / "warehouse.duckdb"
    with env_vars(BETON_SOURCE_DIR=str(demo_source), BETON_WAREHOUSE=str(warehouse)):
        instance = dg.DagsterInstance.local_temp(str(home))
        summary = run_pipeline(instance)
    return PipelineRun(demo_source, warehouse, json.loads((demo_source / "TRUTH.json").read_text()), summary, instance)


@pytest.fixture
def warehouse_env(pipeline_run):
    """BETON_* pointing at the session's pipeline run, for tests that call the CLI or re-run assets."""
    with env_vars(BETON_SOURCE_DIR=str(pipeline_run.source_dir), BETON_WAREHOUSE=str(pipeline_run.warehouse)):
        yield pipeline_run
