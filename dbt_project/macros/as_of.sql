{#- The run's "now": the configured as_of, else the latest exported event (never the wall clock, nor an event
    `beton serve` tracked a moment ago: those do not move the accounts' windows). -#}
{% macro as_of_timestamp() -%}
    {%- if var('as_of') -%}
        cast('{{ var("as_of") }}' as timestamp)
    {%- else -%}
        (select max(occurred_at) from {{ ref('stg_posthog__events') }} where not is_tracked)
    {%- endif -%}
{%- endmacro %}

{% macro email_domain(column) -%}
    lower(substr({{ column }}, instr({{ column }}, '@') + 1))
{%- endmacro %}
