-- Per account and (event, property, value) for the properties configured in beton.yaml
-- (discovery.property_features, e.g. the URL path of $pageview): counts in the point-in-time window
-- and each first-N-days window. Grain: one row per account × event × property × value.
with windows as (
    select * from {{ ref('int_account_windows') }}
),

property_values as (
    {% for feature in var('property_features') -%}
    select
        e.account_id,
        e.occurred_at,
        w.started_at,
        '{{ feature.event }}' as event_name,
        '{{ feature.property }}' as property_name,
        {% if feature.transform == 'url_path' -%}
        {{ url_path(json_string('e.properties', [feature.property])) }}
        {%- else -%}
        {{ json_string('e.properties', [feature.property]) }}
        {%- endif %} as property_value
    from {{ ref('int_events_resolved') }} as e
    inner join windows as w on w.account_id = e.account_id
    where e.event_name = '{{ feature.event }}' and e.occurred_at < w.feature_window_end_at
    {% if not loop.last %}union all{% endif %}
    {% endfor %}
)

select
    account_id,
    event_name,
    property_name,
    property_value,
    count(*) as n_in_window,
    {% for days in var('feature_windows_days') -%}
    sum(case when occurred_at < {{ dbt.dateadd('day', days, 'started_at') }} then 1 else 0 end) as n_first_{{ days }}d,
    {% endfor -%}
    min(occurred_at) as first_occurred_at
from property_values
where property_value is not null and property_value <> ''
group by account_id, event_name, property_name, property_value
