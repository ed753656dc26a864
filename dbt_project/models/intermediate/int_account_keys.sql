-- Every key that names an account, so that events ($groups.company holds a domain or a CRM
-- record_id) and billing customers (a domain) resolve to one account id. Grain: one row per key.
with companies as (
    select
        company_record_id,
        domain,
        row_number() over (partition by domain order by crm_created_at nulls last, company_record_id) as domain_rank
    from {{ ref('stg_attio__companies') }}
),

crm_keys as (
    select lower(company_record_id) as match_key, company_record_id as account_id, 'crm_record_id' as key_type
    from companies
    union all
    select domain as match_key, company_record_id as account_id, 'crm_domain' as key_type
    from companies
    where domain is not null and domain_rank = 1
),

-- Product sign-ups sales has not met: a $groups.company key no CRM record claims becomes its own account.
product_keys as (
    select distinct group_company_key as match_key
    from {{ ref('stg_posthog__events') }}
    where group_company_key is not null
),

product_only as (
    select p.match_key, p.match_key as account_id, 'product_group_key' as key_type
    from product_keys as p
    left join crm_keys as c on c.match_key = p.match_key
    where c.match_key is null
),

unioned as (
    select * from crm_keys
    union all
    select * from product_only
),

-- A record_id that equals another record's domain would name two accounts: the CRM record_id wins.
ranked as (
    select
        *,
        row_number() over (
            partition by match_key
            order by case key_type when 'crm_record_id' then 0 when 'crm_domain' then 1 else 2 end, account_id
        ) as key_rank
    from unioned
)

select match_key, account_id, key_type
from ranked
where key_rank = 1
