with source as (
    select * from {{ source('raw', 'raw_crm_deals') }}
),

renamed as (
    select
        record_id as deal_record_id,
        company_record_id,
        name as deal_name,
        -- pipeline state
        stage,
        status,
        owner,
        -- money
        value as deal_value,
        currency,
        -- dates
        created_at,
        closed_at
    from source
)

select * from renamed
