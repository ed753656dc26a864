-- When each leaf of the custom condition signals became true, per account (store/firings.py,
-- `condition_leaf_times`; the rules are core.conditions.firing_times_many's). Reads the registered
-- frame _beton_condition_leaves (core.conditions.timed_leaves, one row per leaf) and the same dbt
-- models as firings.sql, so a leaf's time exists exactly where the marts' counts make it true.

-- event E (optionally with property P in a set of values) counted >= nth in the first d days: the
-- nth such occurrence (occurrences stop at the feature window end; ties by event id, as the marts)
select s.leaf, o.account_id, o.occurred_at as at
from _beton_condition_leaves as s
join intermediate.int_event_occurrences as o on o.event_name = s.event and o.occurrence_number = s.nth
where s.kind = 'event' and s.property is null
  and o.occurred_at < o.started_at + to_days(cast(s.window_days as integer))

union all

select leaf, account_id, occurred_at as at
from (
    select
        s.leaf,
        s.nth,
        o.account_id,
        o.occurred_at,
        row_number() over (partition by s.leaf, o.account_id order by o.occurred_at, o.event_id) as n
    from _beton_condition_leaves as s
    join intermediate.int_property_occurrences as o
      on o.event_name = s.event and o.property_name = s.property and list_contains(s.values, o.property_value)
    where s.kind = 'event' and s.property is not null
      and o.occurred_at < o.started_at + to_days(cast(s.window_days as integer))
) as numbered
where n = nth

union all

-- intent: the latest qualifying signal from lookback_days before the start until the start / the window end
select s.leaf, i.account_id, max(i.occurred_at) as at
from _beton_condition_leaves as s
join intermediate.int_account_intent_signals as i on i.signal_type = s.signal_type
where s.kind = 'intent'
  and i.occurred_at >= i.started_at - to_days(cast(s.lookback_days as integer))
  and i.occurred_at < case when s.until = 'start' then i.started_at else i.feature_window_end_at end
group by s.leaf, i.account_id

union all

-- plan attributes: the account's first subscription created before its window end (what
-- marts.account_features.plan_interval and plan_annualized_amount describe)
select s.leaf, f.account_id, min(p.created_at) as at
from _beton_condition_leaves as s
cross join marts.account_features as f
join intermediate.int_account_subscriptions as p on p.account_id = f.account_id
where s.kind = 'plan' and p.created_at < f.feature_window_end_at
group by s.leaf, f.account_id
