"""Where each contract table stands (the pages' sources status: `/sources`, `/api/sources/status`): where it comes
from (files or a connector), what the last ingest read, loaded, dropped as duplicates and quarantined (with the
most frequent reasons), and how current it is under the freshness settings. Reads only."""

from __future__ import annotations

import json
from collections.abc import Mapping

import duckdb

from beton_pipeline.settings import Settings
from beton_pipeline.sources.contract import INGESTED_TABLES, TRACKED_EVENTS
from beton_pipeline.sources.ingest import table_freshness
from beton_pipeline.warehouse import STATE_SCHEMA, table_exists

TOP_REASONS = 3
"""Quarantine reasons listed per table (the most frequent)."""


def _ingests(con: duckdb.DuckDBPyConnection) -> dict[str, dict]:
    """source table → its last ingest's state (files, rows read, duplicates) and time."""
    if not table_exists(con, STATE_SCHEMA, "ingest_files"):
        return {}
    rows = con.sql(f"select source_table, state, ingested_at from {STATE_SCHEMA}.ingest_files").fetchall()
    return {table: {**json.loads(state), "ingested_at": at} for table, state, at in rows}


def _quarantine(con: duckdb.DuckDBPyConnection) -> dict[str, dict]:
    """source table → rows quarantined and the most frequent reasons ([reason, rows])."""
    if not table_exists(con, "beton", "quarantine"):
        return {}
    rows = con.sql(
        "select source_table, reason, count(*) as n from beton.quarantine group by 1, 2 order by 1, n desc, reason"
    ).fetchall()
    out: dict[str, dict] = {}
    for table, reason, n in rows:
        entry = out.setdefault(table, {"rows": 0, "reasons": []})
        entry["rows"] += n
        if len(entry["reasons"]) < TOP_REASONS:
            entry["reasons"].append([reason, n])
    return out


def source_status(con: duckdb.DuckDBPyConnection, settings: Settings) -> list[dict]:
    """One entry per contract table and the tracked events: `table`, `required`, `origin` (`files`, the connector
    that pulls it, or `beton serve` for the experiment events it tracked),
    `loaded` rows (None: never ingested), `rows_read`, `duplicates`, `files`, `ingested_at`, `quarantined` and
    `quarantine_reasons`, and freshness (`newest`, `lag_days`, `age_days`, `fresh`, `freshness`: its summary)."""
    pulled: Mapping[str, str] = settings.sources.pulled_tables()
    ingests, quarantine = _ingests(con), _quarantine(con)
    status = []
    for spec in INGESTED_TABLES:
        loaded = (
            con.sql(f"select count(*) from {spec.raw_table}").fetchall()[0][0]
            if table_exists(con, "raw", f"raw_{spec.name}")
            else None
        )
        ingest = ingests.get(spec.name, {})
        bad = quarantine.get(spec.name, {"rows": 0, "reasons": []})
        fresh = table_freshness(con, spec, settings.freshness, settings.windows.as_of) if loaded is not None else None
        status.append(
            {
                "table": spec.name,
                "required": spec.required,
                "origin": "beton serve" if spec.name == TRACKED_EVENTS else pulled.get(spec.name, "files"),
                "loaded": loaded,
                "rows_read": ingest.get("rows_read"),
                "duplicates": ingest.get("duplicates"),
                "files": len(ingest.get("files") or []),
                "ingested_at": ingest.get("ingested_at"),
                "quarantined": bad["rows"],
                "quarantine_reasons": bad["reasons"],
                "newest": fresh.newest if fresh else None,
                "lag_days": fresh.lag_days if fresh else None,
                "age_days": fresh.age_days if fresh else None,
                "fresh": fresh.fresh if fresh else None,
                "freshness": fresh.summary if fresh else "not ingested yet",
            }
        )
    return status
