"""The dbt manifest is re-parsed when it is missing or older than the project files it comes from."""

import os
import time

from beton_pipeline.dbt_project import manifest_is_stale


def _touch(path, mtime):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    os.utime(path, (mtime, mtime))


def test_missing_manifest_is_stale(tmp_path):
    _touch(tmp_path / "models" / "a.sql", time.time() - 100)
    assert manifest_is_stale(tmp_path, tmp_path / "target" / "manifest.json")


def test_manifest_newer_than_every_source_is_fresh_and_a_new_model_makes_it_stale(tmp_path):
    now = time.time()
    _touch(tmp_path / "dbt_project.yml", now - 300)
    _touch(tmp_path / "models" / "marts" / "a.sql", now - 200)
    _touch(tmp_path / "macros" / "m.sql", now - 200)
    manifest = tmp_path / "target" / "manifest.json"
    _touch(manifest, now - 100)
    assert not manifest_is_stale(tmp_path, manifest)
    _touch(tmp_path / "models" / "intermediate" / "new_model.sql", now - 50)  # a pull added a model
    assert manifest_is_stale(tmp_path, manifest)


def test_a_changed_project_file_makes_it_stale(tmp_path):
    now = time.time()
    _touch(tmp_path / "models" / "a.sql", now - 200)
    manifest = tmp_path / "target" / "manifest.json"
    _touch(manifest, now - 100)
    _touch(tmp_path / "dbt_project.yml", now - 10)
    assert manifest_is_stale(tmp_path, manifest)


def test_each_warehouse_has_one_dbt_target_folder_reused_run_after_run(tmp_path, monkeypatch):
    """dbt builds into one warehouse reuse one target folder (partial parsing, nothing left per run); two
    warehouses never share one; the folder sits under DBT_TARGET_PATH when it is set (the benchmark's)."""
    from beton_pipeline.dbt_project import run_target_path

    monkeypatch.delenv("DBT_TARGET_PATH", raising=False)
    a, b = tmp_path / "a" / "warehouse.duckdb", tmp_path / "b" / "warehouse.duckdb"
    first = run_target_path(a)
    assert first == run_target_path(tmp_path / "a" / ".." / "a" / "warehouse.duckdb")  # same file, same folder
    assert (
        first != run_target_path(b)
        and first.name.startswith("warehouse-")
        and len(first.name) == len("warehouse-") + 10
    )
    assert first.parent.name == "target" and first.parent.parent.name == "dbt_project"
    monkeypatch.setenv("DBT_TARGET_PATH", str(tmp_path / "bench_target"))
    assert run_target_path(a).parent == (tmp_path / "bench_target").resolve()


def test_the_venv_dbt_is_put_on_a_path_that_has_none(monkeypatch):
    """`dagster dev` started by its absolute path from a shell without the venv: the venv's `dbt` becomes
    findable (dagster-dbt's preparer runs `dbt` from PATH), and a PATH that finds one is left alone."""
    import shutil

    from beton_pipeline.dbt_project import put_venv_dbt_on_path, venv_dbt

    monkeypatch.setenv("PATH", "/nonexistent-bin")
    put_venv_dbt_on_path()
    assert shutil.which("dbt") == str(venv_dbt())
    before = os.environ["PATH"]
    put_venv_dbt_on_path()
    assert os.environ["PATH"] == before


def test_checks_reuse_one_work_folder_and_a_concurrent_check_gets_its_own(tmp_path, monkeypatch):
    """`beton check` works in `<target root>/check` (dbt's partial parse survives between checks), never
    reads the previous check's scratch warehouse, and a check started while another runs uses a temporary
    folder instead of sharing the scratch warehouse."""
    from beton_pipeline.dbt_project import CHECK_WAREHOUSE, check_work_dir

    monkeypatch.setenv("DBT_TARGET_PATH", str(tmp_path / "target_root"))
    folder = tmp_path / "target_root" / "check"
    with check_work_dir() as work:
        assert work == folder.resolve()
        (work / CHECK_WAREHOUSE).write_text("a scratch warehouse")
        (work / "target").mkdir()
        (work / "target" / "partial_parse.msgpack").write_text("parse")
        with check_work_dir() as concurrent:
            assert concurrent != work and concurrent.is_dir() and not list(concurrent.iterdir())
        assert not concurrent.exists()
    assert not (folder / CHECK_WAREHOUSE).exists() and (folder / "target" / "partial_parse.msgpack").exists()
    (folder / CHECK_WAREHOUSE).write_text("left by a killed check")
    (folder / f"{CHECK_WAREHOUSE}.wal").write_text("its log")
    with check_work_dir() as again:
        assert again == folder.resolve() and not list(again.glob(f"{CHECK_WAREHOUSE}*"))


def test_the_dbt_resource_opens_no_adapter_in_the_step_and_dagster_dbt_still_calls_the_hook():
    """beton's dbt resource skips dagster-dbt's in-process adapter (only its row-count and column-metadata
    fetches use it, and beton calls neither). The hook it overrides must still be the one `cli()` calls:
    after a dagster-dbt upgrade that renames it, this fails instead of silently paying the cost again."""
    import inspect

    from dagster_dbt import DbtCliResource

    from beton_pipeline.dbt_project import beton_dbt_project, dbt_executable
    from beton_pipeline.defs.resources import BetonDbtCliResource

    assert "self._initialize_dbt_core_adapter(" in inspect.getsource(DbtCliResource.cli)
    resource = BetonDbtCliResource(project_dir=beton_dbt_project, dbt_executable=dbt_executable())
    assert resource._initialize_dbt_core_adapter(["build"]) is None
