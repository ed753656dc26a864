"""One backtest per signal into beton.signal_backtests (custom signals are counted in defs/signals/assets.py)."""

import dagster as dg
import polars as pl

from beton_pipeline.core.conditions import SignalDefinitionError
from beton_pipeline.core.formatting import fmt, fmt_estimate, markdown_table
from beton_pipeline.defs.backtests.partitions import signal_partitions
from beton_pipeline.defs.resources import WAREHOUSE_POOL, SettingsResource, WarehouseResource
from beton_pipeline.store.backtests import BACKTESTS_TABLE, run_backtests
from beton_pipeline.store.sql_sandbox import SqlSignalError


def periods_markdown(rows: pl.DataFrame) -> str:
    """A markdown table of one signal's periods."""
    return markdown_table(
        [
            "cohort",
            "split",
            "fired",
            "converted",
            "precision",
            "recall",
            "lift (95% CI)",
            "projected ARR (95% CI)",
            "enough data",
        ],
        [
            [
                r["cohort_month"],
                r["split"],
                r["fired"],
                r["converted"],
                fmt(r["precision"]),
                fmt(r["recall"]),
                fmt_estimate(r["lift"], r["lift_ci_low"], r["lift_ci_high"]),
                fmt_estimate(r["projected_arr"], r["projected_arr_ci_low"], r["projected_arr_ci_high"], ",.0f"),
                "yes" if r["enough_data"] else "no",
            ]
            for r in rows.sort("cohort_month").iter_rows(named=True)
        ],
    )


def summary_markdown(summary: pl.DataFrame) -> str:
    """A markdown table of several signals' verdicts."""
    return markdown_table(
        ["signal", "verdict", "periods with data", "lift > 1", "precision", "recall"],
        [
            [
                r["signal_id"],
                r["verdict"],
                r["periods_with_data"],
                r["periods_lift_above_1"],
                fmt(r["precision_total"]),
                fmt(r["recall_total"]),
            ]
            for r in summary.iter_rows(named=True)
        ],
    )


@dg.asset(
    group_name="backtests",
    kinds={"python", "polars", "duckdb"},
    pool=WAREHOUSE_POOL,
    partitions_def=signal_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=["signals"],
    description=(
        "beton.signal_backtests: each signal (one partition per signal: enabled discovered signals and every custom "
        "signal) re-measured on every monthly cohort whose outcome window has closed: fired, converted, precision, "
        "recall, lift with Katz CI and p, projected ARR with a CI (Newcombe rate-difference interval × fired × 12 × "
        "ARR per conversion), and a verdict (consistent / unstable / insufficient_data; rule in "
        "beton_pipeline/core/backtest.py). Re-materialising a partition replaces exactly that signal's rows."
    ),
)
def signal_backtests(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings: SettingsResource
) -> dg.MaterializeResult:
    keys = list(context.partition_keys)
    try:
        run = run_backtests(warehouse.resolved_path, settings.load(), keys)
    except (SignalDefinitionError, SqlSignalError) as exc:
        raise dg.Failure(description=f"backtest of {', '.join(keys)}: {exc}") from None
    if run.missing:
        context.log.warning(f"not in beton.signals any more (backtest rows removed): {', '.join(run.missing)}")
    metadata: dict = {
        "signals": dg.MetadataValue.int(len(keys) - len(run.missing)),
        "rows": dg.MetadataValue.int(run.rows.height),
        "table": BACKTESTS_TABLE,
    }
    if run.summary is not None:
        counts = run.summary.group_by("verdict").len()
        metadata["verdicts"] = dg.MetadataValue.json(
            dict(zip(counts.get_column("verdict").to_list(), counts.get_column("len").to_list(), strict=True))
        )
        if run.summary.height == 1:
            only = run.summary.row(0, named=True)
            metadata.update(
                {
                    "verdict": only["verdict"],
                    "verdict_reason": only["verdict_reason"],
                    "fired": dg.MetadataValue.int(int(only["fired_total"])),
                    "precision": dg.MetadataValue.float(float(only["precision_total"] or 0.0)),
                    "recall": dg.MetadataValue.float(float(only["recall_total"] or 0.0)),
                    "periods_with_data": dg.MetadataValue.int(int(only["periods_with_data"])),
                    "periods_lift_above_1": dg.MetadataValue.int(int(only["periods_lift_above_1"])),
                    "periods": dg.MetadataValue.md(periods_markdown(run.rows)),
                }
            )
        else:
            metadata["summary"] = dg.MetadataValue.md(summary_markdown(run.summary))
    return dg.MaterializeResult(metadata=metadata)
