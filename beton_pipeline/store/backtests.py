"""`beton.signal_backtests`: each signal re-measured on every closed cohort month (core/backtest.py).

* **Which signals.** Enabled discovered signals and every custom signal of beton.signals (one
  `signals` partition each), and ad hoc definitions from the launchpad or `beton backtest`.
* **How they fire.** Discovered signals are re-evaluated with discovery's own candidate code
  (`discovered_fired`), so their counts are exactly discovery's; custom signals are rebuilt from
  their `candidate_key` (`store.custom_signals.signal_from_key`) and evaluated like the
  `custom_signals` asset does.
* **Writes.** `write_backtests` replaces exactly the rows of the signal ids it was given, in one
  transaction, and drops rows of signals that no longer get a backtest (launchpad rows stay).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

from beton_pipeline.core.backtest import BACKTEST_SCHEMA, backtest, verdicts
from beton_pipeline.core.candidates import FeatureFrames, candidate_matrix, pair_parts
from beton_pipeline.core.discovery import HoldoutSplit, cohort_labels, temporal_split
from beton_pipeline.settings import Settings
from beton_pipeline.store.custom_signals import (
    CustomSignal,
    evaluate_custom_signals,
    guess_kind,
    load_definition,
    read_account_frames,
    read_vocabulary,
    signal_from_key,
)
from beton_pipeline.store.signals import SIGNALS_TABLE, custom_signal_rows, latest_overrides, signals_table_rows
from beton_pipeline.store.tables import as_of_time, replace_rows
from beton_pipeline.warehouse import connect, table_exists

BACKTESTS_TABLE = "beton.signal_backtests"
BACKTESTS_SCHEMA: dict[str, pl.DataType] = {
    "signal_id": pl.String(),
    "source": pl.String(),
    "definition": pl.String(),
    "origin": pl.String(),
    **{k: v for k, v in BACKTEST_SCHEMA.items() if k != "signal_id"},
    "verdict": pl.String(),
    "verdict_reason": pl.String(),
    "periods_with_data": pl.Int64(),
    "periods_lift_above_1": pl.Int64(),
    "heterogeneity_p": pl.Float64(),
    "confidence_level": pl.Float64(),
    "as_of": pl.Datetime("us"),
}
"""beton.signal_backtests, column by column (one row per signal × cohort month; core/backtest.py explains each)."""
BACKTEST_META_SCHEMA = {"signal_id": pl.String, "source": pl.String, "definition": pl.String, "origin": pl.String}
LAUNCHPAD = "launchpad"
"""The `origin` of ad hoc backtests from the launchpad: kept when beton.signals changes."""
BACKTESTED = "source = 'custom' or (source = 'discovered' and enabled)"
"""Which beton.signals rows get a backtest (one `signals` partition each): enabled discovered signals and all custom ones."""


# ------------------------------------------------------------------------------------------------
# Which accounts each signal fired for
# ------------------------------------------------------------------------------------------------
def discovered_fired(frames: FeatureFrames, keys: list[str], settings: Settings) -> np.ndarray:
    """accounts × keys booleans for discovered candidates (singles and pairs), with discovery's own candidate code."""
    needed = {k for k in keys if not k.startswith("pair:")}
    for key in keys:  # a pair's halves are two single keys split at one of its `&`s: build every split's halves
        if key.startswith("pair:"):
            body = key.removeprefix("pair:")
            needed.update(h for i, ch in enumerate(body) if ch == "&" for h in (body[:i], body[i + 1 :]))
    matrix = candidate_matrix(frames, settings.feature_spec(), keys=needed)
    column = {k: i for i, k in enumerate(matrix.candidates.get_column("key").to_list())}
    parts = {k: pair_parts(k, set(column)) for k in keys if k.startswith("pair:")}
    dense = matrix.matrix.tocsc()
    out = np.zeros((frames.accounts.height, len(keys)), dtype=bool)

    def col(k: str) -> np.ndarray:
        if k not in column:  # fired for no eligible account
            return np.zeros(frames.accounts.height, dtype=bool)
        return dense[:, column[k]].toarray().ravel() > 0

    for j, key in enumerate(keys):  # one column per requested signal (a handful), not per account
        if key.startswith("pair:"):
            pair = parts[key]
            out[:, j] = col(pair[0]) & col(pair[1]) if pair else False
        else:
            out[:, j] = col(key)
    return out


# ------------------------------------------------------------------------------------------------
# Rows and writes
# ------------------------------------------------------------------------------------------------
def backtest_rows(
    fired: np.ndarray,
    signal_ids: list[str],
    frames: FeatureFrames,
    settings: Settings,
    split: HoldoutSplit,
    meta: pl.DataFrame,
    as_of,
) -> pl.DataFrame:
    """beton.signal_backtests rows for the signals of `fired` (accounts × signals), labelled from `meta`
    (signal_id, source, definition, origin)."""
    periods = backtest(
        fired,
        signal_ids,
        cohort_labels(frames),
        frames.accounts.get_column("converted").to_numpy().astype(bool),
        frames.accounts.get_column("arr").fill_null(0).to_numpy().astype(np.float64),
        settings.backtest_config(),
        holdout_periods=split.holdout_months,
    )
    rows = meta.join(periods, on="signal_id", how="inner").with_columns(
        pl.lit(settings.thresholds.confidence_level).alias("confidence_level"),
        pl.lit(as_of, pl.Datetime("us")).alias("as_of"),
    )
    return rows.select(list(BACKTESTS_SCHEMA)).cast(BACKTESTS_SCHEMA).sort("signal_id", "cohort_month")


def write_backtests(con: duckdb.DuckDBPyConnection, rows: pl.DataFrame, signal_ids: list[str]) -> None:
    """Replace exactly the beton.signal_backtests rows of `signal_ids` with `rows` (one transaction)."""
    frame = (
        rows.select(list(BACKTESTS_SCHEMA)).cast(BACKTESTS_SCHEMA)
        if rows.height
        else pl.DataFrame(schema=BACKTESTS_SCHEMA)
    )
    placeholders = ", ".join("?" for _ in signal_ids) or "null"
    replace_rows(con, BACKTESTS_TABLE, frame, f"signal_id in ({placeholders})", list(signal_ids))
    # Signals that no longer get a backtest (disabled, or their file removed) leave no stale rows behind.
    con.execute(
        f"delete from {BACKTESTS_TABLE} where coalesce(origin, '') <> '{LAUNCHPAD}' and signal_id not in "
        f"(select signal_id from {SIGNALS_TABLE} where {BACKTESTED})"
    )


def backtested_signal_ids(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The signals that get a backtest (`BACKTESTED`), by id; none before beton.signals exists."""
    if not table_exists(con, "beton", "signals"):
        return []
    return [
        r[0] for r in con.sql(f"select signal_id from {SIGNALS_TABLE} where {BACKTESTED} order by signal_id").fetchall()
    ]


def backtest_meta(signals: list[CustomSignal], source: str = "custom") -> pl.DataFrame:
    """The label columns of beton.signal_backtests for custom signals."""
    return pl.DataFrame(
        {
            "signal_id": [s.signal_id for s in signals],
            "source": [source] * len(signals),
            "definition": [s.definition for s in signals],
            "origin": [s.origin for s in signals],
        },
        schema=BACKTEST_META_SCHEMA,
    )


# ------------------------------------------------------------------------------------------------
# One ad hoc definition (`beton backtest`, the launchpad's custom_backtest_job)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SingleBacktest:
    """One custom signal, tested and backtested: its beton.signals row and its periods."""

    signal: CustomSignal
    signal_row: pl.DataFrame
    periods: pl.DataFrame
    split: HoldoutSplit


def backtest_definition(
    text: str,
    origin: str,
    kind: str,
    settings: Settings,
    warehouse: Path,
    timeout_seconds: float = 30.0,
    lock_wait_seconds: float | None = None,
) -> SingleBacktest:
    """Load one definition (`kind`: `condition`, `sql` or `auto`), evaluate it on the eligible accounts, and
    compute its beton.signals row (q over this one signal) and its per-period backtest. Writes nothing.
    `lock_wait_seconds` bounds the wait for a run's write lock (None: the warehouse's default).

    Raises SignalDefinitionError / SqlSignalError (SqlSignalRefused) with a one-line reason.
    """
    kind = guess_kind(text) if kind == "auto" else kind
    with connect(warehouse, read_only=True, wait_seconds=lock_wait_seconds) as con:
        vocab = read_vocabulary(con, settings) if kind == "condition" else None
        frames = read_account_frames(con, settings)
        overrides = latest_overrides(con)
        as_of = as_of_time(con)
    signal = load_definition(text, origin, kind, vocab)
    evaluated = evaluate_custom_signals([signal], frames, warehouse, timeout_seconds)
    rows, split = custom_signal_rows(evaluated, frames, settings)
    signal_row = signals_table_rows(rows, overrides, settings.thresholds.confidence_level, as_of)
    periods = backtest_rows(
        evaluated.fired, [signal.signal_id], frames, settings, split, backtest_meta([signal]), as_of
    )
    return SingleBacktest(signal=signal, signal_row=signal_row, periods=periods, split=split)


def record_launchpad_backtest(
    text: str, kind: str, settings: Settings, warehouse: Path, timeout_seconds: float = 30.0
) -> SingleBacktest:
    """`backtest_definition` of a launchpad definition, its periods written to beton.signal_backtests
    (origin = launchpad; beton.signals is not changed). Returns the backtest with those periods."""
    result = backtest_definition(text, LAUNCHPAD, kind, settings, warehouse, timeout_seconds)
    periods = result.periods.with_columns(pl.lit(LAUNCHPAD).alias("origin"))
    with connect(warehouse) as con:
        write_backtests(con, periods, [result.signal.signal_id])
    return SingleBacktest(signal=result.signal, signal_row=result.signal_row, periods=periods, split=result.split)


# ------------------------------------------------------------------------------------------------
# The signal_backtests asset: reads first, then the sandbox, then the writer
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BacktestRun:
    """Backtest rows for the requested signal ids, the ids no longer in beton.signals (their rows are
    removed), and one verdict row per signal backtested (`core.backtest.verdicts`)."""

    rows: pl.DataFrame
    missing: list[str]
    summary: pl.DataFrame | None = None


def compute_backtests(
    warehouse: Path, settings: Settings, signal_ids: list[str], timeout_seconds: float = 30.0
) -> BacktestRun:
    """Backtest the given beton.signals ids (discovered with discovery's candidate code, custom from their key)."""
    with connect(warehouse, read_only=True) as con:
        known = _known_signals(con, signal_ids)
        frames = read_account_frames(con, settings)
        custom_rows = known.filter(pl.col("source") == "custom")
        vocab = read_vocabulary(con, settings) if custom_rows.height else None
        as_of = as_of_time(con)
    missing = sorted(set(signal_ids) - set(known.get_column("signal_id").to_list()))
    discovered = known.filter(pl.col("source") == "discovered")
    custom = [
        signal_from_key(r["candidate_key"], f"beton.signals {r['signal_id']}", r["definition"], vocab)
        for r in custom_rows.iter_rows(named=True)
    ]
    parts, ids = [], []
    if discovered.height:
        parts.append(discovered_fired(frames, discovered.get_column("candidate_key").to_list(), settings))
        ids += discovered.get_column("signal_id").to_list()
    if custom:
        parts.append(evaluate_custom_signals(custom, frames, warehouse, timeout_seconds).fired)
        ids += [r["signal_id"] for r in custom_rows.iter_rows(named=True)]
    if not ids:
        return BacktestRun(rows=pl.DataFrame(schema=BACKTESTS_SCHEMA), missing=missing)
    fired = np.column_stack(parts)
    split = temporal_split(cohort_labels(frames), settings.windows.holdout_fraction)
    meta = known.select(
        "signal_id",
        "source",
        "definition",
        pl.when(pl.col("source") == "custom")
        .then(pl.lit("signals folder"))
        .otherwise(pl.lit("discovery"))
        .alias("origin"),
    )
    rows = backtest_rows(fired, ids, frames, settings, split, meta, as_of)
    return BacktestRun(rows=rows, missing=missing)


def _known_signals(con: duckdb.DuckDBPyConnection, signal_ids: list[str]) -> pl.DataFrame:
    """signal_id, source, candidate_key, definition of those of `signal_ids` that beton.signals holds."""
    schema = {"signal_id": pl.String, "source": pl.String, "candidate_key": pl.String, "definition": pl.String}
    if not table_exists(con, "beton", "signals"):
        return pl.DataFrame(schema=schema)
    wanted = pl.DataFrame({"signal_id": sorted(set(signal_ids))}, schema={"signal_id": pl.String})
    con.register("_wanted", wanted.to_arrow())
    try:
        return con.sql(
            f"select s.signal_id, s.source, s.candidate_key, s.definition from {SIGNALS_TABLE} s "
            "join _wanted using (signal_id) order by s.signal_id"
        ).pl()
    finally:
        con.unregister("_wanted")


def run_backtests(
    warehouse: Path, settings: Settings, signal_ids: list[str], timeout_seconds: float = 30.0
) -> BacktestRun:
    """What the `signal_backtests` asset does: backtest `signal_ids` (reading only), then replace exactly their
    rows of beton.signal_backtests (the writer opens last: SQL signals' sandbox needs the file to itself)."""
    run = compute_backtests(warehouse, settings, signal_ids, timeout_seconds)
    with connect(warehouse) as con:
        write_backtests(con, run.rows, signal_ids)
    summary = verdicts(run.rows, settings.backtest_config()) if run.rows.height else None
    return BacktestRun(rows=run.rows, missing=run.missing, summary=summary)
