"""Entries of `beton.account_scores`' explanation columns for tests (`score_entry`), and the table as an
older beton wrote it: the explanation columns as JSON text (VARCHAR).

`json_text` is that encoding, kept here only to build old-shape tables and compare against them: each
entry `struct.json_encode`d with `fired_at` as `YYYY-MM-DDTHH:MM:SSZ` and the contribution as stored, the
entries joined into one JSON array (`[]` for none)."""

from __future__ import annotations

from datetime import datetime

import duckdb
import polars as pl

EXPLANATION_COLUMNS = ("signals_fired", "top_contributions", "intent_contributions")


def score_entry(
    signal_id: str,
    definition: str | None,
    fired_at: datetime | None,
    contribution: float,
    health: str | None = None,
    weight_factor: float | None = None,
    weight_note: str | None = None,
) -> dict:
    """One entry (`store.scoring.SCORE_ENTRY`) as a dict, every field present."""
    return {
        "signal_id": signal_id,
        "definition": definition,
        "fired_at": fired_at,
        "contribution": contribution,
        "health": health,
        "weight_factor": weight_factor,
        "weight_note": weight_note,
    }


def json_text(entries: pl.Expr) -> pl.Expr:
    """A list-of-entries column as the JSON text an older beton stored."""
    encoded = entries.list.eval(
        pl.element().struct.with_fields(pl.field("fired_at").dt.strftime("%Y-%m-%dT%H:%M:%SZ")).struct.json_encode()
    )
    return pl.format("[{}]", encoded.list.join(","))


def as_old_frame(scores: pl.DataFrame) -> pl.DataFrame:
    """`scores` with each explanation column it has as JSON text."""
    return scores.with_columns(json_text(pl.col(c)).alias(c) for c in EXPLANATION_COLUMNS if c in scores.columns)


def write_old_table(con: duckdb.DuckDBPyConnection, scores: pl.DataFrame) -> None:
    """(Re)create `beton.account_scores` in the old shape (VARCHAR explanation columns) holding `scores`."""
    con.execute("create schema if not exists beton")
    con.register("_old_scores", as_old_frame(scores).to_arrow())
    try:
        con.execute("create or replace table beton.account_scores as select * from _old_scores")
    finally:
        con.unregister("_old_scores")
