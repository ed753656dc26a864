with source as (
    select * from {{ source('raw', 'raw_events') }}
),

renamed as (
    select
        -- ids
        uuid as event_id,
        distinct_id,
        -- what and when
        event as event_name,
        timestamp as occurred_at,
        -- identity hints (resolved to an account in int_events_resolved)
        lower(trim({{ json_string('properties', ['$groups', 'company']) }})) as group_company_key,
        lower(trim({{ json_string('person_properties', ['email']) }})) as person_email,
        -- properties used by discovery and experiment readouts
        {{ json_string('properties', ['$current_url']) }} as current_url,
        {{ json_string('properties', ['$feature_flag']) }} as feature_flag,
        {{ json_string('properties', ['$feature_flag_response']) }} as feature_flag_response,
        properties
    from source
)

select * from renamed
