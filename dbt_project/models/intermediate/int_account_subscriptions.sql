-- Billing subscriptions with the account they belong to: the customer's company domain from its
-- metadata, else its e-mail domain, matched to a CRM domain or a product group key.
-- Grain: one row per subscription of a customer that matches an account.
with customer_accounts as (
    select c.customer_id, k.account_id
    from {{ ref('stg_stripe__customers') }} as c
    inner join {{ ref('int_account_keys') }} as k
        on k.match_key = coalesce(c.metadata_company_domain, {{ email_domain('c.email') }})
        and k.key_type in ('crm_domain', 'product_group_key')
)

select
    ca.account_id,
    s.subscription_id,
    s.plan_interval,
    s.annualized_amount,
    s.created_at
from {{ ref('stg_stripe__subscriptions') }} as s
inner join customer_accounts as ca on ca.customer_id = s.customer_id
