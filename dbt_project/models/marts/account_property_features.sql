-- Per account and (event, property, value) for the properties configured in beton.yaml
-- (discovery.property_features, e.g. the URL path of $pageview): counts in the point-in-time window
-- and each first-N-days window. Grain: one row per account × event × property × value.
with property_values as (
    select account_id, event_name, property_name, property_value, occurred_at, started_at
    from {{ ref('int_property_occurrences') }}
)

select
    account_id,
    event_name,
    property_name,
    property_value,
    count(*) as n_in_window,
    {% for days in var('feature_windows_days') -%}
    cast(
        sum(case when occurred_at < {{ dbt.dateadd('day', days, 'started_at') }} then 1 else 0 end)
        as {{ dbt.type_bigint() }}
    ) as n_first_{{ days }}d,
    {% endfor -%}
    min(occurred_at) as first_occurred_at
from property_values
group by account_id, event_name, property_name, property_value
