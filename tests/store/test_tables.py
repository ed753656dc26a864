"""store/tables.py: idempotent writes and the one as-of reader."""

import duckdb
import polars as pl

from beton_pipeline.store.tables import as_of_time, replace_rows
from tests.store.signal_marts import AS_OF, make_marts


def test_replace_rows_replaces_exactly_the_matching_rows_and_adds_new_columns(tmp_path):
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        replace_rows(con, "beton.t", pl.DataFrame({"part": ["a", "a", "b"], "x": [1, 2, 3]}), "true")
        replace_rows(con, "beton.t", pl.DataFrame({"part": ["a"], "x": [9], "y": ["new"]}), "part = ?", ["a"])
        rows = con.sql("select part, x, y from beton.t order by part").fetchall()
    assert rows == [("a", 9, "new"), ("b", 3, None)]


def test_as_of_time_is_the_marts_as_of(tmp_path):
    with duckdb.connect(str(make_marts(tmp_path / "w.duckdb"))) as con:
        assert as_of_time(con) == AS_OF
