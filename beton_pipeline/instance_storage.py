"""The Dagster event log of the embedded (SQLite) instance, writing a run's batches of asset events in
one transaction per database.

Why. A run over a range of partitions (the daily health and scores of a whole history, every cohort
month) logs one "planned" and one materialization event per partition, and Dagster's SQLite event log
stores each event on its own: a new database engine and a committed transaction in the run's file and
another in the index file, per event — about 37 ms each on 2 cores, so 300 days of health and scores
(1,200 events) spent most of a run's monitoring stage in SQLite commits. Dagster already hands these
events over in batches when `DAGSTER_EVENT_BATCH_SIZE` is set (its PostgreSQL storage writes them with
one statement); the SQLite storage only loops over them. This class writes each batch in one
transaction per file, with the same rows, in the same order, as the event-by-event path.

`dagster.yaml` selects it (`event_log_storage`); `base_dir` relative to `DAGSTER_HOME` (default
`history/runs`, where Dagster's own SQLite storage keeps its files, so an existing instance keeps its
history). Like Dagster's `{env: DAGSTER_HOME}` settings, this assumes the instance is opened from
`DAGSTER_HOME` (what `dagster dev`, the daemon and `beton` do): code that opens an instance by its
folder (`DagsterInstance.from_config(path)`) sets `DAGSTER_HOME` to that folder first. Constructing it sets `DAGSTER_EVENT_BATCH_SIZE` (unless already set) in the process, which is
how Dagster enables batches: runs executed by this process (`beton run`, a run worker) batch their
partition events. `DAGSTER_EVENT_BATCH_SIZE=0` turns batching off.

**One engine per database file, commits without a flush to disk.** Every other event (a step's start, an
output, a dbt test's check result: ~5,500 writes in a small `beton run`) still commits on its own, and
Dagster's SQLite log built a new SQLAlchemy engine for each and disposed of it after: about 1.2 ms of CPU per
write on 2 loaded cores, measured against a kept engine (same NullPool: no connection stays open between
writes). This class keeps an engine per database file (the `ENGINE_CACHE` most recently used). Its
connections set `PRAGMA synchronous = NORMAL`: Dagster creates these files in WAL mode, where NORMAL skips
the flush to disk at each commit and flushes at checkpoints; a process that crashes loses nothing, and a
power cut can lose the last events but not damage a file (SQLite, "Write-Ahead Logging"). The production
instance is PostgreSQL (RUNBOOK).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from dagster._config import Field, IntSource, StringSource
from dagster._core.events import ASSET_EVENTS
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME, SqliteEventLogStorage
from dagster._core.storage.sqlalchemy_compat import db_result
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._serdes import ConfigurableClassData
from sqlalchemy import create_engine
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

DEFAULT_BASE_DIR = os.path.join("history", "runs")
DEFAULT_BATCH_SIZE = 1000
"""Events per batch: a run's planned events and its partition materializations (a batch ends with them)."""
ENGINE_CACHE = 16
"""Database files whose engine is kept (the index and the runs being written or read; least recent dropped)."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """Every new connection: no flush to disk at each commit (the files are in WAL mode; module docstring)."""
    dbapi_connection.execute("PRAGMA synchronous = NORMAL")


class BatchedSqliteEventLogStorage(SqliteEventLogStorage):
    """Dagster's run-sharded SQLite event log, with `store_event_batch` writing a batch of one run's asset
    events in one transaction per database file (module docstring)."""

    def __init__(
        self, base_dir: str, inst_data: ConfigurableClassData | None = None, batch_size: int = DEFAULT_BATCH_SIZE
    ):
        os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", str(batch_size))
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._tables_found: set[str] = set()
        super().__init__(base_dir, inst_data=inst_data)

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        return {
            "base_dir": Field(StringSource, is_required=False, default_value=DEFAULT_BASE_DIR),
            "batch_size": Field(IntSource, is_required=False, default_value=DEFAULT_BATCH_SIZE),
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> BatchedSqliteEventLogStorage:
        base_dir = config_value.get("base_dir") or DEFAULT_BASE_DIR
        if not os.path.isabs(base_dir):
            home = os.environ.get("DAGSTER_HOME")
            if not home:
                raise ValueError(
                    f"event_log_storage base_dir '{base_dir}' is relative to DAGSTER_HOME, which is not set: "
                    "set DAGSTER_HOME to the folder holding dagster.yaml, or give an absolute base_dir"
                )
            base_dir = os.path.join(home, base_dir)
        return cls(base_dir, inst_data=inst_data, batch_size=config_value.get("batch_size", DEFAULT_BATCH_SIZE))

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        """Dagster's `_connect` (one transaction on the shard's file, under the storage's lock), on the
        shard's kept engine instead of a new one per call."""
        with self._db_lock, self._shard_engine(shard).connect() as conn, conn.begin():
            yield conn

    def _shard_engine(self, shard: str) -> Engine:
        """The kept engine of `shard` (created, and its file initialised, on first use; least recent dropped)."""
        engine = self._engines.pop(shard, None)
        if engine is None:
            engine = create_engine(
                self.conn_string_for_shard(shard),
                poolclass=NullPool,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
            )
            sqlalchemy_event.listen(engine, "connect", _sqlite_pragmas)
        if shard not in self._initialized_dbs:  # also after `wipe`, which deletes the files
            self._initdb(engine)
            self._initialized_dbs.add(shard)
        self._engines[shard] = engine
        while len(self._engines) > ENGINE_CACHE:
            self._engines.popitem(last=False)[1].dispose()
        return engine

    def has_table(self, table_name: str) -> bool:
        """Dagster's check, on the index file's kept engine, remembered once the table is found.

        Every dynamic-partitions read checks that its table exists first (about half of each read's time),
        and adding day metadata to a partition of a range run reads the partitions three times: 1,800 checks
        for a 300-day history. Tables are only added (by `initdb` and migrations), so a table found stays found;
        `wipe` deletes the files, and the next use re-creates every table before any read."""
        if table_name in self._tables_found:
            return True
        with self._shard_engine(INDEX_SHARD_NAME).connect() as conn:
            found = bool(conn.dialect.has_table(conn, table_name))
        if found:
            self._tables_found.add(table_name)
        return found

    def dispose(self) -> None:
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()
        super().dispose()

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """Store `events` in order: each stretch of one run's asset events in one transaction on the run's
        file and one on the index file (rows as `store_event` writes them); any other event on its own."""
        stretch: list[EventLogEntry] = []
        for event in events:
            if _is_asset_event(event) and (not stretch or stretch[0].run_id == event.run_id):
                stretch.append(event)
                continue
            self._store_asset_stretch(stretch)
            stretch = []
            if _is_asset_event(event):
                stretch.append(event)
            else:
                self.store_event(event)
        self._store_asset_stretch(stretch)

    def _store_asset_stretch(self, events: list[EventLogEntry]) -> None:
        if len(events) <= 1:
            for event in events:
                self.store_event(event)
            return
        statements = [self.prepare_insert_event(event) for event in events]
        with self.run_connection(events[0].run_id) as conn:
            for statement in statements:
                conn.execute(statement)
        # The index file mirrors the asset events (cross-run asset queries read it), as in `store_event`.
        with self.index_transaction() as conn:
            event_ids = []
            for statement in statements:
                with db_result(conn, statement) as result:
                    event_ids.append(result.inserted_primary_key[0])
            self._store_asset_event_tags(conn, events, event_ids)
            for event, event_id in zip(events, event_ids, strict=True):
                self._store_asset_event(conn, event, event_id)


def _is_asset_event(event: EventLogEntry) -> bool:
    return bool(event.is_dagster_event and event.dagster_event_type in ASSET_EVENTS)
