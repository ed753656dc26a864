-- Third-party intent signals matched to an account by its domain, before the account's feature
-- window end (never at or after it). The lookback before the start is left to the reader
-- (account_intent_features: intent_lookback_days; signal firings: the signal's window).
-- Grain: one row per intent signal × matching account.
with windows as (
    select * from {{ ref('int_account_windows') }}
),

account_domains as (
    select w.account_id, a.domain, w.started_at, w.feature_window_end_at
    from windows as w
    inner join {{ ref('int_accounts') }} as a on a.account_id = w.account_id
    where a.domain is not null
)

select
    d.account_id,
    s.signal_type,
    s.occurred_at,
    d.started_at,
    d.feature_window_end_at
from {{ ref('stg_intent__signals') }} as s
inner join account_domains as d on d.domain = s.company_domain
where s.occurred_at < d.feature_window_end_at
