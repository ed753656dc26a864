-- Per account and intent signal type: signals in the lookback before the account's start and up to
-- the end of its feature window (never at or after it). Grain: one row per account × signal type.
with signals as (
    select account_id, signal_type, occurred_at, started_at
    from {{ ref('int_account_intent_signals') }}
    where occurred_at >= {{ dbt.dateadd('day', -1 * var('intent_lookback_days'), 'started_at') }}
)

select
    account_id,
    signal_type,
    cast(sum(case when occurred_at < started_at then 1 else 0 end) as {{ dbt.type_bigint() }}) as n_before_start,
    count(*) as n_before_window_end,
    max(occurred_at) as last_occurred_at
from signals
group by account_id, signal_type
