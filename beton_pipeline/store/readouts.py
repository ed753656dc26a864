"""Readouts, warehouse side: did a playbook help (treated vs held out), and which experiment variant converts.

* Holdout readouts (`beton.playbook_readouts`): per account playbook, the accounts the outbox
  assigned (treated or randomized held out, dry runs excluded) joined to `marts.account_outcomes`,
  counted by `core.readouts.assignment_counts` and compared by `core.readouts.treatment_readout`.
* Experiment readouts (`beton.experiment_readouts`): per experiment in beton.yaml, exposures and
  conversions per variant from the dbt model `intermediate.int_experiment_exposures` and the goal
  events in `intermediate.int_events_resolved` (the query in `readouts.sql`, which holds only what
  depends on the experiment: flag, goal event, period, conversion window), read out by
  `core.readouts.experiment_readout_from_counts`.

Both tables are recomputed whole on every run.
"""

from __future__ import annotations

from datetime import datetime

import duckdb
import polars as pl

from beton_pipeline.core.playbooks import Experiment, Playbook, PlaybookConfig
from beton_pipeline.core.readouts import (
    ExperimentReadout,
    assignment_counts,
    experiment_readout_from_counts,
    treatment_readout,
)
from beton_pipeline.store.outbox import ACTIONS_TABLE
from beton_pipeline.store.tables import as_of_time, sql_beside
from beton_pipeline.warehouse import table_exists

PLAYBOOK_READOUTS_TABLE = "beton.playbook_readouts"
EXPERIMENT_READOUTS_TABLE = "beton.experiment_readouts"
EXPERIMENT_COUNTS_SQL = sql_beside(__file__, "readouts.sql")


def replace_table(con: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame | None) -> None:
    """Replace a fully recomputed table with ``frame`` in one statement; None empties it (if it exists)."""
    schema, name = table.split(".")
    if frame is None:
        if table_exists(con, schema, name):
            con.execute(f"delete from {table}")
        return
    con.execute(f"create schema if not exists {schema}")
    con.register("_beton_readout", frame.to_arrow())
    try:
        con.execute(f"create or replace table {table} as select * from _beton_readout")
    finally:
        con.unregister("_beton_readout")


# ------------------------------------------------------------------------------------------------
# Holdout readouts
# ------------------------------------------------------------------------------------------------
def read_assignments(con: duckdb.DuckDBPyConnection, playbook: str) -> tuple[pl.DataFrame, datetime | None]:
    """Per account assigned to ``playbook`` (dry runs excluded): arm, first day, conversion; and as-of."""
    if not table_exists(con, "beton", "playbook_actions"):
        return pl.DataFrame(), None
    frame = con.sql(
        f"""
        with assigned as (
            select account_id, bool_or(held_out) as held_out, min(day) as first_day
            from {ACTIONS_TABLE}
            where playbook = ? and account_id is not null and status <> 'dry_run'
            group by account_id
        )
        select a.account_id, a.held_out, a.first_day, cast(o.converted_at as timestamp) as converted_at,
               o.account_id is not null as known_account
        from assigned a left join marts.account_outcomes o on o.account_id = a.account_id
        order by a.account_id
        """,
        params=[playbook],
    ).pl()
    as_of = as_of_time(con)
    return frame, as_of


def playbook_readout_row(
    con: duckdb.DuckDBPyConnection, playbook: Playbook, conversion_window_days: int, confidence_level: float
) -> dict:
    """One row of ``beton.playbook_readouts``: the holdout readout of an account playbook."""
    window = playbook.readout_window_days or conversion_window_days
    assigned, as_of = read_assignments(con, playbook.name)
    counts = assignment_counts(assigned, as_of, window)
    r = treatment_readout(
        counts.conversions_treated,
        counts.n_treated,
        counts.conversions_held_out,
        counts.n_held_out,
        playbook.effective_holdout_fraction,
        confidence_level,
    )
    return {
        "playbook": playbook.name,
        "as_of": as_of,
        "holdout_fraction": playbook.effective_holdout_fraction,
        "readout_window_days": window,
        "n_treated": r.n_treated,
        "conversions_treated": r.conversions_treated,
        "rate_treated": r.rate_treated,
        "n_held_out": r.n_held_out,
        "conversions_held_out": r.conversions_held_out,
        "rate_held_out": r.rate_held_out,
        "rate_diff": r.rate_diff,
        "diff_ci_low": r.diff_ci_low,
        "diff_ci_high": r.diff_ci_high,
        "lift": r.lift,
        "lift_ci_low": r.lift_ci_low,
        "lift_ci_high": r.lift_ci_high,
        "p_value": r.p_value,
        "method": r.method,
        "significant": r.significant,
        "confidence_level": r.confidence_level,
        "observed_holdout_fraction": r.observed_holdout_fraction,
        "srm_pvalue": r.srm_pvalue,
        "srm_flag": r.srm_flag,
        "small_sample": r.small_sample,
        "warnings": "; ".join(r.warnings),
        "n_awaiting_outcome": counts.n_awaiting_outcome,
        "n_converted_before": counts.n_converted_before,
        "n_unknown_account": counts.n_unknown_account,
    }


def write_playbook_readouts(
    con: duckdb.DuckDBPyConnection, config: PlaybookConfig, conversion_window_days: int, confidence_level: float
) -> list[dict]:
    """Recompute ``beton.playbook_readouts`` (one row per account playbook, enabled or not); returns the rows."""
    rows = [
        playbook_readout_row(con, pb, conversion_window_days, confidence_level)
        for pb in config.playbooks
        if pb.kind == "account"
    ]
    replace_table(con, PLAYBOOK_READOUTS_TABLE, pl.DataFrame(rows, infer_schema_length=None) if rows else None)
    return rows


# ------------------------------------------------------------------------------------------------
# Experiment readouts
# ------------------------------------------------------------------------------------------------
def experiment_counts(con: duckdb.DuckDBPyConnection, experiment: Experiment) -> tuple[pl.DataFrame, dict]:
    """Exposures and conversions per variant of one experiment (``readouts.sql``).

    Exposure = a user's first ``$feature_flag_called`` for the flag within [start, end) when given
    (``int_experiment_exposures``); variant = its response. Conversion = the goal event by the same
    ``distinct_id`` strictly after that exposure (and within ``conversion_window_days`` when given,
    counting only users exposed at least that long before the last exported event: events tracked by `beton
    serve` count as exposures and conversions but do not move that horizon). Returns the counts per
    variant (``variant``, ``exposures``, ``conversions``) and diagnostics: users who saw more than
    one variant, users still inside their window.
    """
    tracked = con.sql(
        "select count(*) from information_schema.columns where table_schema = 'intermediate' "
        "and table_name = 'int_events_resolved' and column_name = 'is_tracked'"
    ).fetchall()[0][0]
    frame = con.sql(
        EXPERIMENT_COUNTS_SQL.replace("{exported_only}", "where not is_tracked" if tracked else ""),
        params={
            "flag": experiment.flag,
            "goal_event": experiment.goal_event,
            "period_start": experiment.start,
            "period_end": experiment.end,
            "window_days": experiment.conversion_window_days,
        },
    ).pl()
    diagnostics = {
        "saw_several_variants": int(frame.get_column("saw_several").sum()) if frame.height else 0,
        "awaiting_window": int(frame.get_column("awaiting").sum()) if frame.height else 0,
    }
    return frame.select("variant", "exposures", "conversions"), diagnostics


def write_experiment_readouts(
    con: duckdb.DuckDBPyConnection, config: PlaybookConfig, confidence_level: float
) -> tuple[list[ExperimentReadout], dict[str, str]]:
    """Recompute ``beton.experiment_readouts`` (one row per experiment and variant); returns the readouts and,
    by experiment, why one could not be read out (it is left out; the others are written)."""
    readouts, failed = [], {}
    for experiment in config.experiments:
        try:
            counts, diagnostics = experiment_counts(con, experiment)
            readouts.append(experiment_readout_from_counts(experiment, counts, diagnostics, confidence_level))
        except (ValueError, duckdb.Error) as exc:
            failed[experiment.name] = " ".join(str(exc).split())[:500]
    replace_table(
        con,
        EXPERIMENT_READOUTS_TABLE,
        pl.concat([r.table for r in readouts], how="vertical_relaxed") if readouts else None,
    )
    return readouts, failed


def read_playbook_readouts(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """beton.playbook_readouts (one row per playbook: treated vs held out); empty before the first readout."""
    if not table_exists(con, "beton", "playbook_readouts"):
        return pl.DataFrame()
    return con.sql("select * from beton.playbook_readouts order by playbook").pl()
