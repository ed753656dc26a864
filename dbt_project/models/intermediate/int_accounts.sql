-- The accounts: CRM companies plus every product-only $groups.company key. Grain: one row per account.
with companies as (
    select * from {{ ref('stg_attio__companies') }}
),

product_only as (
    select account_id
    from {{ ref('int_account_keys') }}
    where key_type = 'product_group_key'
)

select
    company_record_id as account_id,
    domain,
    company_name,
    true as is_crm_company,
    employee_count,
    industry,
    crm_created_at
from companies

union all

select
    account_id,
    case when account_id like '%.%' then account_id end as domain,
    cast(null as {{ dbt.type_string() }}) as company_name,
    false as is_crm_company,
    cast(null as {{ dbt.type_bigint() }}) as employee_count,
    cast(null as {{ dbt.type_string() }}) as industry,
    cast(null as {{ dbt.type_timestamp() }}) as crm_created_at
from product_only
