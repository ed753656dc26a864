{#- Date arithmetic that keeps the time of day exactly on Spark. dbt-spark's own `dateadd` for days goes through
    `to_unix_timestamp`, whole seconds: `started_at + 14 days` lost its microseconds, and an event in the last
    second of a window fell on the other side of the boundary than on DuckDB. `dbt.dateadd` finds this one first
    on Spark (dbt's dispatch looks in the root project before dbt-spark); DuckDB keeps dbt-duckdb's. -#}
{% macro spark__dateadd(datepart, interval, from_date_or_timestamp) -%}
    timestampadd({{ datepart }}, {{ interval }}, {{ from_date_or_timestamp }})
{%- endmacro %}
