"""`make ui` without an activated venv: `dagster dev`, started by its absolute path from a shell whose PATH
has no `dbt` (no venv bin, no VIRTUAL_ENV), loads the code location `beton`.

The location showed *Failed* ("The dbt executable 'dbt' was not found on PATH") when dagster-dbt's
`prepare_if_dev()` ran `dbt parse` from PATH on every load under `dagster dev`. The location now parses only
when its manifest is stale (`ensure_manifest`, through the venv's dbt that `put_venv_dbt_on_path` makes
findable: tests/defs/test_dbt_manifest.py), so here, on a fresh manifest, it loads without running dbt.
"""

import os
import shutil
import time

import pytest

from tests.e2e.servers import (
    LOCALHOST,
    PROJECT_ROOT,
    VENV_BIN,
    WORKSPACE,
    ServerError,
    free_port,
    graphql,
    process_tree_cpu_seconds,
    start_server,
    stop_server,
    wait_while_progressing,
)

pytestmark = pytest.mark.slow(seconds=70)

LOAD_IDLE_TIMEOUT = 180
"""Seconds without progress (no new output from `dagster dev` and no CPU second used by its processes)
before the load counts as stuck. Loading (imports + dbt parse) writes nothing for minutes on a loaded
machine, so the log alone is not enough to tell slow from stuck."""
LOAD_TOTAL_TIMEOUT = 900

EXPECTED_JOBS = {"daily_ingest_job", "discovery_job", "daily_monitoring_job"}

WORKSPACE_QUERY = """
{ workspaceOrError { __typename
    ... on PythonError { message }
    ... on Workspace { locationEntries { name loadStatus
        locationOrLoadError { __typename
            ... on PythonError { message }
            ... on RepositoryLocation { repositories { name jobs { name } } } } } } } }
"""


def path_without_dbt() -> str:
    """This process's PATH without the venv's bin and without any directory that holds a `dbt`."""
    kept = [
        d
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if d
        and os.path.realpath(d) != os.path.realpath(VENV_BIN)
        and not any(os.path.exists(os.path.join(d, exe)) for exe in ("dbt", "dbtf"))
    ]
    return os.pathsep.join(kept or ["/usr/bin", "/bin"])


def test_dagster_dev_loads_beton_without_venv_on_path(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    # The project's instance settings, plus a longer code-server start-up bound: Dagster's default (180 s)
    # expires on a machine at load 25 while the location imports and parses dbt, and dagster dev exits.
    (home / "dagster.yaml").write_text(
        (PROJECT_ROOT / "dagster.yaml").read_text()
        + f"\ncode_servers:\n  local_startup_timeout: {LOAD_TOTAL_TIMEOUT}\n"
    )
    path = path_without_dbt()
    assert shutil.which("dbt", path=path) is None, f"test set-up: a dbt is still on PATH={path}"
    drop = {"VIRTUAL_ENV", "PATH", "DAGSTER_PG_HOST", "BETON_SOURCE_DIR", "BETON_CONFIG"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env |= {"PATH": path, "DAGSTER_HOME": str(home), "BETON_WAREHOUSE": str(tmp_path / "warehouse.duckdb")}

    port = free_port()
    server = start_server(
        "dagster-dev",
        [str(VENV_BIN / "dagster"), "dev", "-h", LOCALHOST, "-p", str(port), "-w", str(WORKSPACE)],
        env,
        tmp_path / "logs",
        url=f"http://{LOCALHOST}:{port}/graphql",
    )
    try:

        def beton_entry() -> dict | None:
            """The `beton` location once it has loaded; a load error is a definite failure."""
            if server.process.poll() is not None:
                raise ServerError(f"dagster dev exited {server.process.returncode}")
            workspace = graphql(server.url, WORKSPACE_QUERY, timeout=10)["workspaceOrError"]
            assert workspace["__typename"] == "Workspace", workspace
            entry = next((e for e in workspace["locationEntries"] if e["name"] == "beton"), None)
            if entry is None or entry["loadStatus"] != "LOADED":
                return None
            loaded = entry["locationOrLoadError"]
            if not loaded or loaded["__typename"] == "PythonError":
                raise AssertionError(f"code location beton failed to load: {(loaded or {}).get('message', loaded)}")
            return entry

        def progress() -> tuple[int, int]:
            log_size = server.log_path.stat().st_size if server.log_path.exists() else 0
            return log_size, int(process_tree_cpu_seconds(server.pid))

        try:
            entry = wait_while_progressing(
                beton_entry,
                progress,
                f"dagster dev on {server.url} to load code location beton",
                idle_timeout=LOAD_IDLE_TIMEOUT,
                total_timeout=LOAD_TOTAL_TIMEOUT,
            )
        except (ServerError, AssertionError) as exc:
            raise AssertionError(f"{exc}\n--- {server.log_path} ---\n{server.log_tail()}") from None

        assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry
        jobs = {j["name"] for repo in entry["locationOrLoadError"]["repositories"] for j in repo["jobs"]}
        assert jobs >= EXPECTED_JOBS, f"jobs missing from beton: {sorted(EXPECTED_JOBS - jobs)} (has {sorted(jobs)})"
    finally:
        leftovers = stop_server(server)
    assert server.process.returncode is not None, "dagster dev did not exit"
    assert leftovers == [], f"dagster dev left processes behind: {leftovers}"


def test_the_wait_counts_progress_while_the_server_does_not_answer_yet():
    """The load wait above: a server that refuses connections while it loads, but whose progress moves, is
    waited for past the idle timeout; once progress stops, the wait gives up after the idle timeout."""
    start = time.monotonic()

    def answers_after(seconds: float):
        def check() -> bool:
            if time.monotonic() - start < seconds:
                raise ConnectionRefusedError("not listening yet")
            return True

        return check

    def moving_for(seconds: float):
        return lambda: round(min(time.monotonic() - start, seconds), 2)

    assert wait_while_progressing(answers_after(1.0), moving_for(2.0), "a loading server", 0.3, 10, interval=0.05)
    start = time.monotonic()
    with pytest.raises(ServerError, match="no progress for"):
        wait_while_progressing(answers_after(5.0), moving_for(0.5), "a stuck server", 0.3, 10, interval=0.05)
    assert time.monotonic() - start < 2.0
