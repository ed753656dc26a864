with source as (
    select * from {{ source('raw', 'raw_billing_customers') }}
),

renamed as (
    select
        id as customer_id,
        lower(trim(email)) as email,
        lower(trim({{ json_string('metadata', ['company_domain']) }})) as metadata_company_domain,
        created as created_at
    from source
)

select * from renamed
