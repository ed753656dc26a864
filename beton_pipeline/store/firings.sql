-- When each enabled signal fired for each account: the runtime part of signal firings
-- (store/firings.py). The point-in-time transformations are dbt models; this joins them with the
-- registered signal frames _beton_sig_events, _beton_sig_props, _beton_sig_attrs, _beton_sig_intent.

-- event_count: the t-th occurrence of E, if before start + d days (occurrences stop at the window end)
select o.account_id, s.signal_id, o.occurred_at as fired_at
from intermediate.int_event_occurrences as o
join _beton_sig_events as s on s.event = o.event_name and s.threshold = o.occurrence_number
where o.occurred_at < o.started_at + to_days(cast(s.window_days as integer))

union all

-- event_property: the t-th occurrence of E with P = v (after the configured transform), same bounds
select o.account_id, s.signal_id, o.occurred_at as fired_at
from intermediate.int_property_occurrences as o
join _beton_sig_props as s
  on s.event = o.event_name and s.property = o.property_name and s.value = o.property_value
 and s.threshold = o.occurrence_number
where o.occurred_at < o.started_at + to_days(cast(s.window_days as integer))

union all

-- attribute industry / employee band: known from the CRM at the account's start
select f.account_id, s.signal_id, f.started_at as fired_at
from marts.account_features as f
join _beton_sig_attrs as s on (s.property = 'industry' and f.industry = s.value)
                           or (s.property = 'employee_band' and f.employee_band = s.value)

union all

-- attribute plan_interval: the account's first subscription with that plan, if before the window end
select f.account_id, s.signal_id, greatest(f.started_at, p.first_created_at) as fired_at
from marts.account_features as f
join (
    select account_id, plan_interval, min(created_at) as first_created_at
    from intermediate.int_account_subscriptions
    group by account_id, plan_interval
) as p on p.account_id = f.account_id
join _beton_sig_attrs as s on s.property = 'plan_interval' and s.value = p.plan_interval
where p.first_created_at < f.feature_window_end_at

union all

-- intent: the latest qualifying signal from window_days before the start up to the start / the window end
select i.account_id, s.signal_id, max(i.occurred_at) as fired_at
from intermediate.int_account_intent_signals as i
join _beton_sig_intent as s on s.value = i.signal_type
where i.occurred_at >= i.started_at - to_days(cast(s.window_days as integer))
  and i.occurred_at < case when s.before_start then i.started_at else i.feature_window_end_at end
group by i.account_id, s.signal_id
