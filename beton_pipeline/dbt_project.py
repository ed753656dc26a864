"""The dbt project as Dagster sees it. Kept apart from `@dbt_assets` so that
`dagster-dbt project prepare-and-package --file beton_pipeline/dbt_project.py` can import it
before the manifest exists."""

from dagster_dbt import DbtProject

from beton_pipeline.settings import PROJECT_ROOT

beton_dbt_project = DbtProject(project_dir=PROJECT_ROOT / "dbt_project", profiles_dir=PROJECT_ROOT / "dbt_project")
beton_dbt_project.prepare_if_dev()


def ensure_manifest() -> None:
    """Parse the dbt project when its manifest is missing (fresh clone, before `make run`)."""
    if not beton_dbt_project.manifest_path.exists():
        beton_dbt_project.preparer.prepare(beton_dbt_project)
