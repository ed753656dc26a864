"""The warehouse's DuckDB configuration is bounded by settings, not by the machine: every connection (and
dbt's profile) gets `memory_limit` (`MEMORY_LIMIT` unless `BETON_DUCKDB_MEMORY_LIMIT`), optional threads and a
temp directory; past the limit DuckDB spills to disk instead of failing; a bad value is refused by name."""

import re
from pathlib import Path

import duckdb
import pytest
import yaml

from beton_pipeline.warehouse import MEMORY_LIMIT, WarehouseSettingError, connect, duckdb_settings

PROFILE = Path(__file__).resolve().parents[1] / "dbt_project" / "profiles.yml"
VARIABLES = ("BETON_DUCKDB_MEMORY_LIMIT", "BETON_DUCKDB_THREADS", "BETON_DUCKDB_TEMP_DIR")


@pytest.fixture
def clean_env(monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _setting(con, name: str):
    return con.sql(f"select current_setting('{name}')").fetchall()[0][0]


def _as_duckdb_shows(size: str) -> str:
    """How DuckDB itself shows a memory limit of `size` (it rounds: 2GB shows as 1.8 GiB)."""
    with duckdb.connect() as scratch:
        scratch.execute(f"set memory_limit = '{size}'")
        return _setting(scratch, "memory_limit")


def test_every_connection_gets_the_default_limit_and_the_variables_override_it(tmp_path, clean_env):
    path = tmp_path / "warehouse.duckdb"
    assert duckdb_settings() == {"memory_limit": MEMORY_LIMIT}
    with connect(path) as con:
        assert _setting(con, "memory_limit") == _as_duckdb_shows(MEMORY_LIMIT)
        con.execute("create table t as select 1 as x")

    spill = tmp_path / "it's spill"
    clean_env.setenv("BETON_DUCKDB_MEMORY_LIMIT", "300MB")
    clean_env.setenv("BETON_DUCKDB_THREADS", "1")
    clean_env.setenv("BETON_DUCKDB_TEMP_DIR", str(spill))
    with connect(path, read_only=True) as con:
        assert _setting(con, "memory_limit") == _as_duckdb_shows("300MB") != _as_duckdb_shows(MEMORY_LIMIT)
        assert _setting(con, "threads") == 1
        assert _setting(con, "temp_directory") == str(spill)
        assert _setting(con, "TimeZone") == "UTC"


def test_readers_without_a_config_can_open_the_file_beside_a_beton_connection(tmp_path, clean_env):
    """The settings are SET after connecting: a notebook's or the sandbox's plain `duckdb.connect` in the same
    process is not refused for "a different configuration than existing connections"."""
    path = tmp_path / "warehouse.duckdb"
    with connect(path) as con:
        con.execute("create table t as select 42 as x")
    with connect(path, read_only=True) as con, duckdb.connect(str(path), read_only=True) as plain:
        assert con.sql("select x from t").fetchall() == plain.sql("select x from t").fetchall() == [(42,)]


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("BETON_DUCKDB_MEMORY_LIMIT", "4 gigs", "is not a memory size"),
        ("BETON_DUCKDB_MEMORY_LIMIT", "80%", "is not a memory size"),
        ("BETON_DUCKDB_THREADS", "two", "whole number of threads"),
        ("BETON_DUCKDB_THREADS", "0", "whole number of threads"),
    ],
)
def test_a_value_duckdb_cannot_use_is_refused_by_name(tmp_path, clean_env, name, value, says):
    clean_env.setenv(name, value)
    with pytest.raises(WarehouseSettingError) as err, connect(tmp_path / "warehouse.duckdb"):
        pass
    assert f"{name}={value!r}" in str(err.value) and says in str(err.value)


def test_past_the_limit_duckdb_spills_to_the_temp_directory_instead_of_failing(tmp_path, clean_env):
    """A group-by over 2M distinct keys needs several times a 24MB limit: with spilling turned off it runs out of
    memory (so the limit binds); with beton's configuration it completes (out-of-core hash aggregation) with the
    same answer as under a generous limit."""
    path = tmp_path / "warehouse.duckdb"
    clean_env.setenv("BETON_DUCKDB_THREADS", "1")
    query = "select count(*), sum(s) from (select k, sum(v) as s from t group by k)"
    with connect(path) as con:
        con.execute("create table t as select (i * 7919) % 2000000 as k, i::double as v from range(4000000) r(i)")
    clean_env.setenv("BETON_DUCKDB_MEMORY_LIMIT", "24MB")
    with connect(path, read_only=True) as con:
        con.execute("set temp_directory = ''")  # no spilling: the limit alone
        with pytest.raises(duckdb.OutOfMemoryException):
            con.sql(query).fetchall()
    clean_env.setenv("BETON_DUCKDB_TEMP_DIR", str(tmp_path / "spill"))
    with connect(path, read_only=True) as con:
        limited = con.sql(query).fetchall()
    clean_env.setenv("BETON_DUCKDB_MEMORY_LIMIT", "8GB")
    with connect(path, read_only=True) as con:
        assert con.sql(query).fetchall() == limited
    assert limited[0][0] == 2_000_000


def test_a_second_connection_after_a_spill_keeps_the_temp_directory(tmp_path, clean_env):
    """DuckDB refuses to switch its temp directory once it has spilled there, even to the same folder: a second
    connection in the same process (the instance is shared) must not try."""
    path = tmp_path / "warehouse.duckdb"
    clean_env.setenv("BETON_DUCKDB_THREADS", "1")
    clean_env.setenv("BETON_DUCKDB_TEMP_DIR", str(tmp_path / "spill"))
    with connect(path) as con:
        con.execute("create table t as select (i * 7919) % 2000000 as k, i::double as v from range(4000000) r(i)")
    clean_env.setenv("BETON_DUCKDB_MEMORY_LIMIT", "24MB")
    with connect(path) as first:
        first.sql("select count(*) from (select k, sum(v) from t group by k)").fetchall()  # spills
        with connect(path) as second:
            assert second.sql("select count(*) from t").fetchall() == [(4_000_000,)]


def test_dbts_profile_reads_the_same_variables_with_the_same_default():
    settings = yaml.safe_load(PROFILE.read_text())["beton"]["outputs"]["duckdb"]["config_options"]
    memory = re.fullmatch(r"\{\{ env_var\('BETON_DUCKDB_MEMORY_LIMIT', '([^']+)'\) \}\}", settings["memory_limit"])
    assert memory and memory.group(1) == MEMORY_LIMIT, settings["memory_limit"]
    assert "env_var('BETON_DUCKDB_TEMP_DIR'" in settings["temp_directory"]
