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
