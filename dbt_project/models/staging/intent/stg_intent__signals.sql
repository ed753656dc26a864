with source as (
    select * from {{ source('raw', 'raw_intent_signals') }}
),

renamed as (
    select
        lower(trim(company_domain)) as company_domain,
        lower(trim(signal_type)) as signal_type,
        occurred_at,
        source as signal_source,
        payload
    from source
)

select * from renamed
