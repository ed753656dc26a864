-- Per CRM company with a deal: did any of its deals progress beyond the first stage, and what did
-- the AE last say? A deal progressed when its status is won, or it reached (current stage or any
-- stage change) a stage other than deal_first_stage and deal_lost_stages (case-insensitive).
-- The lead-score model compares its qualified accounts with this (beton.model_crm_comparison).
-- Grain: one row per CRM company with at least one deal.
{%- set not_progressed = [var('deal_first_stage')] + var('deal_lost_stages') %}
with deals as (
    select deal_record_id, company_record_id as account_id, stage, status
    from {{ ref('stg_attio__deals') }}
    where company_record_id is not null
),

changes as (
    select c.deal_record_id, d.account_id, c.stage, c.changed_at, c.reason
    from {{ ref('stg_attio__deal_stage_changes') }} as c
    inner join deals as d on d.deal_record_id = c.deal_record_id
),

stages_seen as (
    select account_id, stage from deals
    union all
    select account_id, stage from changes
),

progressed as (
    select account_id
    from stages_seen
    where lower(stage) not in ({% for stage in not_progressed %}'{{ stage | lower }}'{% if not loop.last %}, {% endif %}{% endfor %})
    union
    select account_id
    from deals
    where lower(status) = 'won'
),

latest_change as (
    select account_id, stage as latest_stage, changed_at as latest_changed_at
    from (
        select
            account_id,
            stage,
            changed_at,
            row_number() over (
                partition by account_id order by changed_at desc nulls last, deal_record_id, stage
            ) as change_rank
        from changes
    ) as ranked_changes
    where change_rank = 1
),

latest_reason as (
    select account_id, reason as latest_reason, stage as reason_stage
    from (
        select
            account_id,
            stage,
            reason,
            row_number() over (
                partition by account_id order by changed_at desc nulls last, deal_record_id, stage
            ) as reason_rank
        from changes
        where reason is not null
    ) as ranked_reasons
    where reason_rank = 1
),

deal_counts as (
    select account_id, count(*) as n_deals
    from deals
    group by account_id
)

select
    n.account_id,
    n.n_deals,
    p.account_id is not null as progressed,
    l.latest_stage,
    l.latest_changed_at,
    r.latest_reason,
    r.reason_stage
from deal_counts as n
left join progressed as p on p.account_id = n.account_id
left join latest_change as l on l.account_id = n.account_id
left join latest_reason as r on r.account_id = n.account_id
