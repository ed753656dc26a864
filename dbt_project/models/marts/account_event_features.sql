-- Per account and event: how often it happened in the point-in-time window and in each first-N-days
-- window (all strictly before feature_window_end_at). Grain: one row per account × event name.
with events_in_window as (
    select account_id, event_name, occurred_at, started_at
    from {{ ref('int_event_occurrences') }}
)

select
    account_id,
    event_name,
    count(*) as n_in_window,
    {% for days in var('feature_windows_days') -%}
    cast(
        sum(case when occurred_at < {{ dbt.dateadd('day', days, 'started_at') }} then 1 else 0 end)
        as {{ dbt.type_bigint() }}
    ) as n_first_{{ days }}d,
    {% endfor -%}
    min(occurred_at) as first_occurred_at
from events_in_window
group by account_id, event_name
