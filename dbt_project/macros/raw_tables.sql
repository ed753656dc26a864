{#- On Spark, the raw tables beton's ingest loaded into DuckDB: one external Parquet table per raw source, on the
    files the dbt asset exported (DuckDB `COPY ... (FORMAT parquet)`) to BETON_SPARK_DIR/raw/<table>, so that
    `source('raw', ...)` names the same table on both engines. `spark_raw_tables` lists the tables exported (an
    optional table the warehouse lacks, such as raw_tracked_events, is not: its models tolerate it missing); by
    default every raw source. Run from on-run-start, on the spark target only (dbt_project.yml). Every raw table
    is dropped and re-created each run (dropping an external table leaves its files): its columns are read anew
    from the files, and a table this run did not export is gone instead of pointing at old files. -#}
{% macro register_raw_tables() -%}
    {%- if not execute -%}{{ return('') }}{%- endif -%}
    {%- set folder = env_var('BETON_SPARK_DIR', '../data/spark') ~ '/raw' -%}
    {%- set declared = [] -%}
    {%- for node in graph.sources.values() if node.source_name == 'raw' -%}
        {%- do declared.append(node.name) -%}
    {%- endfor -%}
    {%- do run_query('create schema if not exists raw') -%}
    {%- set exported = var('spark_raw_tables', declared) -%}
    {%- for table in exported if table not in declared -%}
        {{ exceptions.raise_compiler_error("spark_raw_tables: " ~ table ~ " is not a raw source") }}
    {%- endfor -%}
    {%- for table in declared -%}
        {%- do run_query('drop table if exists raw.' ~ table) -%}
        {%- if table in exported -%}
            {%- do run_query("create table raw." ~ table ~ " using parquet location '" ~ folder ~ "/" ~ table ~ "'") -%}
        {%- endif -%}
    {%- endfor -%}
{%- endmacro %}
