"""The SQL signal sandbox: escape attempts are refused with a reason and leave no file behind; the
connection itself is locked down even if the static checks were bypassed; a time limit stops long
queries; valid signals return their accounts."""

import os
import tempfile
import time
from pathlib import Path

import duckdb
import pytest

from beton_pipeline.store.sql_sandbox import (
    SandboxLockedError,
    SqlSignalError,
    SqlSignalRefused,
    normalise_sql,
    run_sql_signal,
    sandbox_connection,
)


@pytest.fixture(scope="module")
def sandbox_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sandbox")
    con = duckdb.connect(str(root / "warehouse.duckdb"))
    con.execute("create schema marts")
    con.execute(
        "create table marts.account_event_features as select 'acc_' || i as account_id, 'invited_teammate' as event_name, "
        "i % 5 as n_first_14d, timestamp '2025-01-01' + to_days(cast(i as integer)) as first_occurred_at from range(100) t(i)"
    )
    con.execute("create view marts.accounts as select distinct account_id from marts.account_event_features")
    con.close()
    (root / "secret.csv").write_text("account_id\nstolen\n")
    return root


@pytest.fixture
def sandbox(sandbox_dir):
    with sandbox_connection(sandbox_dir / "warehouse.duckdb") as con:
        yield con


SUSPECT = ("duckdb", ".tmp", ".csv", ".parquet", ".json", "dump", ".wal")


def _listing(*dirs: Path) -> set[str]:
    found = set()
    for d in dirs:
        for root, subdirs, files in os.walk(d):
            found.update(os.path.join(root, name) for name in subdirs + files)
    return found


ESCAPES = [
    ("read_csv", "select account_id from read_csv('{d}/secret.csv')", "table function read_csv() is not allowed"),
    ("read_csv_auto", "select * from read_csv_auto('{d}/secret.csv')", "table function read_csv_auto() is not allowed"),
    ("read_parquet", "select * from read_parquet('{d}/*.parquet')", "table function read_parquet() is not allowed"),
    ("read_json", "select * from read_json('{d}/x.json')", "table function read_json() is not allowed"),
    (
        "read_text",
        "select content as account_id from read_text('/etc/passwd')",
        "table function read_text() is not allowed",
    ),
    ("glob", "select file as account_id from glob('{d}/*')", "table function glob() is not allowed"),
    ("replacement scan", "select * from '{d}/secret.csv'", "unknown table"),
    ("quoted file name", 'select * from "{d}/secret.csv"', "unknown table"),
    (
        "cte hiding a file read",
        "with s as (select * from read_csv('{d}/secret.csv')) select account_id from s",
        "read_csv() is not allowed",
    ),
    (
        "subquery hiding a file read",
        "select account_id from marts.accounts where account_id in (select account_id from read_csv('{d}/secret.csv'))",
        "read_csv() is not allowed",
    ),
    ("copy to", "copy (select 1) to '{d}/out.csv'", "COPY statements are not allowed"),
    ("copy from", "copy marts.accounts from '{d}/secret.csv'", "COPY statements are not allowed"),
    ("attach", "attach '{d}/other.duckdb' as other", "ATTACH statements are not allowed"),
    ("install", "install httpfs", "LOAD statements are not allowed"),
    ("load", "load httpfs", "LOAD statements are not allowed"),
    (
        "two statements",
        "select account_id from marts.accounts; copy (select 1) to '{d}/out2.csv'",
        "2 statements (SELECT, COPY)",
    ),
    (
        "comment hiding a second statement",
        "select account_id from marts.accounts -- harmless\n; attach '{d}/x.duckdb'",
        "2 statements (SELECT, ATTACH)",
    ),
    (
        "block comment then statement",
        "select account_id /* ; */ from marts.accounts; pragma database_list",
        "2 statements (SELECT, PRAGMA)",
    ),
    ("pragma", "pragma database_list", "PRAGMA statements are not allowed"),
    ("set", "set enable_external_access = true", "SET statements are not allowed"),
    ("reset", "reset lock_configuration", "statements are not allowed"),
    ("call", "call pragma_version()", "CALL statements are not allowed"),
    ("export", "export database '{d}/dump'", "EXPORT statements are not allowed"),
    ("import", "import database '{d}/dump'", "statements are not allowed"),
    ("create", "create table marts.evil as select 1", "CREATE statements are not allowed"),
    (
        "insert",
        "insert into marts.account_event_features select * from marts.account_event_features",
        "INSERT statements are not allowed",
    ),
    ("update", "update marts.account_event_features set n_first_14d = 0", "UPDATE statements are not allowed"),
    ("delete", "delete from marts.account_event_features", "DELETE statements are not allowed"),
    ("getenv", "select getenv('HOME') as account_id", "function getenv() is not allowed"),
    ("settings table function", "select name as account_id from duckdb_settings()", "duckdb_settings() is not allowed"),
    (
        "extensions table function",
        "select extension_name as account_id from duckdb_extensions()",
        "duckdb_extensions() is not allowed",
    ),
    ("sql from a string", "select * from query('copy (select 1) to ''{d}/q.csv''')", "query() is not allowed"),
    ("another catalog", "select * from system.main.duckdb_tables()", "is not allowed"),
    ("information schema", "select table_name as account_id from information_schema.tables", "unknown table"),
    ("not sql", "drop everything please", "not valid SQL"),
    ("empty", "  -- nothing\n", "not valid SQL|empty|0 statements"),
]


@pytest.mark.parametrize("name, sql, reason", ESCAPES, ids=[e[0] for e in ESCAPES])
def test_escape_attempts_are_refused_with_a_reason_and_leave_no_file(sandbox, sandbox_dir, name, sql, reason):
    tmp = Path(tempfile.gettempdir())
    before = _listing(sandbox_dir) | {str(p) for p in tmp.iterdir()}
    with pytest.raises(SqlSignalRefused) as info:
        run_sql_signal(sandbox, sql.format(d=sandbox_dir), timeout_seconds=5)
    assert any(part in str(info.value) for part in reason.split("|")), str(info.value)
    after = _listing(sandbox_dir) | {str(p) for p in tmp.iterdir()}
    # Other processes share the temp dir: look for what DuckDB or these statements could have written.
    created = {
        p for p in after - before if p.startswith(str(sandbox_dir)) or any(k in os.path.basename(p) for k in SUSPECT)
    }
    assert not created, created
    for target in ("out.csv", "out2.csv", "q.csv", "other.duckdb", "x.duckdb", "dump"):
        assert not (sandbox_dir / target).exists()


def test_at_least_ten_distinct_escape_kinds_are_covered():
    kinds = {
        "read_csv",
        "read_parquet",
        "read_json",
        "read_text",
        "glob",
        "copy to",
        "attach",
        "install",
        "load",
        "two statements",
        "pragma",
        "set",
        "cte hiding a file read",
        "comment hiding a second statement",
    }
    assert kinds <= {e[0] for e in ESCAPES}


@pytest.mark.parametrize(
    "statement",
    [
        "copy (select 1) to '{d}/direct.csv'",
        "select * from read_csv('{d}/secret.csv')",
        "attach '{d}/direct.duckdb' as d",
        "set enable_external_access = true",
        "set lock_configuration = false",
        "create table marts.direct as select 1",
        "load httpfs",
    ],
)
def test_the_connection_itself_refuses_even_without_the_static_checks(sandbox, sandbox_dir, statement):
    with pytest.raises(duckdb.Error):
        sandbox.execute(statement.format(d=sandbox_dir))
    assert not (sandbox_dir / "direct.csv").exists() and not (sandbox_dir / "direct.duckdb").exists()


def test_a_long_query_is_stopped_at_the_time_limit(sandbox, sandbox_dir):
    before = _listing(sandbox_dir)
    started = time.monotonic()
    with pytest.raises(SqlSignalRefused, match="time limit of 1 s"):
        run_sql_signal(
            sandbox,
            "select count(*) as account_id from range(10000000000) t(i) where i % 7 = 3 and hash(i) % 11 = 2",
            timeout_seconds=1,
        )
    assert time.monotonic() - started < 10
    assert _listing(sandbox_dir) == before
    assert sandbox.sql("select 42").fetchall() == [(42,)]  # the connection is usable after the interrupt


def test_a_valid_signal_returns_distinct_accounts_with_their_earliest_fired_at(sandbox):
    result = run_sql_signal(
        sandbox,
        "select account_id, first_occurred_at as fired_at from marts.account_event_features where n_first_14d >= 3 "
        "union all select account_id, first_occurred_at + interval 1 day from marts.account_event_features where n_first_14d >= 3",
    )
    assert result.has_fired_at and result.accounts.height == 40
    assert result.accounts.columns == ["account_id", "fired_at"]
    first = result.accounts.filter(result.accounts["account_id"] == "acc_3")
    assert str(first["fired_at"][0]) == "2025-01-04 00:00:00"
    assert result.checked.tables == ("marts.account_event_features",)


def test_allowed_constructs_ctes_ranges_and_values(sandbox):
    sql = "with t as (select account_id from marts.accounts) select account_id from t where account_id in (select 'acc_' || i from range(3) r(i))"
    assert run_sql_signal(sandbox, sql).accounts.height == 3


def test_errors_that_are_not_refusals_say_what_is_wrong(sandbox):
    with pytest.raises(SqlSignalError, match="must return an account_id column") as info:
        run_sql_signal(sandbox, "select event_name from marts.account_event_features")
    assert not isinstance(info.value, SqlSignalRefused)
    with pytest.raises(SqlSignalError, match="Referenced column"):
        run_sql_signal(sandbox, "select nope as account_id from marts.accounts")
    with pytest.raises(SqlSignalError, match="fired_at must be a timestamp"):
        run_sql_signal(sandbox, "select account_id, 1 as fired_at from marts.accounts")


def test_normalisation_ignores_comments_case_and_spacing():
    a = normalise_sql("SELECT account_id FROM marts.accounts WHERE account_id <> 'x'")
    b = normalise_sql("-- my signal\nselect   account_id\n  from marts.accounts  /* note */ where account_id != 'x'")
    assert a == b
    assert normalise_sql(a) == a
    with pytest.raises(SqlSignalRefused):
        normalise_sql("select 1; select 2")


def test_a_missing_warehouse_is_an_error(tmp_path):
    with pytest.raises(SqlSignalError, match="no warehouse yet"), sandbox_connection(tmp_path / "nothing.duckdb"):
        pass


def test_a_run_holding_the_warehouse_is_told_apart_from_a_bad_query(tmp_path):
    from tests.test_warehouse_lock import hold_lock

    path = tmp_path / "warehouse.duckdb"
    holder = hold_lock(path, 30)
    try:
        with (
            pytest.raises(SandboxLockedError, match="cannot open the warehouse read-only"),
            sandbox_connection(path, wait_seconds=0.3),
        ):
            pass
    finally:
        holder.kill()
        holder.wait(timeout=10)
    with sandbox_connection(path, wait_seconds=0.3) as con:  # released: it opens
        assert con.sql("select 1").fetchall() == [(1,)]
