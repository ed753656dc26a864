"""benchmarks/compare_warehouses.py: identical tables pass, one changed value or row fails."""

import duckdb

from benchmarks.compare_warehouses import beton_tables, compare, read


def _warehouse(path, lift: float, extra_row: bool = False) -> str:
    with duckdb.connect(str(path)) as con:
        con.execute("create schema beton")
        con.execute("create table beton.signals (signal_id varchar, lift double, computed_at timestamp)")
        con.execute(f"insert into beton.signals values ('b', 2.0, now()), ('a', {lift!r}, now())")
        if extra_row:
            con.execute("insert into beton.signals values ('c', 1.0, now())")
    return str(path)


def test_identical_tables_compare_equal_whatever_the_row_order_and_run_time(tmp_path):
    before, after = _warehouse(tmp_path / "a.duckdb", 1.5), _warehouse(tmp_path / "b.duckdb", 1.5)
    assert beton_tables(before) == {"beton.signals"}
    assert compare(read(before, "beton.signals"), read(after, "beton.signals")) == []


def test_a_changed_value_and_a_missing_row_are_reported(tmp_path):
    before = _warehouse(tmp_path / "a.duckdb", 1.5)
    changed = _warehouse(tmp_path / "b.duckdb", 1.5 * (1 + 1e-9))
    longer = _warehouse(tmp_path / "c.duckdb", 1.5, extra_row=True)
    problems = compare(read(before, "beton.signals"), read(changed, "beton.signals"))
    assert len(problems) == 1 and problems[0].startswith("lift: 1 value(s) differ")
    assert compare(read(before, "beton.signals"), read(longer, "beton.signals")) == ["rows: 2 before, 3 after"]
