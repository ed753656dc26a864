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
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from dagster._config import Field, IntSource, StringSource
from dagster._core.events import ASSET_EVENTS
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.sqlalchemy_compat import db_result
from dagster._serdes import ConfigurableClassData

DEFAULT_BASE_DIR = os.path.join("history", "runs")
DEFAULT_BATCH_SIZE = 1000
"""Events per batch: a run's planned events and its partition materializations (a batch ends with them)."""


class BatchedSqliteEventLogStorage(SqliteEventLogStorage):
    """Dagster's run-sharded SQLite event log, with `store_event_batch` writing a batch of one run's asset
    events in one transaction per database file (module docstring)."""

    def __init__(
        self, base_dir: str, inst_data: ConfigurableClassData | None = None, batch_size: int = DEFAULT_BATCH_SIZE
    ):
        os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", str(batch_size))
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
