-- When each account converted and its ARR (data contract §2): the first paid invoice with
-- amount_paid > 0, or a deal reaching `won`, whichever is earlier. ARR is the annualised plan amount
-- of the invoice's subscription (or the won deal's value). Grain: one row per converted account.
with customers as (
    select
        c.customer_id,
        coalesce(
            c.metadata_company_domain,
            case when f.domain is null then {{ email_domain('c.email') }} end
        ) as company_domain
    from {{ ref('stg_stripe__customers') }} as c
    left join {{ ref('free_email_domains') }} as f on lower(f.domain) = {{ email_domain('c.email') }}
),

customer_accounts as (
    select c.customer_id, k.account_id
    from customers as c
    inner join {{ ref('int_account_keys') }} as k
        on k.match_key = c.company_domain and k.key_type in ('crm_domain', 'product_group_key')
),

paid_invoices as (
    select
        ca.account_id,
        coalesce(i.paid_at, i.created_at) as converted_at,
        s.annualized_amount as arr,
        i.invoice_id as evidence_id,
        'first_paid_invoice' as conversion_source
    from {{ ref('stg_stripe__invoices') }} as i
    inner join customer_accounts as ca on ca.customer_id = i.customer_id
    left join {{ ref('stg_stripe__subscriptions') }} as s on s.subscription_id = i.subscription_id
    where i.status = 'paid' and i.amount_paid_minor > 0
),

won_deals as (
    select
        d.company_record_id as account_id,
        d.closed_at as converted_at,
        d.deal_value as arr,
        d.deal_record_id as evidence_id,
        'deal_won' as conversion_source
    from {{ ref('stg_attio__deals') }} as d
    where d.status = 'won' and d.closed_at is not null
),

candidates as (
    select * from paid_invoices
    union all
    select * from won_deals
),

ranked as (
    select
        *,
        row_number() over (
            partition by account_id
            order by converted_at, case conversion_source when 'first_paid_invoice' then 0 else 1 end, evidence_id
        ) as conversion_rank
    from candidates
)

select account_id, converted_at, arr, conversion_source, evidence_id
from ranked
where conversion_rank = 1
