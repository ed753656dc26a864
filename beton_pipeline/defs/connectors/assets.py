"""Connector assets: one per contract table an enabled connector pulls (`pull_<source>_<table>`), built with
dagster-dlt from the connector's dlt source. Each lands its table under the landing folder; the table's ingest
asset (`raw_<table>`) depends on it and reads the landed files with the same validation and quarantine as an
exported file (README, "Connectors").

Only enabled connectors (`sources.<name>.enabled` in beton.yaml) are defined; a project without connectors builds
no dlt source or pipeline. The dlt source and pipeline are built again from the settings when the step runs, so a
changed setting applies without reloading the code location. Run config `full_refresh: true` drops the
source's cursors and pulls everything again.
"""

import json

import dagster as dg

from beton_pipeline.defs.resources import SettingsResource
from beton_pipeline.settings import Settings, load_settings
from beton_pipeline.sources.connectors import TABLES_BY_SOURCE

GROUP = "connectors"


def pull_key(source: str, table: str) -> dg.AssetKey:
    """The asset key of the pull of `table` by the `source` connector."""
    return dg.AssetKey(f"pull_{source}_{table}")


class PullConfig(dg.Config):
    full_refresh: bool = False
    """Drop the source's cursors (and its landed tables) first, and pull everything from the start."""


def build_connector_assets(source: str, settings: Settings) -> dg.AssetsDefinition:
    """The multi-asset pulling every table of one enabled connector (one dagster-dlt step per source)."""
    from dagster_dlt import DagsterDltResource, DagsterDltTranslator, dlt_assets
    from dagster_dlt.translator import DltResourceTranslatorData

    from beton_pipeline.sources.connectors.common import connector_error, landing_pipeline
    from beton_pipeline.sources.connectors.registry import connector_source

    class Translator(DagsterDltTranslator):
        def get_asset_spec(self, data: DltResourceTranslatorData) -> dg.AssetSpec:
            table = data.resource.name
            return dg.AssetSpec(
                key=pull_key(source, table),
                group_name=GROUP,
                kinds={"dlt", source},
                description=(
                    f"`{table}` pulled from {source.capitalize()}'s API and landed as Parquet under "
                    f"`sources.landing_dir`/{source}/{table}/ for `raw_{table}` to ingest."
                ),
            )

    landing = settings.sources.landing()

    @dlt_assets(
        dlt_source=connector_source(source, settings.connector_config(source), landing),
        dlt_pipeline=landing_pipeline(source, landing),
        name=f"pull_{source}",
        dagster_dlt_translator=Translator(),
    )
    def _pull(context: dg.AssetExecutionContext, config: PullConfig, settings: SettingsResource):
        if config.full_refresh and context.is_subset:
            raise dg.Failure(
                description=(
                    f"full_refresh drops every table and cursor of the {source} connector, so it must pull all of "
                    f"them: select every pull_{source}_* asset (or the whole group), not {len(context.selected_asset_keys)} "
                    f"of them."
                )
            )
        cfg = settings.load()
        here = cfg.sources.landing()
        pipeline = landing_pipeline(source, here)
        try:
            for result in DagsterDltResource().run(
                context=context,
                dlt_source=connector_source(source, cfg.connector_config(source), here),
                dlt_pipeline=pipeline,
                loader_file_format="parquet",
                refresh="drop_sources" if config.full_refresh else None,
            ):
                yield with_cursor(result, pipeline.state, source, full_refresh=config.full_refresh)
        except Exception as exc:
            reason = connector_error(exc)
            if reason is None:
                raise
            raise dg.Failure(description=str(reason)) from None

    return _pull


def with_cursor(result: dg.MaterializeResult, state: dict, source: str, full_refresh: bool) -> dg.MaterializeResult:
    """dagster-dlt's materialization of one pulled table, plus the cursor dlt committed with the load (the
    table's and the source's state: where the next pull starts) and whether this pull was a full refresh."""
    table = result.asset_key.path[-1].removeprefix(f"pull_{source}_")
    kept = state.get("sources", {}).get(source, {})
    cursor = {
        "table": kept.get("resources", {}).get(table, {}),
        "source": {k: v for k, v in kept.items() if k != "resources"},
    }
    return dg.MaterializeResult(
        asset_key=result.asset_key,
        metadata={
            **(result.metadata or {}),
            "cursor": dg.MetadataValue.json(json.loads(json.dumps(cursor, default=str))),
            "full_refresh": dg.MetadataValue.bool(full_refresh),
        },
    )


@dg.definitions
def connector_definitions() -> dg.Definitions:
    """The pull assets of the enabled connectors (none: nothing defined, dlt not imported)."""
    settings = load_settings()
    return dg.Definitions(assets=[build_connector_assets(name, settings) for name in settings.sources.enabled])


__all__ = ["TABLES_BY_SOURCE", "build_connector_assets", "connector_definitions", "pull_key"]
