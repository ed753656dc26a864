"""Opening the DuckDB warehouse: one writer at a time, readers read-only, UTC everywhere."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

LOCK_RETRY_SECONDS = 30.0
"""How long a writer waits for another process's lock on the file before failing with a clear error
(`BETON_LOCK_WAIT_SECONDS` overrides it)."""


def lock_wait_seconds() -> float:
    """`BETON_LOCK_WAIT_SECONDS`, else `LOCK_RETRY_SECONDS`."""
    return float(os.environ.get("BETON_LOCK_WAIT_SECONDS") or LOCK_RETRY_SECONDS)


MEMORY_LIMIT = "2GB"
"""DuckDB's memory limit for every connection to the warehouse and for dbt's (`BETON_DUCKDB_MEMORY_LIMIT`
overrides it). Past it DuckDB spills joins, aggregates and sorts to its temp directory instead of growing:
the warehouse's memory is bounded by this setting, not by the machine (DuckDB's own default is 80 % of the
machine's memory). Measured: README, "Performance"."""

_MEMORY_SIZE = re.compile(r"^\s*\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$", re.IGNORECASE)


class WarehouseSettingError(ValueError):
    """A `BETON_DUCKDB_*` variable DuckDB cannot use; the message names it and its accepted form."""


def duckdb_settings() -> dict[str, str]:
    """The DuckDB configuration of every warehouse connection: `memory_limit` (`BETON_DUCKDB_MEMORY_LIMIT`,
    else `MEMORY_LIMIT`), and when set `threads` (`BETON_DUCKDB_THREADS`) and `temp_directory`
    (`BETON_DUCKDB_TEMP_DIR`; DuckDB's default is `<warehouse>.tmp` beside the file). dbt's profile reads the
    same variables (`dbt_project/profiles.yml`)."""
    memory = os.environ.get("BETON_DUCKDB_MEMORY_LIMIT") or MEMORY_LIMIT
    if not _MEMORY_SIZE.match(memory):
        raise WarehouseSettingError(
            f"BETON_DUCKDB_MEMORY_LIMIT={memory!r} is not a memory size: use a number and a unit, e.g. 2GB or 512MB"
        )
    out = {"memory_limit": memory.strip()}
    threads = os.environ.get("BETON_DUCKDB_THREADS")
    if threads:
        if not threads.strip().isdigit() or int(threads) < 1:
            raise WarehouseSettingError(
                f"BETON_DUCKDB_THREADS={threads!r} must be a whole number of threads, 1 or more"
            )
        out["threads"] = str(int(threads))
    temp = os.environ.get("BETON_DUCKDB_TEMP_DIR")
    if temp:
        out["temp_directory"] = temp
    return out


RESERVED_STEMS = frozenset({"beton", "raw", "staging", "intermediate", "marts", "reference", "main"})
"""DuckDB names a file's catalog after its stem; a stem equal to one of beton's schemas makes
`beton.signals` ambiguous, so such file names are refused with a clear error."""


class WarehouseLockedError(RuntimeError):
    """Another process holds the DuckDB file's write lock."""


@contextmanager
def connect(
    path: Path | str, read_only: bool = False, wait_seconds: float | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to the warehouse file with `TimeZone = 'UTC'` and the bounded DuckDB configuration
    (`duckdb_settings`), retried (bounded) while another process holds the lock."""
    wait_seconds = lock_wait_seconds() if wait_seconds is None else wait_seconds
    config = duckdb_settings()
    path = Path(path)
    if path.stem.lower() in RESERVED_STEMS:
        raise ValueError(
            f"{path}: the warehouse file must not be named after one of beton's schemas "
            f"({', '.join(sorted(RESERVED_STEMS))}); DuckDB would make `{path.stem}.<table>` ambiguous. Try warehouse.duckdb"
        )
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_seconds
    delay = 0.1
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() >= deadline:
                if "lock" in str(exc).lower():
                    raise WarehouseLockedError(
                        f"{path}: the warehouse is locked by another process (waited {wait_seconds:.0f} s); "
                        "stop the other beton/dbt process or point BETON_WAREHOUSE elsewhere"
                    ) from None
                raise
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 2.0)
    try:
        con.execute("set TimeZone = 'UTC'")
        # SET, not duckdb.connect(config=...): DuckDB refuses a second in-process connection to a file opened
        # with a different config, and readers elsewhere (the sandbox, notebooks, tests) open it without one.
        # DuckDB refuses to switch the temp directory once it has spilled there, even to the same folder (a second
        # connection in this process to an instance that spilled): set what differs only.
        current = dict(
            con.sql("select name, value from duckdb_settings() where name in ('threads', 'temp_directory')").fetchall()
        )
        for name, value in config.items():
            if name != "memory_limit" and current.get(name) == value:
                continue
            quoted = value.replace("'", "''")
            con.execute(f"set {name} = '{quoted}'")
        yield con
    finally:
        con.close()


STATE_SCHEMA = "_beton_state"
"""What beton keeps between runs to skip work already done: the incremental ingest's files and row hashes
(`sources.ingest`), the lead-score model's last fit (`store.model`). Not an output: dropping it costs the next
run the work it skipped, never a different result."""


def table_exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    """Whether `schema.table` exists in the connected warehouse."""
    rows = con.sql(
        "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
        params=[schema, table],
    ).fetchall()
    return rows[0][0] > 0


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """`begin transaction` … `commit`, or `rollback` when the block raises: what it writes lands whole or not at all."""
    con.execute("begin transaction")
    try:
        yield con
    except BaseException:
        con.execute("rollback")
        raise
    con.execute("commit")
