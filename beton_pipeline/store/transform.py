"""The warehouse side of running the dbt models on Spark (`warehouse.engine: spark`): the raw tables go out to
Parquet for Spark to read, and every relation Spark built comes back into the DuckDB file, so that every Python
stage reads the same tables from the same file whichever engine built them.

Spark writes a table as Parquet files in its warehouse folder, `<warehouse dir>/<schema>.db/<table>/part-*.parquet`
(a managed table in a database created without a location; dbt-spark's `file_format: parquet`). A timestamp
comes back as Parquet's UTC-adjusted TIMESTAMP (`spark.sql.parquet.outputTimestampType: TIMESTAMP_MICROS` in the
profile), which DuckDB reads as TIMESTAMP WITH TIME ZONE: it is stored as the plain UTC TIMESTAMP the DuckDB
build writes (beton's connections use UTC)."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import duckdb

from beton_pipeline.warehouse import table_exists, transaction

RAW_SCHEMA = "raw"


@dataclass(frozen=True)
class Relation:
    """A relation dbt built: `schema.name` in both engines."""

    schema: str
    name: str

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


def export_raw_tables(con: duckdb.DuckDBPyConnection, tables: Iterable[str], folder: Path) -> list[str]:
    """Write each of `tables` the warehouse has (`raw.<table>`) to `folder/<table>/data.parquet`, replacing what
    an earlier build wrote there; a table the warehouse lacks (an optional one never ingested) is left out.
    Returns the tables written, in the order given."""
    written = []
    for table in tables:
        target = folder / table
        if target.exists():
            shutil.rmtree(target)
        if not table_exists(con, RAW_SCHEMA, table):
            continue
        target.mkdir(parents=True)
        path = str(target / "data.parquet").replace("'", "''")
        con.execute(f"copy (select * from {RAW_SCHEMA}.{table}) to '{path}' (format parquet)")
        written.append(table)
    return written


def spark_table_files(spark_warehouse: Path, relation: Relation) -> Path:
    """The folder of `relation`'s Parquet files in Spark's warehouse folder."""
    return spark_warehouse / f"{relation.schema}.db" / relation.name


def publish_relations(con: duckdb.DuckDBPyConnection, spark_warehouse: Path, relations: Iterable[Relation]) -> dict:
    """Replace each relation in the DuckDB file by the table Spark wrote, all in one transaction (a reader sees
    the previous build or this one, never a mix). Returns the rows published per `schema.name`.

    A relation the DuckDB engine built as a view (staging) becomes a table of the same name and columns."""
    counts = {}
    with transaction(con):
        for relation in relations:
            folder = spark_table_files(spark_warehouse, relation)
            if not any(folder.glob("*.parquet")):
                raise FileNotFoundError(
                    f"Spark built {relation.qualified} but wrote no Parquet file in {folder}: is the model's "
                    "file_format parquet (dbt_project.yml) and spark.sql.warehouse.dir this folder's parent?"
                )
            source = f"read_parquet('{str(folder / '*.parquet').replace(chr(39), chr(39) * 2)}')"
            columns = con.sql(f"describe select * from {source}").fetchall()
            select = ", ".join(
                f'cast("{name}" as timestamp) as "{name}"' if kind == "TIMESTAMP WITH TIME ZONE" else f'"{name}"'
                for name, kind, *_ in columns
            )
            con.execute(f"create schema if not exists {relation.schema}")
            _drop_view(con, relation)
            con.execute(f"create or replace table {relation.qualified} as select {select} from {source}")
            counts[relation.qualified] = con.sql(f"select count(*) from {relation.qualified}").fetchall()[0][0]
    return counts


def _drop_view(con: duckdb.DuckDBPyConnection, relation: Relation) -> None:
    """Drop `relation` when it is a view (a DuckDB build's staging model): a table cannot replace a view."""
    kind = con.sql(
        "select table_type from information_schema.tables where table_schema = ? and table_name = ?",
        params=[relation.schema, relation.name],
    ).fetchall()
    if kind and kind[0][0] == "VIEW":
        con.execute(f"drop view {relation.qualified}")
