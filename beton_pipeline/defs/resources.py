"""Resources: the warehouse, the source directory, the settings and dbt. Values come from
environment variables at run time (never at import), so tests point them at temporary files."""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import TypeVar

import dagster as dg
import duckdb
from dagster_dbt import DbtCliResource
from packaging import version

from beton_pipeline import settings as beton_settings
from beton_pipeline.dbt_project import beton_dbt_project, dbt_executable, venv_dbt
from beton_pipeline.sources.connectors.common import source_dir as connector_dir
from beton_pipeline.sources.contract import TRACKED_EVENTS
from beton_pipeline.sources.tracking import tracking_paths
from beton_pipeline.warehouse import WarehouseLockedError, connect

WAREHOUSE_POOL = "duckdb_warehouse"
"""Every asset that writes the warehouse (dbt included) runs in this pool; dagster.yaml limits it to 1."""

SENSOR_LOCK_WAIT_SECONDS = 2.0
"""How long a sensor tick waits for a writer to release the warehouse before it skips (ticks are short)."""

T = TypeVar("T")


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse file. `path` empty means `BETON_WAREHOUSE`, else `data/warehouse.duckdb`."""

    path: str | None = None

    @property
    def resolved_path(self) -> Path:
        return Path(self.path).resolve() if self.path else beton_settings.warehouse_path()

    @contextmanager
    def connect(
        self, read_only: bool = False, wait_seconds: float | None = None
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        with connect(self.resolved_path, read_only=read_only, wait_seconds=wait_seconds) as con:
            yield con

    def read_or_skip(self, read: Callable[[duckdb.DuckDBPyConnection], T]) -> T | dg.SkipReason:
        """For sensors: `read(con)` on a read-only connection, or a SkipReason when the warehouse cannot be
        read now (a writer holds it, or the file is not there yet). The sensor keeps its cursor, so the
        next tick looks again."""
        try:
            with self.connect(read_only=True, wait_seconds=SENSOR_LOCK_WAIT_SECONDS) as con:
                return read(con)
        except (WarehouseLockedError, duckdb.IOException) as exc:
            return dg.SkipReason(f"warehouse not readable now ({type(exc).__name__}); will look again on the next tick")


class SettingsResource(dg.ConfigurableResource):
    """beton.yaml settings. `config_path` empty means `BETON_CONFIG`, else `beton.yaml` at the project root."""

    config_path: str | None = None

    def load(self) -> beton_settings.Settings:
        return beton_settings.load_settings(self.config_path)


class SourceResource(dg.ConfigurableResource):
    """The source directory: `source_dir`, else `BETON_SOURCE_DIR`, else the demo data (generated on first use).

    A table an enabled connector pulls is read from that connector's landing folder instead (`table` given);
    with connectors enabled and no source directory, the other tables have no files (optional ones are absent).
    The events `beton serve` tracked (`tracked_events`) are read from the tracking spool's export folder beside
    `warehouse` (`sources.tracking.tracking_paths`), whatever the source directory."""

    source_dir: str | None = None

    def resolve(
        self, settings: beton_settings.Settings, table: str | None = None, log=None, warehouse: Path | None = None
    ) -> Path:
        if table == TRACKED_EVENTS:
            if warehouse is None:
                raise ValueError(f"the {TRACKED_EVENTS} table is read beside the warehouse: pass its path")
            return tracking_paths(warehouse)[1]
        pulled = settings.sources.pulled_tables()
        if table in pulled:
            return connector_dir(pulled[table], settings.sources.landing())
        explicit = Path(self.source_dir).resolve() if self.source_dir else beton_settings.source_dir()
        if explicit is not None:
            if not explicit.is_dir():
                raise FileNotFoundError(f"source directory {explicit} does not exist (BETON_SOURCE_DIR)")
            return explicit
        if pulled:
            settings.sources.landing().mkdir(parents=True, exist_ok=True)
            return settings.sources.landing()
        demo = beton_settings.demo_dir()
        if not (demo / "TRUTH.json").exists():
            from beton_pipeline.sources.demo import generate_demo

            if log:
                log.info(f"No BETON_SOURCE_DIR: generating demo data ({settings.demo.accounts} accounts) in {demo}")
            generate_demo(demo, n_accounts=settings.demo.accounts, seed=settings.demo.seed)
        return demo


@contextmanager
def env_set(name: str, value: str) -> Iterator[None]:
    """Environment variable `name` set to `value` for the duration of a block (a dbt call reads it), then restored."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def warehouse_env(warehouse: WarehouseResource):
    """Point dbt's profile (`env_var('BETON_WAREHOUSE')`) at the resource's file for the duration of a dbt call."""
    return env_set("BETON_WAREHOUSE", str(warehouse.resolved_path))


class BetonDbtCliResource(DbtCliResource):
    """dagster-dbt's dbt resource without two start-up costs beton does not use.

    - The version: dagster-dbt runs `dbt --version` in a subprocess for every resource it builds (once per
      run) to learn which engine it drives; that start-up costs 3-5 s of CPU per run on 2 cores. When the
      executable is the venv's own `dbt` (the default), its version is the installed dbt-core package's.
    - The adapter: before every `dbt.cli(...)` dagster-dbt also opens a dbt adapter inside the step's own
      process (it imports dbt-core, loads the profile and parses dbt's ~500 built-in macros: 5.5 s between
      the step's start and `dbt build` on a loaded 2-core machine, 0.09 s without it) for one purpose, the optional `.fetch_row_counts()` / `.fetch_column_metadata()`
      on the event stream, which query the warehouse from the step. beton calls neither (the build's
      own subprocess does all the work), so no adapter is opened; dagster-dbt supports that (the adapter is
      optional: its Fusion engine path has none)."""

    @cached_property
    def _cli_version(self) -> version.Version:
        if Path(self.dbt_executable) == venv_dbt():
            return version.parse(importlib.metadata.version("dbt-core"))
        return super()._cli_version

    def _initialize_dbt_core_adapter(self, args):  # noqa: ARG002 - dagster-dbt's signature
        return None


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """The resources every beton run uses; tests build the same set around temporary paths."""
    return {
        "warehouse": WarehouseResource(),
        "settings": SettingsResource(),
        "source": SourceResource(),
        "dbt": BetonDbtCliResource(project_dir=beton_dbt_project, dbt_executable=dbt_executable()),
    }


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=default_resources())
