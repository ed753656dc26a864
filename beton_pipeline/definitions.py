"""The one Definitions object: everything under `beton_pipeline/defs/` (assets, checks, jobs,
schedules, sensors, resources), autoloaded."""

from __future__ import annotations

import dagster as dg

from beton_pipeline.dbt_project import ensure_manifest
from beton_pipeline.settings import PROJECT_ROOT

ensure_manifest()

defs = dg.load_from_defs_folder(project_root=PROJECT_ROOT)
