-- Every event of an account before its feature window end, numbered in time per account and event
-- (ties by event id): the n-th occurrence is when "E at least n times" became true. Signal firings
-- (store/firings.sql) and account_event_features read it. Grain: one row per event.
with windows as (
    select * from {{ ref('int_account_windows') }}
),

events_in_window as (
    select e.account_id, e.event_name, e.event_id, e.occurred_at, w.started_at
    from {{ ref('int_events_resolved') }} as e
    inner join windows as w on w.account_id = e.account_id
    where e.occurred_at < w.feature_window_end_at and not coalesce(e.is_tracked, false)
)

select
    account_id,
    event_name,
    event_id,
    occurred_at,
    started_at,
    cast(
        row_number() over (partition by account_id, event_name order by occurred_at, event_id) as {{ dbt.type_bigint() }}
    ) as occurrence_number
from events_in_window
