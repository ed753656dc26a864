"""The dbt project as Dagster sees it. Kept apart from `@dbt_assets` so that
`dagster-dbt project prepare-and-package --file beton_pipeline/dbt_project.py` can import it
before the manifest exists."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from dagster_dbt import DbtProject

from beton_pipeline.settings import PROJECT_ROOT


def dbt_executable() -> str:
    """The `dbt` installed beside this Python (the project's venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "dbt"
    return str(beside) if beside.exists() else (shutil.which("dbt") or "dbt")


def put_venv_dbt_on_path() -> None:
    """Make the venv's `dbt` findable on PATH when it is not (`dagster dev` started by absolute path from a
    shell without the activated venv).

    dagster-dbt's project preparer (`prepare_if_dev`, `dagster-dbt project prepare-and-package`) runs `dbt`
    from PATH and has no setting for the executable; without this the code location fails to load with
    "The dbt executable 'dbt' was not found on PATH". The dbt resource gets `dbt_executable()` explicitly.
    """
    bin_dir = Path(sys.executable).parent
    if shutil.which("dbt") is None and (bin_dir / "dbt").exists():
        os.environ["PATH"] = os.pathsep.join(p for p in (str(bin_dir), os.environ.get("PATH", "")) if p)


put_venv_dbt_on_path()
beton_dbt_project = DbtProject(project_dir=PROJECT_ROOT / "dbt_project", profiles_dir=PROJECT_ROOT / "dbt_project")
beton_dbt_project.prepare_if_dev()


def ensure_manifest() -> None:
    """Parse the dbt project when its manifest is missing (fresh clone, before `make run`)."""
    if not beton_dbt_project.manifest_path.exists():
        beton_dbt_project.preparer.prepare(beton_dbt_project)
