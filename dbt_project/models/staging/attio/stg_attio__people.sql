with source as (
    select * from {{ source('raw', 'raw_crm_people') }}
),

renamed as (
    select
        record_id as person_record_id,
        lower(trim(email)) as email,
        company_record_id,
        created_at as crm_created_at
    from source
)

select * from renamed
