"""Opening the DuckDB warehouse: one writer at a time, readers read-only, UTC everywhere."""

from __future__ import annotations

import os
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


RESERVED_STEMS = frozenset({"beton", "raw", "staging", "intermediate", "marts", "reference", "main"})
"""DuckDB names a file's catalog after its stem; a stem equal to one of beton's schemas makes
`beton.signals` ambiguous, so such file names are refused with a clear error."""


class WarehouseLockedError(RuntimeError):
    """Another process holds the DuckDB file's write lock."""


@contextmanager
def connect(
    path: Path | str, read_only: bool = False, wait_seconds: float | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to the warehouse file with `TimeZone = 'UTC'`, retried (bounded) while another process holds the lock."""
    wait_seconds = lock_wait_seconds() if wait_seconds is None else wait_seconds
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
        yield con
    finally:
        con.close()


def table_exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    """Whether `schema.table` exists in the connected warehouse."""
    rows = con.sql(
        "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
        params=[schema, table],
    ).fetchall()
    return rows[0][0] > 0
