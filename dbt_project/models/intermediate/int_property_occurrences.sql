-- Every event of an account before its feature window end that carries a configured property
-- (beton.yaml discovery.property_features, with its transform, e.g. the URL path of $pageview),
-- numbered in time per account, event, property and value (ties by event id). Signal firings
-- (store/firings.sql) and account_property_features read it. The values come from int_events_resolved's
-- property_<n> columns (the n-th configured feature, read out of the JSON there once).
-- Grain: one row per event × configured property with a non-empty value.
with windows as (
    select * from {{ ref('int_account_windows') }}
),

property_values as (
    {% for feature in var('property_features') -%}
    select
        e.account_id,
        e.event_id,
        e.occurred_at,
        w.started_at,
        '{{ feature.event }}' as event_name,
        '{{ feature.property }}' as property_name,
        {% if feature.transform == 'url_path' -%}
        {{ url_path('e.property_' ~ loop.index) }}
        {%- else -%}
        e.property_{{ loop.index }}
        {%- endif %} as property_value
    from {{ ref('int_events_resolved') }} as e
    inner join windows as w on w.account_id = e.account_id
    where e.event_name = '{{ feature.event }}' and e.occurred_at < w.feature_window_end_at
        and not coalesce(e.is_tracked, false)
    {% if not loop.last %}union all{% endif %}
    {% else -%}
    -- no property features configured: no rows, the same columns
    select
        e.account_id,
        e.event_id,
        e.occurred_at,
        w.started_at,
        e.event_name,
        e.event_name as property_name,
        e.event_name as property_value
    from {{ ref('int_events_resolved') }} as e
    inner join windows as w on w.account_id = e.account_id
    where false
    {% endfor %}
)

select
    account_id,
    event_name,
    property_name,
    property_value,
    event_id,
    occurred_at,
    started_at,
    cast(
        row_number() over (
            partition by account_id, event_name, property_name, property_value order by occurred_at, event_id
        ) as {{ dbt.type_bigint() }}
    ) as occurrence_number
from property_values
where property_value is not null and property_value <> ''
