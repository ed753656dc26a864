with source as (
    select * from {{ source('raw', 'raw_crm_deal_stage_changes') }}
),

renamed as (
    select
        deal_record_id,
        stage,
        changed_at,
        reason
    from source
)

select * from renamed
