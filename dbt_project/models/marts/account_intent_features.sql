-- Per account and intent signal type: signals in the lookback before the account's start and up to
-- the end of its feature window (never at or after it). Grain: one row per account × signal type.
with windows as (
    select * from {{ ref('int_account_windows') }}
),

account_domains as (
    select w.account_id, a.domain, w.started_at, w.feature_window_end_at
    from windows as w
    inner join {{ ref('int_accounts') }} as a on a.account_id = w.account_id
    where a.domain is not null
),

signals as (
    select
        d.account_id,
        s.signal_type,
        s.occurred_at,
        d.started_at
    from {{ ref('stg_intent__signals') }} as s
    inner join account_domains as d on d.domain = s.company_domain
    where s.occurred_at < d.feature_window_end_at
        and s.occurred_at >= {{ dbt.dateadd('day', -1 * var('intent_lookback_days'), 'd.started_at') }}
)

select
    account_id,
    signal_type,
    sum(case when occurred_at < started_at then 1 else 0 end) as n_before_start,
    count(*) as n_before_window_end,
    max(occurred_at) as last_occurred_at
from signals
group by account_id, signal_type
