"""The dbt project as Dagster sees it. Kept apart from `@dbt_assets` so that
`dagster-dbt project prepare-and-package --file beton_pipeline/dbt_project.py` can import it
before the manifest exists."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from dagster._record import replace
from dagster_dbt import DagsterDbtProjectPreparer, DbtCliResource, DbtProject

from beton_pipeline.settings import PROJECT_ROOT


def dbt_executable() -> str:
    """The `dbt` installed beside this Python (the project's venv), else the one on PATH.

    `dagster dev` started by absolute path from a shell without the activated venv has no `dbt` on PATH;
    dagster-dbt's default (`dbt` looked up on PATH) would then fail the code location."""
    beside = Path(sys.executable).parent / "dbt"
    return str(beside) if beside.exists() else (shutil.which("dbt") or "dbt")


class VenvDbtProjectPreparer(DagsterDbtProjectPreparer):
    """dagster-dbt's preparer (a lock against concurrent parses, `dbt deps` when the project has packages,
    `dbt parse`), but running `dbt_executable()` instead of the `dbt` on PATH.

    dagster-dbt 0.29 has no argument for the executable of `DbtProject`'s preparer: its two steps build
    `DbtCliResource(project_dir=project)` with the default executable. These overrides are those two steps
    with the executable added (dagster-dbt is pinned in uv.lock; tests/e2e/test_dagster_dev.py fails if an
    upgrade stops calling them)."""

    def _cli(self, project: DbtProject) -> DbtCliResource:
        return DbtCliResource(project_dir=project, dbt_executable=dbt_executable())

    def _prepare_packages(self, project: DbtProject) -> None:
        self._cli(project).cli(["deps", "--quiet"], target_path=project.target_path).wait()

    def _prepare_manifest(self, project: DbtProject) -> None:
        self._cli(project).cli(self._prepare_project_cli_args, target_path=project.target_path).wait()
        self._invalidate_seeds_in_partial_parse(project)


# DbtProject takes no preparer argument; `preparer` is a field of the (immutable) record, so swap it in.
beton_dbt_project: DbtProject = replace(
    DbtProject(project_dir=PROJECT_ROOT / "dbt_project", profiles_dir=PROJECT_ROOT / "dbt_project"),
    preparer=VenvDbtProjectPreparer(),
)
beton_dbt_project.prepare_if_dev()


def ensure_manifest() -> None:
    """Parse the dbt project when its manifest is missing (fresh clone, before `make run`)."""
    if not beton_dbt_project.manifest_path.exists():
        beton_dbt_project.preparer.prepare(beton_dbt_project)
