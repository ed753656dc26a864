{#- Portable JSON helpers: one dispatch macro per operation, so the models also run on Spark.
    `path` is a list of keys, e.g. ['$groups', 'company']. -#}

{% macro json_string(column, path) -%}
    {{ return(adapter.dispatch('json_string', 'beton')(column, path)) }}
{%- endmacro %}

{% macro default__json_string(column, path) -%}
    json_extract_string({{ column }}, '$.{% for key in path %}"{{ key }}"{% if not loop.last %}.{% endif %}{% endfor %}')
{%- endmacro %}

{#- Spark: keys in brackets (`$['$groups']['company']`), so that a key with a dot in it is one key, as DuckDB's
    quoted keys are. Both give a string as JSON text, other values (numbers, booleans, objects) as their JSON
    text, and NULL for a JSON null or a missing key. -#}
{% macro spark__json_string(column, path) -%}
    get_json_object({{ column }}, '${% for key in path %}[\'{{ key }}\']{% endfor %}')
{%- endmacro %}
