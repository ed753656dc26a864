"""SQL signals: run a user's `SELECT account_id [, fired_at] ...` against the warehouse, in a sandbox.

Layers, each enough on its own for the common escapes, so one mistake does not open the warehouse:

1. **One statement, and a SELECT.** DuckDB's own parser (`extract_statements`, the parser that
   would run the query) splits the text: more than one statement (`;`-separated, or hidden behind a
   comment) or any statement type other than SELECT (ATTACH, COPY, INSTALL/LOAD, PRAGMA, SET,
   EXPORT, IMPORT, CALL, CREATE, INSERT, UPDATE, DELETE, EXPLAIN, PIVOT ...) is refused.
2. **Only the warehouse's tables.** The SELECT's syntax tree (`json_serialize_sql`) is walked:
   every table function (`read_csv`, `read_parquet`, `read_json`, `read_text`, `read_blob`, `glob`,
   `query`, `duckdb_*`, `pragma_*`, ...) is refused except `range`/`generate_series`/`unnest`; every
   table must be a table or view of the warehouse (or a CTE of the query), so `FROM 'file.csv'`
   (a replacement scan) is refused too; so is `getenv`.
3. **A locked-down connection.** The query runs on a *read-only* connection opened with
   `enable_external_access = false` (no file system, no network, no COPY/ATTACH/EXPORT),
   extension autoload/autoinstall off, community and unsigned extensions off, no temporary
   directory (a query that would spill fails instead of writing files), a memory limit, and
   `lock_configuration = true` (no SET can undo any of it).
4. **A time limit.** A timer thread calls `interrupt()` on the connection after `timeout_seconds`.

Every refusal raises `SqlSignalRefused` with the reason; a query that is allowed but fails
(a typo, a missing column) raises `SqlSignalError`.
"""

from __future__ import annotations

import difflib
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

ALLOWED_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})
"""Table functions that only generate values (no file, catalog or setting access)."""

REFUSED_FUNCTIONS = frozenset({"getenv", "read_text", "read_blob", "glob", "query", "query_table"})
"""Functions refused wherever they appear (environment and file access, SQL-from-strings)."""

DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_MEMORY_LIMIT = "1GB"
MAX_SQL_CHARS = 100_000
LOCK_RETRY_SECONDS = 10.0


class SqlSignalError(ValueError):
    """A SQL signal could not be run (invalid SQL, a failing query, a result without `account_id`).

    `line` is the line of the SQL text the problem is on, when it can be told (the first line naming
    the unknown table or column), else None."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


class SqlSignalRefused(SqlSignalError):
    """The sandbox refused a SQL signal; the message says why."""


def sandbox_config(memory_limit: str = DEFAULT_MEMORY_LIMIT, threads: int = 2) -> dict:
    """The DuckDB configuration of a sandbox connection (DuckDB 2.0 option names)."""
    return {
        "enable_external_access": False,
        "autoload_known_extensions": False,
        "autoinstall_known_extensions": False,
        "allow_community_extensions": False,
        "allow_unsigned_extensions": False,
        "temp_directory": "",
        "memory_limit": memory_limit,
        "threads": threads,
        "lock_configuration": True,  # last: nothing above can be changed by the query
    }


@dataclass(frozen=True)
class CheckedSql:
    """A SQL signal that passed the static checks: the text as given, DuckDB's normalised form, tables read."""

    sql: str
    normalised: str
    tables: tuple[str, ...]


@dataclass(frozen=True)
class SqlSignalResult:
    """The accounts a SQL signal returned: `accounts` has account_id (String) and fired_at (Datetime, null when not given)."""

    checked: CheckedSql
    accounts: pl.DataFrame
    has_fired_at: bool
    seconds: float


def statement_check(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but exactly one SELECT statement (DuckDB's own parser decides)."""
    if not sql or not sql.strip():
        raise SqlSignalRefused("the SQL is empty; expected one SELECT returning account_id")
    if len(sql) > MAX_SQL_CHARS:
        raise SqlSignalRefused(f"the SQL is {len(sql):,} characters long; at most {MAX_SQL_CHARS:,} are accepted")
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise SqlSignalRefused(f"not valid SQL: {_first_line(exc)}") from None
    if len(statements) != 1:
        kinds = ", ".join(_statement_name(s.type) for s in statements)
        raise SqlSignalRefused(f"{len(statements)} statements ({kinds}); exactly one SELECT is allowed")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise SqlSignalRefused(f"{_statement_name(kind)} statements are not allowed; exactly one SELECT is")


def _statement_name(kind) -> str:
    return str(kind).rsplit(".", 1)[-1].upper()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _with_hint(exc: BaseException) -> str:
    """DuckDB's first line plus its hint, shortened to the nearest name: `... (did you mean "x"?)`."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    first = lines[0] if lines else type(exc).__name__
    for line in lines[1:]:
        match = re.match(r'^(?:Candidate bindings|Did you mean)\s*:?\s*"([^"]+)"', line)
        if match:
            return f'{first} (did you mean "{match.group(1)}"?)'
    return first


def line_naming(sql: str, name: str) -> int | None:
    """The first line of `sql` (1-based) that mentions `name` outside a comment, else None."""
    pattern = re.compile(rf"(?<!\w){re.escape(name)}(?!\w)", re.IGNORECASE)
    for number, line in enumerate(sql.splitlines(), start=1):
        if pattern.search(line.split("--", 1)[0]):
            return number
    return None


def _named_in_error(exc: BaseException) -> str | None:
    """The table or column name an error's first line quotes (`"x"` or `name x does not`), if any."""
    first = _first_line(exc)
    match = re.search(r'"([^"]+)"', first) or re.search(r"with name (\S+) does not exist", first)
    return match.group(1) if match else None


def _walk(node) -> Iterator[dict]:
    """Every dict in a JSON tree, depth first (iterative, so deep trees cannot overflow the stack)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def tree_check(
    con: duckdb.DuckDBPyConnection, sql: str, known_tables: set[tuple[str, str]], catalog: str
) -> tuple[str, ...]:
    """Refuse table functions, unknown tables and refused functions in a SELECT's syntax tree; return the tables read."""
    serialised = con.sql("select json_serialize_sql($q)", params={"q": sql}).fetchall()[0][0]
    tree = json.loads(serialised)
    if tree.get("error"):
        raise SqlSignalRefused(f"the query could not be checked: {tree.get('error_message', 'unknown error')}")
    cte_names = {
        entry["key"].lower()
        for node in _walk(tree)
        if isinstance(node.get("cte_map"), dict)
        for entry in node["cte_map"].get("map", [])
        if isinstance(entry, dict) and "key" in entry
    }
    tables: set[str] = set()
    for node in _walk(tree):
        kind = node.get("type")
        if kind == "TABLE_FUNCTION":
            name = str((node.get("function") or {}).get("function_name", "")).lower()
            if name not in ALLOWED_TABLE_FUNCTIONS:
                raise SqlSignalRefused(
                    f"table function {name}() is not allowed: SQL signals read only the warehouse's tables "
                    f"(allowed table functions: {', '.join(sorted(ALLOWED_TABLE_FUNCTIONS))})"
                )
        elif kind == "BASE_TABLE":
            table_catalog = str(node.get("catalog_name") or "").lower()
            schema = str(node.get("schema_name") or "").lower()
            name = str(node.get("table_name") or "").lower()
            shown = ".".join(p for p in (table_catalog, schema, name) if p)
            if not schema and not table_catalog and name in cte_names:
                continue
            if table_catalog and table_catalog != catalog.lower():
                raise SqlSignalRefused(
                    f"table {shown} is not in the warehouse: SQL signals read only the warehouse's tables"
                )
            if (schema, name) not in known_tables:
                raise SqlSignalRefused(
                    f"unknown table {shown!r}{_suggest_table(shown, known_tables)}: SQL signals read only the "
                    "warehouse's tables and views (e.g. marts.account_event_features); files and other databases "
                    "are not allowed",
                    line=line_naming(sql, name),
                )
            tables.add(f"{schema}.{name}")
        if node.get("class") == "FUNCTION":
            name = str(node.get("function_name", "")).lower()
            if name in REFUSED_FUNCTIONS:
                raise SqlSignalRefused(f"function {name}() is not allowed in SQL signals")
    return tuple(sorted(tables))


def _suggest_table(shown: str, known_tables: set[tuple[str, str]]) -> str:
    """` (did you mean `schema.table`?)` for the nearest warehouse table (difflib), else ``."""
    names = sorted(f"{schema}.{table}" for schema, table in known_tables)
    match = difflib.get_close_matches(shown, names, n=1, cutoff=0.6) or difflib.get_close_matches(
        shown.rsplit(".", 1)[-1], [n.rsplit(".", 1)[-1] for n in names], n=1, cutoff=0.6
    )
    if not match:
        return ""
    full = next((n for n in names if n == match[0] or n.endswith("." + match[0])), match[0])
    return f" (did you mean `{full}`?)"


def _known_tables(con: duckdb.DuckDBPyConnection) -> tuple[set[tuple[str, str]], str]:
    catalog = con.sql("select current_database()").fetchall()[0][0]
    rows = con.sql(
        "select table_schema, table_name from information_schema.tables where table_catalog = current_database()"
    ).fetchall()
    return {(s.lower(), t.lower()) for s, t in rows}, catalog


@contextmanager
def sandbox_connection(
    warehouse: Path | str, memory_limit: str = DEFAULT_MEMORY_LIMIT, wait_seconds: float = LOCK_RETRY_SECONDS
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only, locked-down connection to the warehouse file (retried while another process writes it)."""
    path = Path(warehouse)
    if not path.exists():
        raise SqlSignalError(f"{path}: no warehouse yet; run `beton run` first")
    deadline = time.monotonic() + wait_seconds
    delay = 0.1
    while True:
        try:
            con = duckdb.connect(str(path), read_only=True, config=sandbox_config(memory_limit))
            break
        except duckdb.IOException as exc:
            locked = "lock" in str(exc).lower()
            if not locked or time.monotonic() >= deadline:
                error = SandboxLockedError if locked else SqlSignalError
                raise error(f"{path}: cannot open the warehouse read-only: {_first_line(exc)}") from None
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 1.0)
    try:
        yield con
    finally:
        con.close()


class SandboxLockedError(SqlSignalError):
    """The sandbox could not open the warehouse: a run held its write lock for the whole wait (try again later;
    nothing is wrong with the SQL)."""


def check_sql(con: duckdb.DuckDBPyConnection, sql: str) -> CheckedSql:
    """The static checks (one SELECT; only warehouse tables; no refused function) on a sandbox connection."""
    statement_check(con, sql)
    known, catalog = _known_tables(con)
    tables = tree_check(con, sql, known, catalog)
    normalised = con.sql("select json_deserialize_sql(json_serialize_sql($q))", params={"q": sql}).fetchall()[0][0]
    return CheckedSql(sql=sql, normalised=normalised, tables=tables)


def normalise_sql(sql: str) -> str:
    """DuckDB's canonical text of one SELECT (comments, case of keywords and spacing normalised).

    Raises SqlSignalRefused when the text is not exactly one SELECT.
    """
    con = duckdb.connect(config=sandbox_config(memory_limit="256MB", threads=1))
    try:
        statement_check(con, sql)
        return con.sql("select json_deserialize_sql(json_serialize_sql($q))", params={"q": sql}).fetchall()[0][0]
    finally:
        con.close()


def run_sql_signal(
    con: duckdb.DuckDBPyConnection, sql: str, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
) -> SqlSignalResult:
    """Check and run a SQL signal on a `sandbox_connection`; its distinct accounts with their earliest fired_at.

    The result must have an `account_id` column; an optional `fired_at` (timestamp or date) says when
    the signal fired for that account (the earliest time per account is kept).
    """
    checked = check_sql(con, sql)
    started = time.perf_counter()
    timer = threading.Timer(timeout_seconds, con.interrupt)
    timer.daemon = True
    timer.start()
    try:
        relation = con.sql(sql)
        columns = [c.lower() for c in relation.columns]
        if "account_id" not in columns:
            raise SqlSignalError(
                f"the query returns {', '.join(relation.columns) or 'no columns'}; it must return an account_id column"
            )
        has_fired_at = "fired_at" in columns
        if has_fired_at:
            kind = str(relation.types[columns.index("fired_at")]).upper()
            if not (kind.startswith("TIMESTAMP") or kind == "DATE"):
                raise SqlSignalError(f"fired_at must be a timestamp or a date, got {kind}")
        frame = relation.pl()
    except duckdb.InterruptException:
        raise SqlSignalRefused(
            f"the query ran longer than the time limit of {timeout_seconds:g} s and was stopped"
        ) from None
    except duckdb.PermissionException as exc:
        raise SqlSignalRefused(f"not allowed in the sandbox: {_first_line(exc)}") from None
    except duckdb.OutOfMemoryException as exc:
        raise SqlSignalRefused(f"the query needs more memory than the sandbox allows: {_first_line(exc)}") from None
    except duckdb.Error as exc:
        named = _named_in_error(exc)
        raise SqlSignalError(
            f"the query failed: {_with_hint(exc)}", line=line_naming(sql, named) if named else None
        ) from None
    finally:
        timer.cancel()
    elapsed = time.perf_counter() - started
    rename = {c: c.lower() for c in frame.columns}
    frame = frame.rename(rename)
    fired_at = (pl.col("fired_at").cast(pl.Datetime("us")) if has_fired_at else pl.lit(None, pl.Datetime("us"))).alias(
        "fired_at"
    )
    accounts = (
        frame.select(pl.col("account_id").cast(pl.String), fired_at)
        .filter(pl.col("account_id").is_not_null())
        .group_by("account_id")
        .agg(pl.col("fired_at").min())
        .sort("account_id")
    )
    return SqlSignalResult(checked=checked, accounts=accounts, has_fired_at=has_fired_at, seconds=elapsed)
