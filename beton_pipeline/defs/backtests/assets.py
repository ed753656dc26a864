"""Custom signals into beton.signals, and one backtest per signal into beton.signal_backtests."""

import dagster as dg
import polars as pl

from beton_pipeline.core.backtest import verdicts
from beton_pipeline.core.conditions import SignalDefinitionError
from beton_pipeline.defs.backtests.partitions import signal_partitions
from beton_pipeline.defs.resources import WAREHOUSE_POOL, SettingsResource, WarehouseResource
from beton_pipeline.store.custom_signals import (
    BACKTESTS_TABLE,
    CUSTOM_COUNTS_TABLE,
    CustomSignalsError,
    compute_backtests,
    compute_custom_cohort_counts,
    signals_dir,
    write_backtests,
)
from beton_pipeline.store.sql_sandbox import SqlSignalError
from beton_pipeline.store.tables import replace_rows
from beton_pipeline.warehouse import table_exists

MARTS = ["account_features", "account_event_features", "account_property_features", "account_intent_features", "account_outcomes"]


def _fmt(x, spec: str) -> str:
    return "—" if x is None else format(x, spec)


@dg.asset(
    group_name="signals",
    kinds={"python", "polars", "duckdb"},
    pool=WAREHOUSE_POOL,
    deps=[*MARTS],
    description=(
        "User-defined signals from `signals/*.yml` (conditions on event counts, event properties, CRM/billing "
        "attributes and intent, combined with all/any/not) and `signals/*.sql` (one sandboxed SELECT returning "
        "account_id, optionally fired_at), evaluated on the eligible accounts and counted per cohort month into "
        "`beton.custom_signal_cohort_counts`. The `signals` asset tests them with the discovered candidates in one "
        "Benjamini–Hochberg family and lists them in beton.signals with source = custom; signal_id is a hash of the "
        "normalised definition."
    ),
)
def custom_signals(context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings: SettingsResource) -> dg.MaterializeResult:
    cfg = settings.load()
    directory = signals_dir()
    try:
        signals, counts = compute_custom_cohort_counts(warehouse.resolved_path, cfg, directory)
    except (CustomSignalsError, SignalDefinitionError, SqlSignalError) as exc:
        raise dg.Failure(description=f"custom signals in {directory}:\n{exc}") from None
    with warehouse.connect() as con:
        if counts.height:
            replace_rows(con, CUSTOM_COUNTS_TABLE, counts, "true")
        elif table_exists(con, *CUSTOM_COUNTS_TABLE.split(".")):
            con.execute(f"delete from {CUSTOM_COUNTS_TABLE}")
    return dg.MaterializeResult(
        metadata={
            "signals_dir": str(directory),
            "custom_signals": dg.MetadataValue.int(len(signals)),
            "files": dg.MetadataValue.json([s.origin for s in signals]),
            "definitions": dg.MetadataValue.md("\n".join(f"- `{s.signal_id}` {s.definition}" for s in signals) or "No custom signal."),
        }
    )


def periods_markdown(rows: pl.DataFrame) -> str:
    """A markdown table of one signal's periods."""
    lines = [
        "| cohort | split | fired | converted | precision | recall | lift (95% CI) | projected ARR (95% CI) | enough data |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows.sort("cohort_month").iter_rows(named=True):
        lines.append(
            f"| {r['cohort_month']} | {r['split']} | {r['fired']} | {r['converted']} | {_fmt(r['precision'], '.3f')} "
            f"| {_fmt(r['recall'], '.3f')} | {_fmt(r['lift'], '.2f')} ({_fmt(r['lift_ci_low'], '.2f')}–{_fmt(r['lift_ci_high'], '.2f')}) "
            f"| {_fmt(r['projected_arr'], ',.0f')} ({_fmt(r['projected_arr_ci_low'], ',.0f')}–{_fmt(r['projected_arr_ci_high'], ',.0f')}) "
            f"| {'yes' if r['enough_data'] else 'no'} |"
        )
    return "\n".join(lines)


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
def signal_backtests(context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings: SettingsResource) -> dg.MaterializeResult:
    cfg = settings.load()
    keys = list(context.partition_keys)
    try:
        run = compute_backtests(warehouse.resolved_path, cfg, keys)
    except (SignalDefinitionError, SqlSignalError) as exc:
        raise dg.Failure(description=f"backtest of {', '.join(keys)}: {exc}") from None
    with warehouse.connect() as con:
        write_backtests(con, run.rows, keys)
    if run.missing:
        context.log.warning(f"not in beton.signals any more (backtest rows removed): {', '.join(run.missing)}")
    metadata: dict = {"signals": dg.MetadataValue.int(len(keys) - len(run.missing)), "rows": dg.MetadataValue.int(run.rows.height), "table": BACKTESTS_TABLE}
    if run.rows.height:
        summary = verdicts(run.rows, cfg.backtest_config())
        counts = summary.group_by("verdict").len()
        metadata["verdicts"] = dg.MetadataValue.json(dict(zip(counts.get_column("verdict").to_list(), counts.get_column("len").to_list())))
        if summary.height == 1:
            only = summary.row(0, named=True)
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
            lines = ["| signal | verdict | periods with data | lift > 1 | precision | recall |", "|---|---|---|---|---|---|"]
            for r in summary.iter_rows(named=True):
                lines.append(
                    f"| {r['signal_id']} | {r['verdict']} | {r['periods_with_data']} | {r['periods_lift_above_1']} "
                    f"| {_fmt(r['precision_total'], '.3f')} | {_fmt(r['recall_total'], '.3f')} |"
                )
            metadata["summary"] = dg.MetadataValue.md("\n".join(lines))
    return dg.MaterializeResult(metadata=metadata)
