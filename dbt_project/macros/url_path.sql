{#- The path of a URL: scheme and host removed, query string and fragment dropped ('/settings/integrations'). -#}
{% macro url_path(column) -%}
    {{ return(adapter.dispatch('url_path', 'beton')(column)) }}
{%- endmacro %}

{% macro default__url_path(column) -%}
    regexp_replace({{ column }}, '^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*|[?#].*$', '', 'g')
{%- endmacro %}

{% macro spark__url_path(column) -%}
    regexp_replace({{ column }}, '^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*|[?#].*$', '')
{%- endmacro %}
