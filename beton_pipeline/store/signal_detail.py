"""One signal in full, for `beton signals show ID` (and later the web pages), its plain-language names, and
clearing a user's override (`beton signals reset ID`).

* **Names.** `signal_names` gives every signal in beton.signals its plain-language name
  (`core.signal_names.signal_name`; a pair's name from its two parts' rows).
* **Detail.** `read_signal_detail` reads the signal's beton.signals row, its pair parts, its backtest by
  cohort month (beton.signal_backtests), its health history (beton.signal_health) and every override
  recorded for it (beton.signal_overrides). Tables a run has not written yet read as empty.
* **Reset.** `clear_override` appends an override row with `enabled` NULL (who, when, why): the latest
  override then says "no decision", so `enabled` follows the recommendation again, now and after every
  re-run. The history of decisions is kept.

An unknown id raises `UnknownSignalError` whose message suggests the nearest ids (and signals whose
definition mentions the text given).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb
import polars as pl

from beton_pipeline.core.signal_names import signal_name
from beton_pipeline.store.signals import (
    OVERRIDES_DDL,
    OVERRIDES_TABLE,
    SIGNALS_SCHEMA,
    SIGNALS_TABLE,
    UnknownSignalError,
    read_signals,
    set_override,
)
from beton_pipeline.warehouse import table_exists, transaction

HEALTH_HISTORY_DAYS = 14
"""How many of a signal's latest health days `read_signal_detail` returns."""


def _signals_frame(con: duckdb.DuckDBPyConnection, columns: str = "*") -> pl.DataFrame:
    if not table_exists(con, "beton", "signals"):
        return pl.DataFrame(schema=SIGNALS_SCHEMA)
    return con.sql(f"select {columns} from {SIGNALS_TABLE}").pl()


def signal_names(con: duckdb.DuckDBPyConnection, observation_days: int | None = None) -> dict[str, str]:
    """signal id → plain-language name, for every row of beton.signals (empty before the first run)."""
    frame = _signals_frame(con)
    rows = {r["signal_id"]: r for r in frame.iter_rows(named=True)}  # one per signal: a few hundred
    return {sid: signal_name(row, _parts(row, rows), observation_days) for sid, row in rows.items()}


def named_signals(
    con: duckdb.DuckDBPyConnection, include_all: bool = False, observation_days: int | None = None
) -> pl.DataFrame:
    """beton.signals best first (`read_signals`) with each signal's plain-language `name` (its definition when
    no name can be made): what `beton signals` lists and the signal pages show."""
    frame = read_signals(con, include_all=include_all)
    names = signal_names(con, observation_days)
    return frame.with_columns(
        pl.col("signal_id").replace_strict(names, default=pl.col("definition"), return_dtype=pl.String).alias("name")
    )


JSON_ARRAY_COLUMNS = ("alternatives",)
"""beton.signals columns stored as JSON text that JSON answers (`--json`, the HTTP API) give as arrays."""


def json_row(row: dict) -> dict:
    """A beton.signals row for a JSON answer: the JSON-text array columns decoded, so arrays come out as arrays."""
    return {k: (json.loads(v) if k in JSON_ARRAY_COLUMNS and isinstance(v, str) else v) for k, v in row.items()}


def _parts(row: dict, rows: dict[str, dict]) -> tuple[dict, ...]:
    parts = tuple(rows[p] for p in (row.get("part_a_id"), row.get("part_b_id")) if p in rows)
    return parts if len(parts) == 2 else ()


def unknown_signal(con: duckdb.DuckDBPyConnection, signal_id: str) -> UnknownSignalError:
    """The error for an id beton.signals does not hold: the nearest ids, or signals whose definition mentions it."""
    frame = _signals_frame(con, "signal_id, definition")
    if frame.is_empty():
        return UnknownSignalError(f"{signal_id}: beton.signals is empty or missing; run `beton run` first")
    ids = frame.get_column("signal_id").to_list()
    close = difflib.get_close_matches(signal_id, ids, n=3, cutoff=0.8)  # ids share "sig_": 0.6 matches any
    if not close:
        mentions = frame.filter(pl.col("definition").str.contains(signal_id, literal=True))
        close = mentions.get_column("signal_id").head(3).to_list()
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return UnknownSignalError(
        f"{signal_id}: no such signal among the {len(ids):,} in beton.signals{hint} "
        "(`beton signals --all` lists every id)"
    )


def lift_in_words(signal: dict) -> str:
    """Both lifts of a beton.signals row in plain words: "lift 3.1×; among equally active accounts 1.6×
    (95% CI 1.3–2.0)", or why there is no adjusted figure (a custom signal, or one that cannot be separated
    from overall activity)."""
    lift = signal.get("lift")
    marginal = "lift n/a" if lift is None else f"lift {lift:.1f}×"
    if signal.get("adjustment_method") is None:
        return f"{marginal}; not adjusted for overall activity (custom signals are compared with all other accounts)"
    adjusted = signal.get("adjusted_lift")
    low, high = signal.get("adjusted_lift_ci_low"), signal.get("adjusted_lift_ci_high")
    if adjusted is None or low is None or high is None:
        why = signal.get("adjustment_status") or "no activity band has accounts with and without it"
        return f"{marginal}; cannot be separated from overall activity ({why})"
    level = f"{100 * signal['confidence_level']:.0f}%" if signal.get("confidence_level") else "95%"
    return f"{marginal}; among equally active accounts {adjusted:.1f}× ({level} CI {low:.1f}–{high:.1f})"


@dataclass(frozen=True)
class SignalDetail:
    """One signal: its beton.signals row, plain-language name, pair parts (id, name, definition), backtest rows
    by cohort month, its latest `HEALTH_HISTORY_DAYS` health rows (oldest first), and its override history
    (oldest first; `enabled` NULL is a reset)."""

    signal: dict
    name: str
    parts: tuple[dict, ...]
    backtest: pl.DataFrame
    health: pl.DataFrame
    overrides: pl.DataFrame


def _rows_of(con: duckdb.DuckDBPyConnection, schema: str, table: str, signal_id: str, order: str) -> pl.DataFrame:
    if not table_exists(con, schema, table):
        return pl.DataFrame()
    return con.sql(f"select * from {schema}.{table} where signal_id = ? order by {order}", params=[signal_id]).pl()


def read_signal_detail(
    con: duckdb.DuckDBPyConnection, signal_id: str, observation_days: int | None = None
) -> SignalDetail:
    """Everything beton knows about `signal_id` (reads only; works on a read-only connection)."""
    frame = _signals_frame(con)
    found = frame.filter(pl.col("signal_id") == signal_id)
    if found.is_empty():
        raise unknown_signal(con, signal_id)
    row = found.row(0, named=True)
    part_ids = [p for p in (row.get("part_a_id"), row.get("part_b_id")) if p]
    part_rows = tuple(
        frame.filter(pl.col("signal_id") == p).row(0, named=True) for p in part_ids if p in frame["signal_id"]
    )
    parts = part_rows if len(part_rows) == 2 else ()
    health = _rows_of(con, "beton", "signal_health", signal_id, "day desc")
    return SignalDetail(
        signal=row,
        name=signal_name(row, parts, observation_days),
        parts=tuple(
            {"signal_id": p["signal_id"], "name": signal_name(p, (), observation_days), "definition": p["definition"]}
            for p in part_rows
        ),
        backtest=_rows_of(con, "beton", "signal_backtests", signal_id, "cohort_month"),
        health=health.head(HEALTH_HISTORY_DAYS).reverse() if health.height else health,
        overrides=_rows_of(con, "beton", "signal_overrides", signal_id, "changed_at"),
    )


def clear_override(
    con: duckdb.DuckDBPyConnection, signal_id: str, changed_by: str, reason: str | None, now: datetime | None = None
) -> bool:
    """Record that `signal_id` goes back to its recommendation (an override row with `enabled` NULL) and apply
    it to beton.signals at once. Returns the `enabled` it now has."""
    if (
        not table_exists(con, "beton", "signals")
        or not con.sql(f"select count(*) from {SIGNALS_TABLE} where signal_id = ?", params=[signal_id]).fetchall()[0][0]
    ):
        raise unknown_signal(con, signal_id)
    con.execute(OVERRIDES_DDL)
    con.execute(f"alter table {OVERRIDES_TABLE} alter column enabled drop not null")  # NULL = no decision
    now = now or datetime.now(UTC).replace(tzinfo=None)
    with transaction(con):
        con.execute(f"insert into {OVERRIDES_TABLE} values (?, NULL, ?, ?, ?)", [signal_id, changed_by, now, reason])
        con.execute(
            f"update {SIGNALS_TABLE} set enabled = (recommendation = 'enable'), enabled_override = NULL where signal_id = ?",
            [signal_id],
        )
    return bool(
        con.sql(f"select enabled from {SIGNALS_TABLE} where signal_id = ?", params=[signal_id]).fetchall()[0][0]
    )


def record_decision(
    con: duckdb.DuckDBPyConnection, signal_id: str, enabled: bool | None, changed_by: str, reason: str | None
) -> bool:
    """A user's decision on `signal_id` (`beton signals enable|disable|reset`, the signal page's buttons): enable,
    disable, or (`enabled` None) back to the recommendation, recorded with who and why and applied at once. The
    `enabled` the signal has now; UnknownSignalError naming the nearest ids for an unknown one."""
    try:
        if enabled is None:
            return clear_override(con, signal_id, changed_by, reason)
        set_override(con, signal_id, enabled, changed_by, reason)
        return enabled
    except UnknownSignalError:
        raise unknown_signal(con, signal_id) from None
