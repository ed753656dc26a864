{#- The run's "now": the configured as_of, else the latest event in the data (never the wall clock). -#}
{% macro as_of_timestamp() -%}
    {%- if var('as_of') -%}
        cast('{{ var("as_of") }}' as timestamp)
    {%- else -%}
        (select max(occurred_at) from {{ ref('stg_posthog__events') }})
    {%- endif -%}
{%- endmacro %}

{% macro email_domain(column) -%}
    lower(substr({{ column }}, instr({{ column }}, '@') + 1))
{%- endmacro %}
