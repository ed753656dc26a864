"""The `beton events` catalogue: what custom signal conditions can name, read from the marts.

Events, property values, attributes and intent types with their counts and top values, so a
person writing `signals/*.yml` sees the vocabulary `core.conditions` checks against.
"""

from __future__ import annotations

import duckdb
import polars as pl

from beton_pipeline.core.conditions import ATTRIBUTE_TYPES
from beton_pipeline.settings import Settings
from beton_pipeline.warehouse import table_exists


def event_catalog(con: duckdb.DuckDBPyConnection, settings: Settings, top: int = 10) -> dict:
    """Events, property values, attributes and intent types in the marts, with counts and top values.

    events: per event, the accounts with it and its count before the feature window end;
    properties: per configured property feature, its top values (accounts, events);
    raw_property_keys: property keys seen on resolved events (usable after adding them to
    `discovery.property_features`); attributes: top values (strings) or min/median/max (numbers);
    intent: accounts with each type before start and up to the window end; windows and lookback.
    """
    events = con.sql(
        "select event_name as event, count(distinct account_id) as accounts, sum(n_in_window) as events "
        "from marts.account_event_features group by 1 order by accounts desc, event"
    ).pl()
    properties = con.sql(
        f"""select event, property, value, accounts, events from (
              select event_name as event, property_name as property, property_value as value,
                     count(distinct account_id) as accounts, sum(n_in_window) as events,
                     row_number() over (partition by event_name, property_name order by count(distinct account_id) desc, property_value) as rk
              from marts.account_property_features group by 1, 2, 3)
            where rk <= {int(top)} order by event, property, accounts desc, value"""
    ).pl()
    configured = {(p.event, p.property) for p in settings.discovery.property_features}
    raw_keys = (
        con.sql(
            """select event_name as event, key as property, count(*) as events from (
              select e.event_name, unnest(json_keys(r.properties)) as key
              from intermediate.int_events_resolved as e join raw.raw_events as r on r.uuid = e.event_id
              where e.account_id is not null and r.properties is not null and json_type(r.properties) = 'OBJECT')
            group by 1, 2 order by events desc, event, property"""
        ).pl()
        if table_exists(con, "intermediate", "int_events_resolved") and table_exists(con, "raw", "raw_events")
        else pl.DataFrame(schema={"event": pl.String, "property": pl.String, "events": pl.Int64})
    )
    usable = pl.DataFrame(
        {
            "event": [e for e, _ in configured],
            "property": [p for _, p in configured],
            "usable": [True] * len(configured),
        },
        schema={"event": pl.String, "property": pl.String, "usable": pl.Boolean},
    )
    raw_keys = raw_keys.join(usable, on=["event", "property"], how="left", maintain_order="left").with_columns(
        pl.col("usable").fill_null(False)
    )
    attributes = []
    for name, kind in ATTRIBUTE_TYPES.items():
        if kind == "number":
            row = con.sql(
                f"select count({name}), min({name}), median({name}), max({name}) from marts.account_features"
            ).fetchall()[0]
            attributes.append(
                {"attribute": name, "type": kind, "accounts": row[0], "min": row[1], "median": row[2], "max": row[3]}
            )
        else:
            values = con.sql(
                f"select cast({name} as varchar), count(*) from marts.account_features where {name} is not null group by 1 order by 2 desc, 1 limit {int(top)}"
            ).fetchall()
            attributes.append(
                {
                    "attribute": name,
                    "type": kind,
                    "accounts": sum(n for _, n in values),
                    "top_values": [{"value": v, "accounts": n} for v, n in values],
                }
            )
    intent = con.sql(
        "select signal_type as intent, count(*) filter (where n_before_start > 0) as accounts_before_start, "
        "count(*) filter (where n_before_window_end > 0) as accounts_before_window_end "
        "from marts.account_intent_features group by 1 order by 2 desc, 1"
    ).pl()
    return {
        "windows_days": list(settings.feature_windows),
        "observation_days": settings.windows.observation_days,
        "intent_lookback_days": settings.discovery.intent_lookback_days,
        "events": events.to_dicts(),
        "properties": properties.to_dicts(),
        "raw_property_keys": raw_keys.to_dicts(),
        "attributes": attributes,
        "intent": intent.to_dicts(),
    }
