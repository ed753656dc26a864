-- Each active account's timeline: start (first product event), conversion, and the end of the
-- point-in-time feature window = min(start + observation_days, conversion, as-of).
-- Nothing at or after feature_window_end may feed a predictor. Grain: one row per account with events.
with as_of as (
    select {{ as_of_timestamp() }} as as_of_at
),

activity as (
    select
        account_id,
        min(occurred_at) as started_at,
        max(occurred_at) as last_seen_at
    from {{ ref('int_events_resolved') }}
    where account_id is not null and not coalesce(is_tracked, false)
    group by account_id
),

joined as (
    select
        a.account_id,
        a.started_at,
        a.last_seen_at,
        case when c.converted_at <= o.as_of_at then c.converted_at end as converted_at,
        o.as_of_at,
        {{ dbt.dateadd('day', var('observation_days'), 'a.started_at') }} as observation_end_at
    from activity as a
    cross join as_of as o
    left join {{ ref('int_account_conversions') }} as c on c.account_id = a.account_id
)

select
    account_id,
    started_at,
    last_seen_at,
    converted_at,
    as_of_at,
    case
        when converted_at is not null and converted_at < observation_end_at and converted_at < as_of_at then converted_at
        when as_of_at < observation_end_at then as_of_at
        else observation_end_at
    end as feature_window_end_at
from joined
