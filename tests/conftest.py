"""Shared fixtures. The whole graph is materialised once per session on a generated demo dataset
(dbt runs cost seconds each), and the end-to-end tests read the warehouse it leaves.

`make test` runs the suite on two pytest-xdist workers (`-n 2 --dist loadgroup`). Every test that uses
the session run is put in one xdist group (below), so one worker materialises it once and runs those
tests one after another (some re-materialise into its warehouse); the other worker takes the rest."""

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from beton_pipeline.settings import PROJECT_ROOT

SESSION_RUN_GROUP = "session_pipeline_run"
"""The xdist group of every test that reads or writes the session run's warehouse or instance."""
SESSION_RUN_FIXTURES = {"pipeline_run", "demo_source", "warehouse_env"}

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


def _shared_fixture_group(item) -> str | None:
    """The xdist group of a test that uses an expensive fixture of this project (one not scoped to the test):
    the fixture's name for a session-scoped one (it may serve several modules, e.g. the live run of
    tests/e2e/conftest.py), else the test's module. None for a test that shares nothing."""
    info = getattr(item, "_fixtureinfo", None)
    module_scoped = False
    for name, defs in sorted(info.name2fixturedefs.items()) if info else ():
        fixture = defs[-1]
        if fixture.scope == "function" or not getattr(fixture.func, "__module__", "").startswith("tests."):
            continue
        if fixture.scope == "session":
            return f"session_fixture_{name}"
        module_scoped = True
    return item.nodeid.split("::", 1)[0] if module_scoped else None


def _expected_seconds(item) -> float:
    """The `slow` mark's `seconds`: what the test's group (the test with its shared fixture, or all the tests
    sharing it) takes on 2 idle cores, as last measured; 0 when not given."""
    mark = item.get_closest_marker("slow")
    return float(mark.kwargs.get("seconds", 0)) if mark else 0.0


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the group marks
def pytest_collection_modifyitems(config, items):
    """xdist groups, so that no expensive fixture is built twice: the tests that use the session run share
    one group; the tests that share another non-function fixture of this project share one per fixture
    (session scope) or per module. Everything else is spread over the workers test by test.

    Then the longest work first (`make test` passes `--no-loadscope-reorder`, so xdist hands out groups in
    this order): the session run's group, then `slow` tests by their expected seconds, then the rest in
    collection order. Two workers taking the longest jobs first end close together (longest processing
    time first, Graham 1969); a long end-to-end test handed out last would leave one worker idle for minutes."""
    for item in items:
        if SESSION_RUN_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group(SESSION_RUN_GROUP))
        elif group := _shared_fixture_group(item):
            item.add_marker(pytest.mark.xdist_group(group))
    group_cost: dict[str, float] = {}
    for item in items:
        group = _group_of(item)
        group_cost[group] = max(group_cost.get(group, 0.0), _expected_seconds(item))
    items.sort(key=lambda item: (_group_of(item) != SESSION_RUN_GROUP, -group_cost[_group_of(item)]))  # stable


def _group_of(item) -> str:
    """The xdist group of a test (its node id when it has none: xdist then schedules it alone)."""
    mark = item.get_closest_marker("xdist_group")
    return (mark.args[0] if mark.args else mark.kwargs.get("name", item.nodeid)) if mark else item.nodeid


def project_instance(home: Path) -> dg.DagsterInstance:
    """A Dagster instance in `home` configured by the project's dagster.yaml, as `make run` builds it (call
    with DAGSTER_HOME set to `home`: the event log's folder is relative to it)."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    return dg.DagsterInstance.local_temp(str(home))


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
    with env_vars(BETON_SOURCE_DIR=str(demo_source), BETON_WAREHOUSE=str(warehouse), DAGSTER_HOME=str(home)):
        instance = project_instance(home)
        summary = run_pipeline(instance)
    return PipelineRun(demo_source, warehouse, json.loads((demo_source / "TRUTH.json").read_text()), summary, instance)


@pytest.fixture
def warehouse_env(pipeline_run):
    """BETON_* pointing at the session's pipeline run, for tests that call the CLI or re-run assets."""
    with env_vars(BETON_SOURCE_DIR=str(pipeline_run.source_dir), BETON_WAREHOUSE=str(pipeline_run.warehouse)):
        yield pipeline_run
