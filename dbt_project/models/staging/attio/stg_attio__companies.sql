with source as (
    select * from {{ source('raw', 'raw_crm_companies') }}
),

renamed as (
    select
        record_id as company_record_id,
        name as company_name,
        lower(trim(domain)) as domain,
        -- firmographics
        employee_count,
        industry,
        created_at as crm_created_at
    from source
)

select * from renamed
