"""The warehouse side of the Spark engine, without Spark: the raw tables go out as Parquet (missing ones left out,
old files replaced), the Parquet Spark writes comes back as tables with DuckDB's types (a staging view replaced),
the build's artifacts name the relations to copy, `BETON_ENGINE` chooses the engine, and a missing Java runtime
is reported in a sentence. tests/e2e/test_spark_engine.py runs Spark itself."""

import json
from datetime import datetime

import duckdb
import pytest

from beton_pipeline.defs.transform.dbt_assets import built_relations, spark_unavailable
from beton_pipeline.settings import SettingsError, load_settings, spark_dir
from beton_pipeline.store.transform import Relation, export_raw_tables, publish_relations, spark_table_files
from beton_pipeline.warehouse import connect


def test_the_raw_tables_the_warehouse_has_are_exported_and_old_files_replaced(tmp_path):
    folder = tmp_path / "raw"
    (folder / "raw_crm_deals").mkdir(parents=True)
    (folder / "raw_crm_deals" / "data.parquet").write_text("an earlier build's file")  # its table is gone now
    with connect(tmp_path / "warehouse.duckdb") as con:
        con.execute("create schema raw")
        con.execute("create table raw.raw_events as select 'e-' || range as uuid, range as n from range(5)")
        written = export_raw_tables(con, ["raw_events", "raw_crm_deals"], folder)
        assert written == ["raw_events"]
        assert not (folder / "raw_crm_deals").exists()
        exported = con.sql(f"select uuid, n from '{folder}/raw_events/data.parquet' order by n").fetchall()
    assert exported == [(f"e-{i}", i) for i in range(5)]


def _spark_like_parquet(spark_warehouse, relation: Relation, select: str) -> None:
    """A table's files as Spark leaves them: part files (a timestamp as UTC-adjusted TIMESTAMP) and a _SUCCESS."""
    folder = spark_table_files(spark_warehouse, relation)
    folder.mkdir(parents=True)
    (folder / "_SUCCESS").write_text("")
    with duckdb.connect() as con:
        con.execute("set TimeZone = 'UTC'")
        con.execute(f"copy ({select}) to '{folder}/part-00000-x.snappy.parquet' (format parquet)")


def test_sparks_tables_replace_the_relations_with_duckdbs_types(tmp_path):
    spark_warehouse = tmp_path / "spark" / "warehouse"
    staging, marts = Relation("staging", "stg_things"), Relation("marts", "account_things")
    _spark_like_parquet(spark_warehouse, staging, "select 'a' as thing_id")
    _spark_like_parquet(
        spark_warehouse,
        marts,
        "select 'acc-' || range as account_id, cast(range as bigint) as n, "
        "timestamptz '2025-03-04 10:00:00.5+00' + to_days(cast(range as integer)) as started_at, cast(0.1 * range as double) as x "
        "from range(3)",
    )
    with connect(tmp_path / "warehouse.duckdb") as con:
        con.execute("create schema staging")
        con.execute("create view staging.stg_things as select 'old' as thing_id")  # a DuckDB build's view
        counts = publish_relations(con, spark_warehouse, [staging, marts])
        assert counts == {"staging.stg_things": 1, "marts.account_things": 3}
        kinds = con.sql(
            "select table_schema, table_name, table_type from information_schema.tables "
            "where table_schema in ('staging', 'marts') order by 1"
        ).fetchall()
        assert kinds == [("marts", "account_things", "BASE TABLE"), ("staging", "stg_things", "BASE TABLE")]
        types = con.sql("select column_name, column_type from (describe marts.account_things)").fetchall()
        assert types == [("account_id", "VARCHAR"), ("n", "BIGINT"), ("started_at", "TIMESTAMP"), ("x", "DOUBLE")]
        rows = con.sql("select account_id, started_at from marts.account_things order by n").fetchall()
        assert rows[2] == ("acc-2", datetime(2025, 3, 6, 10, 0, 0, 500000))  # UTC, to the microsecond
        assert con.sql("select thing_id from staging.stg_things").fetchall() == [("a",)]


def test_a_relation_spark_wrote_no_files_for_fails_the_copy_and_keeps_the_old_one(tmp_path):
    spark_warehouse = tmp_path / "warehouse"
    good, missing = Relation("marts", "a"), Relation("marts", "b")
    _spark_like_parquet(spark_warehouse, good, "select 2 as v")
    with connect(tmp_path / "warehouse.duckdb") as con:
        con.execute("create schema marts")
        con.execute("create table marts.a as select 1 as v")
        with pytest.raises(FileNotFoundError, match=r"Spark built marts\.b but wrote no Parquet file"):
            publish_relations(con, spark_warehouse, [good, missing])
        assert con.sql("select v from marts.a").fetchall() == [(1,)]  # one transaction: nothing copied


def test_the_relations_to_copy_are_the_models_and_seeds_that_built(tmp_path):
    nodes = {
        "model.beton.account_outcomes": {"resource_type": "model", "schema": "marts", "alias": "account_outcomes"},
        "model.beton.int_accounts": {"resource_type": "model", "schema": "intermediate", "alias": "int_accounts"},
        "seed.beton.free_email_domains": {
            "resource_type": "seed",
            "schema": "reference",
            "alias": "free_email_domains",
        },
        "test.beton.unique_x": {"resource_type": "test", "schema": "marts", "alias": "unique_x"},
    }
    results = [
        {"unique_id": "model.beton.account_outcomes", "status": "success"},
        {"unique_id": "model.beton.int_accounts", "status": "error"},
        {"unique_id": "seed.beton.free_email_domains", "status": "success"},
        {"unique_id": "test.beton.unique_x", "status": "pass"},
        {"unique_id": "operation.beton.beton-on-run-start-0", "status": "success"},
    ]
    (tmp_path / "manifest.json").write_text(json.dumps({"nodes": nodes}))
    (tmp_path / "run_results.json").write_text(json.dumps({"results": results}))
    assert built_relations(tmp_path) == [
        Relation("marts", "account_outcomes"),
        Relation("reference", "free_email_domains"),
    ]


def test_beton_engine_overrides_the_setting_and_is_checked(tmp_path, monkeypatch):
    config = tmp_path / "beton.yaml"
    config.write_text("warehouse: {engine: spark}\n")
    monkeypatch.delenv("BETON_ENGINE", raising=False)
    assert load_settings(config).warehouse.engine == "spark"
    monkeypatch.setenv("BETON_ENGINE", "duckdb")
    assert load_settings(config).warehouse.engine == "duckdb"
    monkeypatch.setenv("BETON_ENGINE", "snowflake")
    with pytest.raises(SettingsError, match=r"^BETON_ENGINE='snowflake' is not an engine .*: use duckdb or spark$"):
        load_settings(config)
    monkeypatch.delenv("BETON_ENGINE")
    config.write_text("{}\n")
    assert load_settings(config).warehouse.engine == "duckdb"


def test_sparks_folder_is_beside_the_warehouse_unless_set(tmp_path, monkeypatch):
    monkeypatch.delenv("BETON_SPARK_DIR", raising=False)
    assert spark_dir(tmp_path / "w.duckdb") == tmp_path / "w.duckdb.spark"
    monkeypatch.setenv("BETON_SPARK_DIR", str(tmp_path / "elsewhere"))
    assert spark_dir(tmp_path / "w.duckdb") == tmp_path / "elsewhere"


def test_no_java_is_reported_in_a_sentence(tmp_path, monkeypatch):
    pytest.importorskip("pyspark")  # the extra's modules present: the Java check is the one that speaks
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nothing"))
    assert spark_unavailable() == (
        "warehouse.engine is spark, but no Java runtime was found (JAVA_HOME, or java on PATH): Spark 3.5 needs "
        "Java 17 (e.g. apt-get install openjdk-17-jre-headless), or set warehouse.engine: duckdb."
    )
