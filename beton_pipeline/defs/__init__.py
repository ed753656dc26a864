"""Dagster objects only, autoloaded by `dg.load_from_defs_folder` (see beton_pipeline/definitions.py)."""
