"""Ingest assets: one per contract table, reading the source directory into `raw.raw_<table>`."""


import dagster as dg

from beton_pipeline.defs.resources import WAREHOUSE_POOL, SettingsResource, SourceResource, WarehouseResource
from beton_pipeline.sources.contract import TABLES, TableSpec
from beton_pipeline.sources.ingest import IngestResult, ingest_table


def ingest_metadata(result: IngestResult) -> dict[str, dg.MetadataValue]:
    """Row counts (plotted over time in the UI), files and the quarantine reasons of one table's ingest."""
    reasons = "\n".join(f"| {reason} | {n} |" for reason, n in result.quarantine_reasons.items())
    return {
        "rows_read": dg.MetadataValue.int(result.rows_read),
        "rows_loaded": dg.MetadataValue.int(result.rows_loaded),
        "rows_quarantined": dg.MetadataValue.int(result.rows_quarantined),
        "exact_duplicates_dropped": dg.MetadataValue.int(result.exact_duplicates_dropped),
        "files": dg.MetadataValue.json(list(result.files)),
        "ignored_columns": dg.MetadataValue.json(list(result.ignored_columns)),
        "quarantine_reasons": dg.MetadataValue.md(
            "| reason | rows |\n|---|---|\n" + reasons if reasons else "No row was quarantined."
        ),
    }


def build_ingest_asset(spec: TableSpec) -> dg.AssetsDefinition:
    """The asset that loads one contract table, with checks that every row read is accounted for."""
    key = dg.AssetKey(f"raw_{spec.name}")

    @dg.asset(
        key=key,
        group_name="ingest",
        kinds={"duckdb", "python"},
        pool=WAREHOUSE_POOL,
        description=(
            f"Validated rows of the source table `{spec.name}` "
            f"({'required' if spec.required else 'optional'}), loaded into `{spec.raw_table}`. "
            "Rejected rows go to `beton.quarantine` with their reason; exact duplicates are dropped and counted."
        ),
        check_specs=[
            dg.AssetCheckSpec("rows_accounted_for", asset=key, description="rows read = loaded + quarantined + exact duplicates"),
            dg.AssetCheckSpec("has_rows", asset=key, description="a required table loaded at least one row"),
        ],
    )
    def _ingest(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        source: SourceResource,
        settings: SettingsResource,
    ) -> dg.MaterializeResult:
        source_dir = source.resolve(settings.load(), log=context.log)
        with warehouse.connect() as con:
            result = ingest_table(con, source_dir, spec)
        if result.rows_quarantined:
            context.log.warning(f"{spec.name}: {result.rows_quarantined} row(s) quarantined: {result.quarantine_reasons}")
        return dg.MaterializeResult(
            metadata=ingest_metadata(result),
            check_results=[
                dg.AssetCheckResult(
                    check_name="rows_accounted_for",
                    passed=result.balanced,
                    metadata={"rows_read": result.rows_read, "accounted": result.rows_loaded + result.rows_quarantined + result.exact_duplicates_dropped},
                ),
                dg.AssetCheckResult(
                    check_name="has_rows",
                    passed=result.rows_loaded > 0 or not spec.required,
                    severity=dg.AssetCheckSeverity.ERROR,
                    metadata={"rows_loaded": result.rows_loaded},
                ),
            ],
        )

    return _ingest


ingest_assets = [build_ingest_asset(spec) for spec in TABLES]
