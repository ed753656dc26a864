"""Ingest assets: one per contract table, reading the source directory into `raw.raw_<table>`, each
with checks that fail loudly (and stop the downstream dbt models) instead of letting a bad or stale
source produce quietly wrong signals:

* `rows_accounted_for`: rows read = loaded + quarantined + exact duplicates (no row lost);
* `has_rows`: a required table loaded at least one row;
* `fresh`: the table's newest row trails the as-of time (the latest event, or `windows.as_of`) by at
  most `freshness.max_lag_days`, and the newest event is at most `freshness.max_age_days` old by the
  wall clock when that is set (see `beton_pipeline.sources.ingest.SourceFreshness`). By default only
  activity tables (events, invoices, ...) have a lag limit; entity tables (customers, companies, ...)
  have one only when beton.yaml sets it (`TableSpec.role`). A failure names the table, the lag, the
  limit and the setting, in its description and metadata.

* `quarantined_share`: the share of rows read that was quarantined is at most
  `ingest.max_quarantine_share` (default 5 %); a failure names the table, rows read, rows quarantined,
  the share, the limit and the setting.

Every file in a table's location is read or listed as skipped with its reason (`skipped_files`
metadata, `sources.files.table_files`). A table whose rows refer to another (people → companies,
subscriptions and invoices → billing customers) is loaded after it, so dangling references are
quarantined with their reason (`Column.references`).

Checks of required tables are blocking with severity ERROR; those of optional tables warn.

`raw_tracked_events` first exports what `beton serve` recorded since the last run from the tracking spool
(`sources.tracking`) as a new file of the export folder beside the warehouse, then ingests that folder like any
source: the rows are checked by the events' rules, and only the new file is read when the ingest is incremental.
"""

from collections.abc import Mapping

import dagster as dg

from beton_pipeline.core.formatting import markdown_table
from beton_pipeline.defs.resources import WAREHOUSE_POOL, SettingsResource, SourceResource, WarehouseResource
from beton_pipeline.settings import load_settings
from beton_pipeline.sources.contract import INGESTED_TABLES, TRACKED_EVENTS, TableSpec
from beton_pipeline.sources.ingest import (
    IngestResult,
    SourceFreshness,
    ingest_table,
    table_freshness,
)
from beton_pipeline.sources.tracking import export_beside

EVENTS_KEY = dg.AssetKey("raw_events")


def ingest_metadata(result: IngestResult) -> dict[str, dg.MetadataValue]:
    """Row counts (plotted over time in the UI), files and the quarantine reasons of one table's ingest."""
    return {
        "rows_read": dg.MetadataValue.int(result.rows_read),
        "rows_loaded": dg.MetadataValue.int(result.rows_loaded),
        "rows_quarantined": dg.MetadataValue.int(result.rows_quarantined),
        "exact_duplicates_dropped": dg.MetadataValue.int(result.exact_duplicates_dropped),
        "files": dg.MetadataValue.json(list(result.files)),
        "ingest_mode": dg.MetadataValue.text(f"{result.mode}: {result.mode_reason}"),
        "files_read": dg.MetadataValue.int(len(result.files_read)),
        "skipped_files": dg.MetadataValue.json(list(result.skipped_files)),
        "quarantined_share": dg.MetadataValue.float(round(result.quarantined_share, 6)),
        "unchecked_references": dg.MetadataValue.json(list(result.unchecked_references)),
        "ignored_columns": dg.MetadataValue.json(list(result.ignored_columns)),
        "quarantine_reasons": dg.MetadataValue.md(
            markdown_table(["reason", "rows"], result.quarantine_reasons.items(), empty="No row was quarantined.")
        ),
    }


QUARANTINE_SETTING = "ingest.max_quarantine_share"


def quarantine_share_problem(result: IngestResult, max_share: float) -> str | None:
    """Why the table's quarantined share is over the limit (None when within it): the numbers and the setting."""
    if result.quarantined_share <= max_share:
        return None
    top = ", ".join(f"{reason} ({n})" for reason, n in list(result.quarantine_reasons.items())[:3])
    return (
        f"{result.table}: {result.rows_quarantined} of {result.rows_read} rows read were quarantined "
        f"({result.quarantined_share:.1%}), over the limit of {max_share:.1%} ({QUARANTINE_SETTING}); "
        f"top reasons: {top}. Fix the export (the rows and reasons are in beton.quarantine), or raise "
        f"{QUARANTINE_SETTING} in beton.yaml if these rows may be left out"
    )


def ingest_check_results(
    spec: TableSpec, result: IngestResult, max_quarantine_share: float
) -> list[dg.AssetCheckResult]:
    """`rows_accounted_for`, `has_rows` and `quarantined_share` of one table's ingest."""
    share_problem = quarantine_share_problem(result, max_quarantine_share)
    return [
        dg.AssetCheckResult(
            check_name="rows_accounted_for",
            passed=result.balanced,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"rows_read": result.rows_read, "accounted": result.accounted},
            description=None if result.balanced else f"{result.rows_read} rows read, {result.accounted} accounted for",
        ),
        dg.AssetCheckResult(
            check_name="has_rows",
            passed=result.rows_loaded > 0 or not spec.required,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"rows_loaded": result.rows_loaded, "rows_read": result.rows_read, "files": len(result.files)},
            description=(
                f"required table '{spec.name}' loaded no row ({result.rows_read} read, {result.rows_quarantined} quarantined)"
                if spec.required and result.rows_loaded == 0
                else None
            ),
        ),
        dg.AssetCheckResult(
            check_name="quarantined_share",
            passed=share_problem is None,
            severity=_severity(spec),
            metadata={
                "rows_read": result.rows_read,
                "rows_quarantined": result.rows_quarantined,
                "quarantined_share": round(result.quarantined_share, 6),
                "max_quarantine_share": max_quarantine_share,
                "setting": QUARANTINE_SETTING,
            },
            description=share_problem,
        ),
    ]


def _severity(spec: TableSpec) -> dg.AssetCheckSeverity:
    return dg.AssetCheckSeverity.ERROR if spec.required else dg.AssetCheckSeverity.WARN


def build_ingest_asset(spec: TableSpec, pulled_by: str | None = None) -> dg.AssetsDefinition:
    """The asset that loads one contract table, with checks that every row read is accounted for.

    `pulled_by`: the enabled connector that lands this table (its pull asset comes first, and the ingest
    reads what it landed), or None for a table read from the source directory."""
    key = dg.AssetKey(f"raw_{spec.name}")
    pulled = [dg.AssetKey(f"pull_{pulled_by}_{spec.name}")] if pulled_by else []

    @dg.asset(
        key=key,
        group_name="ingest",
        kinds={"duckdb", "python"},
        pool=WAREHOUSE_POOL,
        description=(
            f"Validated rows of the source table `{spec.name}` "
            f"({'required' if spec.required else 'optional'}"
            + (f", pulled by the {pulled_by} connector" if pulled_by else "")
            + f"), loaded into `{spec.raw_table}`. "
            "Rejected rows go to `beton.quarantine` with their reason; exact duplicates are dropped and counted."
        ),
        check_specs=[
            dg.AssetCheckSpec(
                "rows_accounted_for",
                asset=key,
                blocking=True,
                description="rows read = loaded + quarantined + exact duplicates (no row lost)",
            ),
            dg.AssetCheckSpec(
                "has_rows",
                asset=key,
                blocking=spec.required,
                description="a required table loaded at least one row (an empty one stops the run)",
            ),
            dg.AssetCheckSpec(
                "quarantined_share",
                asset=key,
                blocking=spec.required,
                description=f"at most {QUARANTINE_SETTING} (beton.yaml) of the rows read were quarantined",
            ),
        ],
        # Referenced tables load first, so that dangling references are found (Column.references).
        deps=sorted({dg.AssetKey(f"raw_{c.references[0]}") for c in spec.columns if c.references}) + pulled,
    )
    def _ingest(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        source: SourceResource,
        settings: SettingsResource,
    ) -> dg.MaterializeResult:
        cfg = settings.load()
        source_dir = source.resolve(cfg, table=spec.name, log=context.log, warehouse=warehouse.resolved_path)
        if spec.name == TRACKED_EVENTS:  # what beton serve recorded since the last run becomes the next file
            context.log.info(export_beside(warehouse.resolved_path).summary)
        with warehouse.connect() as con:
            result = ingest_table(
                con, source_dir, spec, max_chunk_bytes=cfg.ingest.max_chunk_bytes, incremental=cfg.ingest.incremental
            )
        if result.rows_quarantined:
            context.log.warning(
                f"{spec.name}: {result.rows_quarantined} row(s) quarantined: {result.quarantine_reasons}"
            )
        for skipped in result.skipped_files:
            context.log.warning(f"{spec.name}: file not read: {skipped}")
        return dg.MaterializeResult(
            metadata=ingest_metadata(result),
            check_results=ingest_check_results(spec, result, cfg.ingest.max_quarantine_share),
        )

    return _ingest


def freshness_metadata(freshness: SourceFreshness) -> dict[str, dg.MetadataValue]:
    """What the `fresh` check measured: newest row, as-of, lag and age in days, and the limits used."""

    def days(value: float | None) -> dg.MetadataValue:
        return dg.MetadataValue.float(round(value, 3)) if value is not None else dg.MetadataValue.text("n/a")

    def limit(value: float | None) -> dg.MetadataValue:
        return dg.MetadataValue.float(value) if value is not None else dg.MetadataValue.text("off")

    def when(value) -> dg.MetadataValue:
        return dg.MetadataValue.text(value.isoformat(sep=" ") if value is not None else "n/a")

    return {
        "table": dg.MetadataValue.text(freshness.table),
        "column": dg.MetadataValue.text(freshness.column),
        "newest": when(freshness.newest),
        "as_of": when(freshness.as_of),
        "lag_days": days(freshness.lag_days),
        "max_lag_days": limit(freshness.max_lag_days),
        "age_days": days(freshness.age_days),
        "max_age_days": limit(freshness.max_age_days),
        "setting": dg.MetadataValue.text(
            f"{freshness.lag_setting}"
            + (f", {freshness.AGE_SETTING}" if freshness.max_age_days is not None else "")
            + " (beton.yaml)"
        ),
    }


def build_freshness_check(spec: TableSpec) -> dg.AssetChecksDefinition:
    """The `fresh` check of one ingest asset (see the module docstring). It reads the warehouse, after
    `raw_events` when both run, since the events set the as-of."""
    key = dg.AssetKey(f"raw_{spec.name}")
    max_lag_default = (
        f"off for an {spec.role} table"
        if spec.max_lag_days is None
        else f"{spec.max_lag_days:g} days for an {spec.role} table"
    )

    @dg.asset_check(
        asset=key,
        name="fresh",
        description=(
            f"The newest `{spec.freshness_column}` trails the as-of time (latest event, or windows.as_of) by at most "
            f"freshness.max_lag_days.{spec.name} (default {max_lag_default})"
            + (
                "; and is at most freshness.max_age_days old by the wall clock (off unless set)"
                if spec.name == "events"
                else ""
            )
            + ("; an empty table fails." if spec.required else "; an absent optional table passes.")
        ),
        blocking=spec.required,
        additional_deps=[] if key == EVENTS_KEY else [EVENTS_KEY],
        pool=WAREHOUSE_POOL,
    )
    def _fresh(warehouse: WarehouseResource, settings: SettingsResource) -> dg.AssetCheckResult:
        cfg = settings.load()
        with warehouse.connect(read_only=True) as con:
            freshness = table_freshness(con, spec, cfg.freshness, cfg.windows.as_of)
        return dg.AssetCheckResult(
            passed=freshness.fresh,
            # Without events there is no as-of: the events' own check fails with ERROR; this one only warns.
            severity=dg.AssetCheckSeverity.WARN if freshness.lag_unmeasurable else _severity(spec),
            metadata=freshness_metadata(freshness),
            description=freshness.summary,
        )

    return _fresh


def build_ingest_assets(pulled: Mapping[str, str]) -> list[dg.AssetsDefinition]:
    """One ingest asset per contract table (`INGESTED_TABLES`: the tracked events too); `pulled` maps a table to
    the enabled connector landing it."""
    return [build_ingest_asset(spec, pulled.get(spec.name)) for spec in INGESTED_TABLES]


freshness_checks = [build_freshness_check(spec) for spec in INGESTED_TABLES]


@dg.definitions
def ingest_definitions() -> dg.Definitions:
    """The ingest assets, each after its connector's pull where `sources.<name>.enabled` says one lands it, and
    the `fresh` checks (a module with a `dg.definitions` function contributes only what that function returns)."""
    return dg.Definitions(
        assets=build_ingest_assets(load_settings().sources.pulled_tables()), asset_checks=freshness_checks
    )
