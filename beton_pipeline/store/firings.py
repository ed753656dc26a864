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
Computed in one SQL statement per kind over all enabled signals at once (DuckDB), not per signal.
"""

from __future__ import annotations

import duckdb
import polars as pl

FIRING_SCHEMA = {"account_id": pl.String, "signal_id": pl.String, "fired_at": pl.Datetime("us")}


def _register(con: duckdb.DuckDBPyConnection, name: str, frame: pl.DataFrame) -> None:
    con.register(name, frame.to_arrow())


def signal_firings(con: duckdb.DuckDBPyConnection, signals: pl.DataFrame, property_transforms: dict[tuple[str, str], str]) -> pl.DataFrame:
    """(account_id, signal_id, fired_at) for every account with events and every signal in `signals`.

    `signals` has signal_id, kind, event, property, value, window_days, threshold and, for pairs,
    part_a_id / part_b_id (the parts' signal ids). `property_transforms` maps (event, property) to
    `url_path` or `none`, as configured for discovery.
    """
    parts: list[pl.DataFrame] = []
    singles = signals.filter(pl.col("kind") != "pair")
    events = singles.filter(pl.col("kind") == "event_count").select("signal_id", "event", "window_days", "threshold")
    if events.height:
        _register(con, "_beton_sig_events", events)
        parts.append(
            con.sql(
                """
                with wanted as (
                    select e.account_id, e.event_name, e.occurred_at, e.event_id
                    from intermediate.int_events_resolved e
                    join intermediate.int_account_windows w using (account_id)
                    where e.event_name in (select event from _beton_sig_events) and e.occurred_at < w.feature_window_end_at
                ),
                ranked as (
                    select *, row_number() over (partition by account_id, event_name order by occurred_at, event_id) as nth
                    from wanted
                )
                select r.account_id, s.signal_id, r.occurred_at as fired_at
                from ranked r
                join _beton_sig_events s on s.event = r.event_name and s.threshold = r.nth
                join intermediate.int_account_windows w on w.account_id = r.account_id
                where r.occurred_at < w.started_at + to_days(cast(s.window_days as integer))
                """
            ).pl()
        )
        con.unregister("_beton_sig_events")
    props = singles.filter(pl.col("kind") == "event_property").select("signal_id", "event", "property", "value", "window_days", "threshold")
    if props.height:
        props = props.with_columns(
            pl.struct("event", "property").map_elements(lambda s: property_transforms.get((s["event"], s["property"]), "none"), return_dtype=pl.String).alias("transform")
        )
        _register(con, "_beton_sig_props", props)
        parts.append(
            con.sql(
                """
                with wanted as (
                    select e.account_id, e.event_id, e.occurred_at, s.signal_id, s.threshold, s.window_days,
                           json_extract_string(e.properties, '$."' || s.property || '"') as raw_value, s.transform, s.value
                    from intermediate.int_events_resolved e
                    join _beton_sig_props s on s.event = e.event_name
                    join intermediate.int_account_windows w on w.account_id = e.account_id
                    where e.occurred_at < w.feature_window_end_at
                ),
                matched as (
                    select * from wanted
                    where case when transform = 'url_path'
                               then regexp_replace(raw_value, '^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*|[?#].*$', '', 'g')
                               else raw_value end = value
                ),
                ranked as (
                    select *, row_number() over (partition by account_id, signal_id order by occurred_at, event_id) as nth from matched
                )
                select r.account_id, r.signal_id, r.occurred_at as fired_at
                from ranked r join intermediate.int_account_windows w using (account_id)
                where r.nth = r.threshold and r.occurred_at < w.started_at + to_days(cast(r.window_days as integer))
                """
            ).pl()
        )
        con.unregister("_beton_sig_props")
    attrs = singles.filter(pl.col("kind") == "attribute").select("signal_id", "property", "value")
    if attrs.height:
        _register(con, "_beton_sig_attrs", attrs)
        parts.append(
            con.sql(
                """
                select f.account_id, s.signal_id, f.started_at as fired_at
                from marts.account_features f
                join _beton_sig_attrs s on (s.property = 'industry' and f.industry = s.value)
                                        or (s.property = 'employee_band' and f.employee_band = s.value)
                union all
                select f.account_id, s.signal_id, greatest(f.started_at, p.first_created_at) as fired_at
                from marts.account_features f
                join (
                    select k.account_id, sub.plan_interval, min(sub.created_at) as first_created_at
                    from staging.stg_stripe__subscriptions sub
                    join staging.stg_stripe__customers c using (customer_id)
                    join intermediate.int_account_keys k
                      on k.match_key = coalesce(c.metadata_company_domain, lower(substr(c.email, instr(c.email, '@') + 1)))
                     and k.key_type in ('crm_domain', 'product_group_key')
                    group by 1, 2
                ) p on p.account_id = f.account_id
                join _beton_sig_attrs s on s.property = 'plan_interval' and s.value = p.plan_interval
                where p.first_created_at < f.feature_window_end_at
                """
            ).pl()
        )
        con.unregister("_beton_sig_attrs")
    intents = singles.filter(pl.col("kind") == "intent").select("signal_id", "value", "window_days", pl.col("key").str.ends_with(":before_start").alias("before_start"))
    if intents.height:
        _register(con, "_beton_sig_intent", intents)
        parts.append(
            con.sql(
                """
                select w.account_id, s.signal_id, max(i.occurred_at) as fired_at
                from staging.stg_intent__signals i
                join intermediate.int_accounts a on a.domain = i.company_domain
                join intermediate.int_account_windows w on w.account_id = a.account_id
                join _beton_sig_intent s on s.value = i.signal_type
                where i.occurred_at >= w.started_at - to_days(cast(s.window_days as integer))
                  and i.occurred_at < case when s.before_start then w.started_at else w.feature_window_end_at end
                group by 1, 2
                """
            ).pl()
        )
        con.unregister("_beton_sig_intent")
    singles_fired = pl.concat([p.cast(FIRING_SCHEMA) for p in parts]) if parts else pl.DataFrame(schema=FIRING_SCHEMA)
    pairs = signals.filter(pl.col("kind") == "pair")
    if pairs.height and singles_fired.height:
        a = singles_fired.rename({"signal_id": "part_a_id", "fired_at": "fa"})
        b = singles_fired.rename({"signal_id": "part_b_id", "fired_at": "fb"})
        fired_pairs = (
            pairs.select("signal_id", "part_a_id", "part_b_id")
            .join(a, on="part_a_id")
            .join(b, on=["part_b_id", "account_id"])
            .select("account_id", "signal_id", pl.max_horizontal("fa", "fb").alias("fired_at"))
        )
        return pl.concat([singles_fired, fired_pairs.cast(FIRING_SCHEMA)])
    return singles_fired
