-- Every account's outcome (data contract §2). Grain: one row per account (accounts without product
-- events included: has_events = false, left out of behavioural discovery and counted).
with accounts as (
    select * from {{ ref('int_accounts') }}
),

windows as (
    select * from {{ ref('int_account_windows') }}
),

conversions as (
    select * from {{ ref('int_account_conversions') }}
),

as_of as (
    select {{ as_of_timestamp() }} as as_of_at
),

joined as (
    select
        a.account_id,
        a.domain,
        a.is_crm_company,
        w.account_id is not null as has_events,
        w.started_at,
        {{ dbt.date_trunc('month', 'w.started_at') }} as cohort_month,
        w.feature_window_end_at,
        case when c.converted_at <= o.as_of_at then c.converted_at end as converted_at,
        case when c.converted_at <= o.as_of_at then c.conversion_source end as conversion_source,
        case when c.converted_at <= o.as_of_at then c.arr end as arr,
        {{ dbt.dateadd('day', var('conversion_window_days'), 'w.started_at') }} as outcome_window_end_at,
        o.as_of_at
    from accounts as a
    cross join as_of as o
    left join windows as w on w.account_id = a.account_id
    left join conversions as c on c.account_id = a.account_id
)

select
    account_id,
    domain,
    is_crm_company,
    has_events,
    started_at,
    cohort_month,
    feature_window_end_at,
    outcome_window_end_at,
    converted_at,
    conversion_source,
    arr,
    coalesce(converted_at is not null and started_at is not null and converted_at <= started_at, false)
        as converted_before_start,
    coalesce(
        converted_at is not null and started_at is not null and converted_at <= outcome_window_end_at, false
    ) as converted,
    coalesce(outcome_window_end_at <= as_of_at, false) as outcome_known,
    coalesce(
        has_events
        and outcome_window_end_at <= as_of_at
        and not (converted_at is not null and converted_at <= started_at),
        false
    ) as is_eligible,
    as_of_at
from joined
