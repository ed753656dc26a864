"""A plain, row-by-row statement of which candidates fire for which account: the reference the sparse
`core.candidates.candidate_matrix` is tested against (written from the candidate table in that module's
docstring, with no code in common)."""

from __future__ import annotations

from beton_pipeline.core.candidates import (
    ATTRIBUTE_COLUMNS,
    AUTO,
    PROPERTY_THRESHOLDS,
    FeatureFrames,
    FeatureSpec,
    count_grid,
)


def reference_hits(frames: FeatureFrames, spec: FeatureSpec) -> tuple[set[tuple[str, str]], dict[str, dict]]:
    """(every (account_id, key) that fires, every key's description), by looping over the rows."""
    known = set(frames.accounts.get_column("account_id").to_list())
    hits: set[tuple[str, str]] = set()
    described: dict[str, dict] = {}

    def fire(account: str, **columns) -> None:
        if account in known:
            hits.add((account, columns["key"]))
            described.setdefault(columns["key"], columns)

    events = [r for r in frames.events.iter_rows(named=True) if r["event_name"] not in spec.excluded_events]
    if spec.count_thresholds == AUTO:
        counts = [r[f"n_first_{d}d"] or 0 for r in events for d in spec.windows]
        event_thresholds = count_grid(max(counts, default=0))
    else:
        event_thresholds = tuple(spec.count_thresholds)

    def window_text(days: int) -> str:
        text = f"in the first {days} days"
        return text + " (observation window)" if days == spec.observation_days else text

    def counted(rows, thresholds, describe) -> None:
        for row in rows:
            for days in spec.windows:
                for t in thresholds:
                    if row[f"n_first_{days}d"] is not None and row[f"n_first_{days}d"] >= t:
                        fire(row["account_id"], **describe(row, days, t))

    counted(
        events,
        event_thresholds,
        lambda row, days, t: {
            "key": f"event:{row['event_name']}:first_{days}d:>={t}",
            "kind": "event_count",
            "family": f"event:{row['event_name']}",
            "definition": f"`{row['event_name']}` >= {t} {window_text(days)}",
            "event": row["event_name"],
            "property": None,
            "value": None,
            "window_days": days,
            "threshold": t,
        },
    )
    counted(
        frames.properties.iter_rows(named=True),
        PROPERTY_THRESHOLDS,
        lambda row, days, t: {
            "key": f"property:{row['event_name']}:{row['property_name']}={row['property_value']}:first_{days}d:>={t}",
            "kind": "event_property",
            "family": f"property:{row['event_name']}:{row['property_name']}={row['property_value']}",
            "definition": f"`{row['event_name']}` with {row['property_name']} = {row['property_value']} >= {t} "
            f"{window_text(days)}",
            "event": row["event_name"],
            "property": row["property_name"],
            "value": row["property_value"],
            "window_days": days,
            "threshold": t,
        },
    )
    for row in frames.accounts.iter_rows(named=True):
        for column in ATTRIBUTE_COLUMNS:
            if row.get(column) is not None:
                value = str(row[column])
                fire(
                    row["account_id"],
                    key=f"attribute:{column}={value}",
                    kind="attribute",
                    family=f"attribute:{column}={value}",
                    definition=f"{column} = {value}",
                    event=None,
                    property=column,
                    value=value,
                    window_days=None,
                    threshold=None,
                )
    days = spec.intent_lookback_days
    for row in frames.intent.iter_rows(named=True):
        kind = row["signal_type"]
        for column, suffix, definition in (
            ("n_before_start", "before_start", f"{kind} in the {days} days before start"),
            (
                "n_before_window_end",
                "before_window_end",
                f"{kind} from {days} days before start to the end of the observation window",
            ),
        ):
            if row[column] is not None and row[column] >= 1:
                fire(
                    row["account_id"],
                    key=f"intent:{kind}:{suffix}",
                    kind="intent",
                    family=f"intent:{kind}",
                    definition=definition,
                    event=None,
                    property="signal_type",
                    value=kind,
                    window_days=days,
                    threshold=1,
                )
    return hits, described
