"""The tracking spool: experiment exposures and conversions `beton serve` records (`POST /api/track`), kept in
a SQLite file until the ingest reads them into the warehouse through the contract's rules.

Why a spool and not the warehouse: DuckDB has one writer at a time and a pipeline run holds it for minutes, so
a request cannot wait for it. SQLite in WAL mode takes a small durable write from any thread or process in
about a millisecond, while the pipeline reads. The rows then reach `raw.raw_tracked_events` as every source
row does: `export` writes the new ones as a sealed JSON Lines file of the contract table `tracked_events`
(`contract.TRACKED_EVENTS`, the events' columns and rules), and the ingest validates, quarantines and loads it
like any file (incrementally: each export is a new file that sorts after the earlier ones).

* `TrackingSpool.record`: one event, atomically. An event is identified by (experiment, user key, event
  type): the first of a user's exposures to an experiment is the one kept, and so is the first conversion
  (looked up and inserted under one write lock, with a UNIQUE constraint behind it, so two requests at once
  cannot both win; a repeat takes no id, so the kept events' ids are consecutive); a repeat returns the first
  event's uuid and says it was a duplicate. The uuid is a UUID version 5 of those three keys in beton's own
  namespace (`TRACKING_NAMESPACE`), so it is the same in every process and never equals a uuid of another
  version (PostHog's are version 7). Values are bounded (`MAX_VALUE_CHARS`) and checked (`check_event`); a refused
  event raises `ValueError` with a paragraph saying what to change.
* `TrackingSpool.export`: the rows not yet exported to a folder, in id order, as
  `<folder>/tracked_events/<first id>-<last id>.jsonl` (ids zero-padded to 12 digits, so path order is id
  order), at most `EXPORT_BATCH_ROWS` rows a file. A file is written under a hidden name (which the ingest
  skips), flushed to disk, renamed into place, and only then is the folder's watermark advanced, in the same
  SQLite write transaction. A crash between the rename and the commit leaves a file the watermark does not
  cover: the next export finds it by its first id and adopts it when its bytes are exactly the rows it names
  (never writing them twice), or stops with a paragraph when they are not (the folder came from another
  spool). One export runs at a time (the write transaction); records wait for it (`BUSY_TIMEOUT_SECONDS`).

SQLite's documented limits relied on: WAL mode with `synchronous=FULL` makes a committed transaction durable
across a power loss; WAL needs every process on the same host (no network file system); `busy_timeout` makes a
writer wait for the lock instead of failing at once; the rowid of an `AUTOINCREMENT` table only grows, never
reusing an id, and with one writer at a time a reader never sees a larger id committed before a smaller one.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, get_args

from beton_pipeline.core.playbooks import EXPOSURE_EVENT, MAX_KEY_CHARS
from beton_pipeline.sources.contract import TRACKED_EVENTS

EventType = Literal["exposure", "conversion"]


TRACKING_NAMESPACE = uuid.UUID("3a0c5f8e-7d4b-5b1e-9c2a-6f1d0e8b4a72")
"""The namespace of the tracked events' uuid5s (a constant: the uuid of an event never changes)."""

MAX_VALUE_CHARS = MAX_KEY_CHARS
"""The longest experiment, variant, user key or event name accepted: room for a flag key, a variant key, an
e-mail address (254 characters at most) or a UUID, and a bound on what a request can make the spool hold (the
experiments' own bound, `core.playbooks.MAX_KEY_CHARS`, so a defined experiment can always be tracked)."""

BUSY_TIMEOUT_SECONDS = 10.0
"""How long a write waits for another writer (a record, or an export writing its file) before it fails."""

EXPORT_BATCH_ROWS = 100_000
"""The most rows an export writes to one file (about 30 MB): bounds how long an export holds the write lock
while records wait, and the memory it takes. A larger backlog is exported as several files, in id order."""

SPOOL_FILE = "tracking.sqlite"
EXPORT_FOLDER = "tracked"

_SCHEMA = """
create table if not exists tracked_events (
    id integer primary key autoincrement,  -- the export order; never reused
    uuid text not null,
    experiment text not null,
    variant text not null,
    user_key text not null,
    event_type text not null check (event_type in ('exposure', 'conversion')),
    event_name text not null,
    occurred_at text not null,  -- ISO-8601, UTC
    recorded_at text not null,
    unique (experiment, user_key, event_type)
);
create table if not exists exports (
    folder text primary key,
    exported_through integer not null  -- the last id written to the folder
);
"""


@dataclass(frozen=True)
class TrackedEvent:
    """One exposure or conversion of a user in an experiment, as `beton serve` receives it."""

    experiment: str
    """The experiment's feature flag (PostHog's `$feature_flag`)."""
    variant: str
    user_key: str
    """The user's id in the analytics tool: the event's `distinct_id`."""
    event_type: EventType
    event_name: str
    """`EXPOSURE_EVENT` for an exposure; the experiment's goal event for a conversion."""
    occurred_at: datetime
    """When it happened: aware, or naive meaning UTC. Stored as UTC."""

    @property
    def uuid(self) -> str:
        """The event's id: a uuid5 of (experiment, user key, event type), the keys that make a duplicate."""
        name = json.dumps([self.experiment, self.user_key, self.event_type])
        return str(uuid.uuid5(TRACKING_NAMESPACE, name))


@dataclass(frozen=True)
class KeptEvent:
    """The event the spool keeps for a key: its uuid, its variant and when it happened (UTC)."""

    uuid: str
    variant: str
    occurred_at: datetime


@dataclass(frozen=True)
class ExportResult:
    """What one `TrackingSpool.export` did: the files it wrote (or adopted after a crash) and their rows."""

    files: tuple[Path, ...]
    rows: int
    exported_through: int
    """The last id the folder now holds (0: none yet)."""

    @property
    def summary(self) -> str:
        """One line for the run's log."""
        if not self.files:
            return f"tracked events: nothing new to export (the export holds ids up to {self.exported_through})"
        return f"tracked events: {self.rows} row(s) exported to {len(self.files)} file(s), through id {self.exported_through}"


def check_event(event: TrackedEvent) -> list[str]:
    """Why the spool refuses `event`, one sentence each (empty: it is accepted)."""
    problems = []
    for name in ("experiment", "variant", "user_key", "event_name"):
        value = getattr(event, name)
        if not isinstance(value, str):
            problems.append(f"{name} is {type(value).__name__}; expected text")
        elif not value.strip():
            problems.append(f"{name} is empty; send a non-empty text")
        elif len(value) > MAX_VALUE_CHARS:
            problems.append(f"{name} is {len(value):,} characters, over the limit of {MAX_VALUE_CHARS}")
        elif any(ord(c) < 32 or ord(c) == 127 for c in value):
            problems.append(f"{name} holds a control character (a line break, tab or NUL); send printable text")
    if event.event_type not in get_args(EventType):
        problems.append(f"event_type is {event.event_type!r}; expected one of {', '.join(get_args(EventType))}")
    elif event.event_type == "exposure" and event.event_name != EXPOSURE_EVENT:
        problems.append(f"an exposure is recorded as the event {EXPOSURE_EVENT}, not {event.event_name!r}")
    elif event.event_type == "conversion" and event.event_name == EXPOSURE_EVENT:
        problems.append(f"a conversion's event is the experiment's goal event, not {EXPOSURE_EVENT} (an exposure)")
    if not isinstance(event.occurred_at, datetime):
        problems.append(f"occurred_at is {type(event.occurred_at).__name__}; expected a date and time")
    else:
        try:
            _utc_text(event.occurred_at)
        except OverflowError:
            problems.append(f"occurred_at {event.occurred_at.isoformat()} is out of range in UTC")
    return problems


def _utc_text(moment: datetime) -> str:
    """ISO-8601 in UTC with its offset (a naive time is UTC), as the contract's timestamp rules read it."""
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return aware.isoformat(timespec="microseconds")


def _as_record(row: tuple) -> dict:
    """One spool row (`_next_file`'s columns) as a `tracked_events` record: the events' columns, with the flag,
    the variant and the event type in the properties (the exposure models read `$feature_flag` and
    `$feature_flag_response`, as on PostHog's own `$feature_flag_called`)."""
    _, event_uuid, experiment, variant, user_key, event_type, event_name, occurred_at = row
    return {
        "uuid": event_uuid,
        "event": event_name,
        "timestamp": occurred_at,
        "distinct_id": user_key,
        "properties": {"$feature_flag": experiment, "$feature_flag_response": variant, "beton_tracked": event_type},
    }


def tracking_paths(warehouse: Path) -> tuple[Path, Path]:
    """(spool file, export folder) of the warehouse file `warehouse`: `tracking.sqlite` and `tracked/` beside it."""
    folder = Path(warehouse).resolve().parent
    return folder / SPOOL_FILE, folder / EXPORT_FOLDER


class SpoolMismatchError(RuntimeError):
    """The export folder holds a file that is not the spool's rows it is named for."""


class TrackingSpool:
    """The spool file (SQLite, WAL), created on first use. Safe from any number of threads and processes:
    each call opens its own connection, and SQLite's lock orders the writers."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._ready = False
        self._ready_lock = threading.Lock()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A connection inside a write transaction (`begin immediate`): committed on success, rolled back on
        an error, closed in either case."""
        self._prepare()
        con = self._connect()
        try:
            con.execute("begin immediate")
            try:
                yield con
            except BaseException:
                con.execute("rollback")
                raise
            con.execute("commit")
        finally:
            con.close()

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        con.execute("pragma synchronous = full")
        return con

    def _prepare(self) -> None:
        """Create the file, switch it to WAL (a setting the file keeps) and its tables, once per instance."""
        with self._ready_lock:
            if self._ready:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = self._connect()
            try:
                con.execute("pragma journal_mode = wal")
                con.executescript(_SCHEMA)
            finally:
                con.close()
            self._ready = True

    def kept(self, experiment: str, user_key: str, event_type: EventType) -> KeptEvent | None:
        """The event kept for (experiment, user key, event type): the first one recorded, or None."""
        if not self.path.exists():
            return None
        self._prepare()
        con = self._connect()
        try:
            row = con.execute(
                "select uuid, variant, occurred_at from tracked_events "
                "where experiment = ? and user_key = ? and event_type = ?",
                [experiment, user_key, event_type],
            ).fetchone()
        finally:
            con.close()
        return None if row is None else KeptEvent(row[0], row[1], datetime.fromisoformat(row[2]))

    def record(self, event: TrackedEvent) -> tuple[str, bool]:
        """Keep `event` durably; returns (its uuid, whether an event with its keys was already kept).

        A duplicate (same experiment, user key and event type) changes nothing: the first one stays, and its
        uuid is returned (the same uuid: it is made from those keys). Raises ValueError, a paragraph saying
        what to change, when the event is refused (`check_event`)."""
        problems = check_event(event)
        if problems:
            raise ValueError(f"The tracked event was not recorded: {'; '.join(problems)}.")
        keys = [event.experiment, event.user_key, event.event_type]
        with self._write() as con:  # the lookup and the insert under one write lock: one request wins
            kept = con.execute(
                "select uuid from tracked_events where experiment = ? and user_key = ? and event_type = ?", keys
            ).fetchone()
            if kept is not None:
                return kept[0], True
            con.execute(
                "insert into tracked_events "
                "(uuid, experiment, variant, user_key, event_type, event_name, occurred_at, recorded_at) "
                "values (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    event.uuid,
                    event.experiment,
                    event.variant,
                    event.user_key,
                    event.event_type,
                    event.event_name,
                    _utc_text(event.occurred_at),
                    _utc_text(datetime.now(UTC)),
                ],
            )
        return event.uuid, False

    def export(self, folder: Path) -> ExportResult:
        """Write the rows not yet exported to `folder` as sealed `tracked_events` JSON Lines files (module
        docstring), then advance the folder's watermark; returns what was written. Run twice, the second
        export writes nothing; after a crash it neither loses nor repeats a row."""
        folder = Path(folder).resolve()
        table_dir = folder / TRACKED_EVENTS
        files: list[Path] = []
        rows = 0
        while True:
            with self._write() as con:
                if not files:
                    table_dir.mkdir(parents=True, exist_ok=True)
                    _remove_unsealed(table_dir)  # an export stopped before its rename; none runs now (the lock)
                done = _exported_through(con, folder)
                path, batch = self._next_file(con, table_dir, done)
                if path is None:
                    return ExportResult(tuple(files), rows, done)
                _seal(path, batch, self.path)
                con.execute(
                    "insert into exports (folder, exported_through) values (?, ?) "
                    "on conflict (folder) do update set exported_through = excluded.exported_through",
                    [str(folder), batch[-1][0]],
                )
            files.append(path)
            rows += len(batch)

    @staticmethod
    def _next_file(con: sqlite3.Connection, table_dir: Path, done: int) -> tuple[Path | None, list[tuple]]:
        """The next file after id `done` and its rows: a file already there that starts at `done + 1` (left
        by an export stopped before its commit) keeps its range; else the next `EXPORT_BATCH_ROWS` rows."""
        left = sorted(table_dir.glob(f"{done + 1:012d}-*.jsonl"))
        last = int(left[0].name[13:25]) if left else done + EXPORT_BATCH_ROWS
        batch = con.execute(
            "select id, uuid, experiment, variant, user_key, event_type, event_name, occurred_at "
            "from tracked_events where id > ? and id <= ? order by id",
            [done, last],
        ).fetchall()
        if left:
            return left[0], batch
        if not batch:
            return None, []
        return table_dir / f"{batch[0][0]:012d}-{batch[-1][0]:012d}.jsonl", batch


def _exported_through(con: sqlite3.Connection, folder: Path) -> int:
    row = con.execute("select exported_through from exports where folder = ?", [str(folder)]).fetchone()
    return row[0] if row else 0


def _lines(batch: list[tuple]) -> bytes:
    """The file's bytes: one `_as_record` a line, the same bytes for the same rows."""
    records = (json.dumps(_as_record(row), ensure_ascii=False, separators=(",", ":")) for row in batch)
    return "".join(f"{r}\n" for r in records).encode()


def _seal(path: Path, batch: list[tuple], spool: Path) -> None:
    """Put `batch` at `path` for good: written under a hidden name, flushed, renamed, the folder flushed. A
    file already at `path` must hold exactly these rows (it is adopted as it is)."""
    content = _lines(batch)
    if path.exists():
        if path.read_bytes() != content:
            raise SpoolMismatchError(
                f"{path} is in the export folder but does not hold the spool's rows it is named for "
                f"({len(batch)} row(s) of {spool} in its id range): the folder was written from another spool "
                f"(was {spool.name} replaced or restored from an older copy?). Move the folder {path.parent} "
                "aside, or put back the spool it was written from, and run again."
            )
        return
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _remove_unsealed(table_dir: Path) -> None:
    """Remove the hidden files of exports stopped before their rename (their rows are exported again)."""
    for temp in table_dir.glob(".*.jsonl.tmp"):
        temp.unlink(missing_ok=True)


def export_beside(warehouse: Path) -> ExportResult:
    """Export the spool beside the warehouse file `warehouse` into its export folder (`tracking_paths`), for the
    `tracked_events` ingest; nothing when no event was ever recorded (no spool file)."""
    spool, folder = tracking_paths(warehouse)
    if not spool.exists():
        return ExportResult((), 0, 0)
    return TrackingSpool(spool).export(folder)
