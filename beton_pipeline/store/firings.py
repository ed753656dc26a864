"""When each enabled signal fired for each account: the point-in-time moment it became true.

| kind | fired_at |
|---|---|
| `event_count` E ≥ t in the first d days | the t-th occurrence of E, if before start + d days and the window end |
| `event_property` E with P = v ≥ t in d days | the t-th such occurrence, same bounds |
| `attribute` (industry, employee band) | the account's start (known from the CRM) |
| `attribute` plan_interval = v | the creation of the account's first subscription with that plan, if before the window end |
| `intent` T before start / up to the window end | the latest qualifying signal's time |
| `pair` A AND B | the later of the two parts' times |

"Window end" is the account's point-in-time feature window end (`int_account_windows`), so a firing
never uses an event at or after conversion. A live score on day D counts firings strictly before D.

Custom signals fire by the rules of `core.conditions.firing_times_many` (conditions) or at the SQL's
`fired_at` (else the window end); the `custom_signals` asset stores them in `beton.custom_signal_firings`.
`condition_leaf_times` (`condition_leaf_times.sql`) looks up the times their condition leaves need from
the same dbt models.

The runtime-independent part is dbt: `int_event_occurrences` and `int_property_occurrences` number
each account's occurrences of an event (of an event with a configured property value, after its
transform) before the window end; `int_account_subscriptions` and `int_account_intent_signals` hold
the plan and intent inputs. `firings.sql` (beside this module) joins them with the enabled signals,
registered as frames, in one statement over all signals at once; pairs are combined here.
"""

from __future__ import annotations

import duckdb
import polars as pl

from beton_pipeline.core.conditions import LEAF_TIME_SCHEMA
from beton_pipeline.store.tables import sql_beside

FIRING_SCHEMA = {"account_id": pl.String, "signal_id": pl.String, "fired_at": pl.Datetime("us")}

FIRING_INPUTS = (
    "int_event_occurrences",
    "int_property_occurrences",
    "int_account_subscriptions",
    "int_account_intent_signals",
    "account_features",
)
"""The dbt models firings.sql reads (asset keys are model names): deps of every asset that computes firings."""

# The signal frames firings.sql reads, by kind: registered name → columns and types.
_EVENTS = (
    "_beton_sig_events",
    {"signal_id": pl.String, "event": pl.String, "window_days": pl.Int64, "threshold": pl.Int64},
)
_PROPS = (
    "_beton_sig_props",
    {
        "signal_id": pl.String,
        "event": pl.String,
        "property": pl.String,
        "value": pl.String,
        "window_days": pl.Int64,
        "threshold": pl.Int64,
    },
)
_ATTRS = ("_beton_sig_attrs", {"signal_id": pl.String, "property": pl.String, "value": pl.String})
_INTENT = (
    "_beton_sig_intent",
    {"signal_id": pl.String, "value": pl.String, "window_days": pl.Int64, "before_start": pl.Boolean},
)


def _signal_frames(signals: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """The single (non-pair) signals of each kind, as the frames firings.sql joins."""

    def of_kind(kind: str, spec: tuple[str, dict], *columns: pl.Expr | str) -> tuple[str, pl.DataFrame]:
        name, schema = spec
        return name, signals.filter(pl.col("kind") == kind).select(*columns).cast(schema).select(list(schema))

    return dict(
        [
            of_kind("event_count", _EVENTS, "signal_id", "event", "window_days", "threshold"),
            of_kind("event_property", _PROPS, "signal_id", "event", "property", "value", "window_days", "threshold"),
            of_kind("attribute", _ATTRS, "signal_id", "property", "value"),
            of_kind(
                "intent",
                _INTENT,
                "signal_id",
                "value",
                "window_days",
                pl.col("key").str.ends_with(":before_start").alias("before_start"),
            ),
        ]
    )


def signal_firings(con: duckdb.DuckDBPyConnection, signals: pl.DataFrame) -> pl.DataFrame:
    """(account_id, signal_id, fired_at) for every account with events and every signal in `signals`.

    `signals` has signal_id, kind, key, event, property, value, window_days, threshold and, for pairs,
    part_a_id / part_b_id (the parts' signal ids). Property values are compared after the transform
    configured for discovery (dbt's `property_features` var, applied in `int_property_occurrences`). A
    property signal whose (event, property) is not a configured property feature never fires.
    """
    frames = _signal_frames(signals)
    singles = pl.DataFrame(schema=FIRING_SCHEMA)
    if any(frame.height for frame in frames.values()):
        for name, frame in frames.items():
            con.register(name, frame.to_arrow())
        try:
            singles = con.sql(sql_beside(__file__, "firings.sql")).pl().cast(FIRING_SCHEMA)
        finally:
            for name in frames:
                con.unregister(name)
    pairs = signals.filter(pl.col("kind") == "pair")
    if not (pairs.height and singles.height):
        return singles
    a = singles.rename({"signal_id": "part_a_id", "fired_at": "fa"})
    b = singles.rename({"signal_id": "part_b_id", "fired_at": "fb"})
    fired_pairs = (
        pairs.select("signal_id", "part_a_id", "part_b_id")
        .join(a, on="part_a_id")
        .join(b, on=["part_b_id", "account_id"])
        .select("account_id", "signal_id", pl.max_horizontal("fa", "fb").alias("fired_at"))
    )
    return pl.concat([singles, fired_pairs.cast(FIRING_SCHEMA)])


def condition_leaf_times(con: duckdb.DuckDBPyConnection, leaves: pl.DataFrame) -> pl.DataFrame:
    """(leaf, account_id, at) for the timed leaves of custom conditions (`core.conditions.timed_leaves`):
    the n-th occurrence of an event leaf in its first-d-days window, the latest qualifying intent signal,
    the first subscription for plan attributes; every time strictly before the account's window end."""
    if leaves.is_empty():
        return pl.DataFrame(schema=LEAF_TIME_SCHEMA)
    con.register("_beton_condition_leaves", leaves.to_arrow())
    try:
        return con.sql(sql_beside(__file__, "condition_leaf_times.sql")).pl().cast(LEAF_TIME_SCHEMA)
    finally:
        con.unregister("_beton_condition_leaves")
