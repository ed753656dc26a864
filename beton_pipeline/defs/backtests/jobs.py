"""Jobs: re-run signals' backtests, and backtest an ad hoc definition from the launchpad."""

import dagster as dg
from pydantic import Field

from beton_pipeline.core.conditions import SignalDefinitionError
from beton_pipeline.defs.backtests.assets import periods_markdown
from beton_pipeline.defs.backtests.partitions import signal_partitions
from beton_pipeline.defs.resources import WAREHOUSE_POOL, SettingsResource, WarehouseResource
from beton_pipeline.store.backtests import record_launchpad_backtest
from beton_pipeline.store.sql_sandbox import SqlSignalError

signal_backtests_job = dg.define_asset_job(
    "signal_backtests_job",
    selection=dg.AssetSelection.assets("signal_backtests"),
    partitions_def=signal_partitions,
    description="Backtest one signal (a partition of `signals`), or several in one run.",
)


class CustomBacktestConfig(dg.Config):
    """Launchpad config of `custom_backtest_job`."""

    definition: str = Field(
        description=(
            "A signal as YAML (`name:` and `when:`, as in signals/*.yml) or one SQL SELECT returning account_id "
            "(optionally fired_at)."
        )
    )
    kind: str = Field(
        "auto", description="`condition` (YAML), `sql`, or `auto` (SQL when it starts with SELECT/WITH/FROM)."
    )
    timeout_seconds: float = Field(30.0, gt=0, le=600, description="Time limit of a SQL signal.")


@dg.op(
    pool=WAREHOUSE_POOL,
    out=dg.Out(dg.Nothing),
    description="Backtest the configured definition and write its rows to beton.signal_backtests (origin = launchpad).",
)
def backtest_custom_definition(
    context: dg.OpExecutionContext,
    config: CustomBacktestConfig,
    warehouse: WarehouseResource,
    settings: SettingsResource,
):
    if config.kind not in ("auto", "condition", "sql"):
        raise dg.Failure(description=f"kind: expected auto, condition or sql, got {config.kind!r}")
    try:
        result = record_launchpad_backtest(
            config.definition, config.kind, settings.load(), warehouse.resolved_path, config.timeout_seconds
        )
    except (SignalDefinitionError, SqlSignalError) as exc:
        raise dg.Failure(description=str(exc)) from None
    rows = result.periods
    row = result.signal_row.row(0, named=True)
    verdict = rows.get_column("verdict")[0] if rows.height else None
    context.log.info(f"{result.signal.signal_id}: {result.signal.definition}: lift {row['lift']}, verdict {verdict}")
    yield dg.Output(
        None,
        metadata={
            "signal_id": result.signal.signal_id,
            "definition": result.signal.definition,
            "verdict": str(verdict),
            "n_with": dg.MetadataValue.int(int(row["n_with"])),
            "lift": dg.MetadataValue.float(float(row["lift"] if row["lift"] is not None else float("nan"))),
            "q_value": dg.MetadataValue.float(float(row["q_value"] if row["q_value"] is not None else float("nan"))),
            "recommendation": row["recommendation"],
            "periods": dg.MetadataValue.md(periods_markdown(rows)),
        },
    )


@dg.job(
    description=(
        "Backtest an ad hoc custom signal: paste a YAML condition or a SQL SELECT into the launchpad config. "
        "Writes its periods to beton.signal_backtests (origin = launchpad); beton.signals is not changed."
    ),
    tags={"beton/kind": "custom_backtest"},
)
def custom_backtest_job():
    backtest_custom_definition()
