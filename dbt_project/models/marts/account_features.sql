-- Point-in-time account attributes and activity summaries, all measured strictly before
-- feature_window_end_at. Grain: one row per account with product events.
with windows as (
    select * from {{ ref('int_account_windows') }}
),

accounts as (
    select * from {{ ref('int_accounts') }}
),

events_in_window as (
    select e.account_id, e.event_name, e.distinct_id, e.occurred_at
    from {{ ref('int_events_resolved') }} as e
    inner join windows as w on w.account_id = e.account_id
    where e.occurred_at < w.feature_window_end_at and not coalesce(e.is_tracked, false)
),

activity as (
    select
        account_id,
        count(*) as n_events,
        count(distinct event_name) as n_distinct_events,
        count(distinct distinct_id) as n_users,
        count(distinct cast(occurred_at as date)) as n_active_days
    from events_in_window
    group by account_id
),

-- The plan the account chose (trial plans included) before the window closed: a billing attribute.
plans as (
    select account_id, plan_interval, annualized_amount
    from (
        select
            s.account_id,
            s.plan_interval,
            s.annualized_amount,
            row_number() over (partition by s.account_id order by s.created_at, s.subscription_id) as plan_rank
        from {{ ref('int_account_subscriptions') }} as s
        inner join windows as w on w.account_id = s.account_id
        where s.created_at < w.feature_window_end_at
    ) as ranked_plans
    where plan_rank = 1
)

select
    w.account_id,
    w.started_at,
    {{ dbt.date_trunc('month', 'w.started_at') }} as cohort_month,
    w.feature_window_end_at,
    -- firmographics (CRM)
    a.is_crm_company,
    a.industry,
    a.employee_count,
    case
        when a.employee_count is null then null
        when a.employee_count < 10 then '1-9'
        when a.employee_count < 50 then '10-49'
        when a.employee_count < 200 then '50-199'
        when a.employee_count < 1000 then '200-999'
        else '1000+'
    end as employee_band,
    -- billing
    p.plan_interval,
    p.annualized_amount as plan_annualized_amount,
    -- activity in the window
    coalesce(act.n_events, 0) as n_events,
    coalesce(act.n_distinct_events, 0) as n_distinct_events,
    coalesce(act.n_users, 0) as n_users,
    coalesce(act.n_active_days, 0) as n_active_days
from windows as w
inner join accounts as a on a.account_id = w.account_id
left join activity as act on act.account_id = w.account_id
left join plans as p on p.account_id = w.account_id
