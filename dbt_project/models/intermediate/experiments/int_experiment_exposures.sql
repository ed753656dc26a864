-- Every PostHog `$feature_flag_called` exposure of a user to a feature flag, numbered in time order per
-- user and flag (ties broken by event_id). Exposure number 1 is the user's first exposure: its variant
-- is the one an experiment counts the user in. An experiment read over a period [start, end) takes
-- each user's lowest exposure number inside the period, which is the first exposure in that period.
-- Grain: one row per exposure event.
with exposures as (
    select
        event_id,
        distinct_id,
        feature_flag,
        feature_flag_response as variant,
        occurred_at as exposed_at
    from {{ ref('int_events_resolved') }}
    where event_name = '$feature_flag_called'
        and feature_flag is not null
        and feature_flag_response is not null
        and distinct_id is not null
),

numbered as (
    select
        *,
        cast(
            row_number() over (partition by distinct_id, feature_flag order by exposed_at, event_id)
            as {{ dbt.type_bigint() }}
        ) as exposure_number
    from exposures
),

variants_seen as (
    select
        distinct_id,
        feature_flag,
        count(distinct variant) as n_variants
    from exposures
    group by distinct_id, feature_flag
)

select
    n.event_id,
    n.distinct_id,
    n.feature_flag,
    n.variant,
    n.exposed_at,
    n.exposure_number,
    n.exposure_number = 1 as is_first_exposure,
    v.n_variants > 1 as saw_several_variants
from numbered as n
inner join variants_seen as v
    on v.distinct_id = n.distinct_id and v.feature_flag = n.feature_flag
