"""The dbt project as Dagster sees it. Kept apart from `@dbt_assets` so that
`dagster-dbt project prepare-and-package --file beton_pipeline/dbt_project.py` can import it
before the manifest exists."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster_dbt import DbtProject

from beton_pipeline.settings import PROJECT_ROOT


def venv_dbt() -> Path:
    """Where the project's venv installs `dbt`: beside this Python (its dbt-core is the installed package)."""
    return Path(sys.executable).parent / "dbt"


def dbt_executable() -> str:
    """The `dbt` installed beside this Python (the project's venv), else the one on PATH."""
    beside = venv_dbt()
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
# No `beton_dbt_project.prepare_if_dev()`: under `dagster dev` it runs a full `dbt parse` on every load of the
# code location (10-15 s of CPU), even when nothing changed. `definitions.py` calls `ensure_manifest()`
# instead, which parses only when the manifest is missing or older than a model, macro or seed.


def run_target_path(warehouse: Path) -> Path:
    """The dbt target folder of every build into `warehouse`: one folder per warehouse file, reused run after run.

    dagster-dbt's default is a new folder per run (`target/<step>-<run id>`), which (1) never finds the
    previous run's `partial_parse.msgpack`, so every run re-parsed the whole project (about 6 s of CPU, a
    third of dbt's work on a small export), and (2) left a manifest and a debug log behind per run (~5 MB a
    day of a daily schedule). A stable folder keeps one copy and lets dbt parse partially while the models,
    beton.yaml's windows and the warehouse path stay the same; dbt rotates its log file. Two builds into one
    warehouse never overlap (the warehouse pool). The folder lives under dbt's target root (`DBT_TARGET_PATH`,
    else `dbt_project/target`), named after the file and a hash of its absolute path (`warehouse-3f2a9c1b0d`)."""
    resolved = Path(warehouse).resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:10]
    return target_root() / f"{resolved.stem}-{digest}"


def target_root() -> Path:
    """dbt's target root: `DBT_TARGET_PATH`, else `dbt_project/target`."""
    return Path(os.environ.get("DBT_TARGET_PATH") or Path(beton_dbt_project.project_dir) / "target").resolve()


CHECK_WAREHOUSE = "check.duckdb"
"""The scratch warehouse `beton check` profiles an export into, inside its work folder."""


@contextmanager
def check_work_dir() -> Iterator[Path]:
    """The folder `beton check` works in: `<target root>/check`, the same every time, so that dbt parses only
    what changed since the last check. dbt's parse cache is keyed on the warehouse's path among other things,
    so a new temporary folder per check re-parsed the whole project (about 4 s of CPU of a 2-core machine).

    The previous check's scratch warehouse is deleted before and after (a check never reads an old one);
    dbt's target folder (manifest, partial parse) stays. A check started while another holds the folder's
    lock works in a temporary folder instead (removed afterwards), with a full parse."""
    folder = target_root() / "check"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            owned = True
        except BlockingIOError:
            owned = False
        if not owned:
            with tempfile.TemporaryDirectory(prefix="beton-check-") as work:
                yield Path(work)
            return
        _remove_scratch_warehouse(folder)
        try:
            yield folder
        finally:
            _remove_scratch_warehouse(folder)


def _remove_scratch_warehouse(folder: Path) -> None:
    for name in (CHECK_WAREHOUSE, f"{CHECK_WAREHOUSE}.wal"):
        (folder / name).unlink(missing_ok=True)


DBT_SOURCES = ("dbt_project.yml", "models", "macros", "seeds", "data-tests", "tests")
"""What the manifest is parsed from (files and folders of the dbt project)."""


def manifest_is_stale(project_dir: Path, manifest_path: Path) -> bool:
    """True when the manifest is missing or older than any file it is parsed from.

    A manifest from before a `git pull` that added a model makes every dbt run fail on the new model's
    unknown node (a KeyError inside dagster-dbt), so it is re-parsed instead."""
    if not manifest_path.exists():
        return True
    built = manifest_path.stat().st_mtime
    for name in DBT_SOURCES:
        path = project_dir / name
        files = path.rglob("*") if path.is_dir() else [path] if path.exists() else []
        if any(f.is_file() and f.stat().st_mtime > built for f in files):
            return True
    return False


def ensure_manifest() -> None:
    """Parse the dbt project when its manifest is missing (fresh clone) or stale (models changed since)."""
    if manifest_is_stale(Path(beton_dbt_project.project_dir), Path(beton_dbt_project.manifest_path)):
        beton_dbt_project.preparer.prepare(beton_dbt_project)
