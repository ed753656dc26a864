-- The product events: the export's (raw_events) and the experiment exposures and conversions `beton serve`
-- recorded (raw_tracked_events, the same columns and rules). A tracked event's uuid is a UUID version 5 in
-- beton's own namespace, never one PostHog gives; should one equal an exported event's all the same, the
-- exported row is kept and the tracked one left out (as the ingest keeps the first row of a key), so
-- event_id stays unique. A warehouse the tracked events' ingest never ran on (`beton check`'s, one built
-- before beton tracked events) has no raw_tracked_events: then there are none.
{%- set tracked_events = source('raw', 'raw_tracked_events') %}

with exported as (
    select uuid, event, timestamp, distinct_id, properties, person_properties, false as is_tracked
    from {{ source('raw', 'raw_events') }}
),

tracked as (
    {%- if execute and load_relation(tracked_events) is none %}
    select * from exported where 1 = 0
    {%- else %}
    select t.uuid, t.event, t.timestamp, t.distinct_id, t.properties, t.person_properties, true as is_tracked
    from {{ tracked_events }} as t
    where not exists (select 1 from exported as e where e.uuid = t.uuid)
    {%- endif %}
),

source as (
    select * from exported
    union all
    select * from tracked
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
        properties,
        -- where it came from: recorded by beton serve (true) or exported from the analytics tool
        is_tracked
    from source
)

select * from renamed
