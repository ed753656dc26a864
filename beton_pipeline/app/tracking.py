"""`POST /api/track`: an exposure or a conversion of a user in an experiment, sent by the product itself.

The body names the experiment (its name or its flag, as `/api/experiments` lists them), the variant, the user key
(the analytics tool's `distinct_id`) and the event (`exposure` or `conversion`), optionally when it happened. It is
checked against the experiment (known, Running, the variant one of its own: a variant of another experiment is a
400 that names it) and kept in the tracking spool (`sources.tracking`), never in the warehouse: a run holds the
DuckDB file for minutes and a product cannot wait. The next run's ingest reads the spool's rows through the
contract's rules as the table `tracked_events` (an exposure as PostHog's `$feature_flag_called` with
`$feature_flag` and `$feature_flag_response`, a conversion as the experiment's goal event), so they are validated,
quarantined with a reason when bad, and read out beside PostHog's own exposures.

A user's first exposure to an experiment is the one kept, and so is the first conversion: a repeat answers
`"duplicate": true` (200) with the first one's uuid and the variant the user counts in; a new event answers 201.
A conversion at or before the user's tracked exposure is refused (409: it would not count, and kept first it would
shut out the real one), and so is a time the events' rules would quarantine (400: before 1990, or ahead of the
clock). Writes need the app token (`Authorization: Bearer`).

The experiments are read from the warehouse at most every `DEFINITIONS_SECONDS` (and after this app changes one),
so a request does not open the DuckDB file; while a run writes it, the last definitions read are used (beton.yaml's
alone before any was read).
"""

from __future__ import annotations

import sqlite3
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from beton_pipeline.app.access import Reader, Warehouse
from beton_pipeline.app.web import (
    RETRY_AFTER_SECONDS,
    Refused,
    WarehouseJSON,
    WarehouseUnavailable,
    bearer_ok,
    json_object,
)
from beton_pipeline.sources.contract import MIN_TIMESTAMP
from beton_pipeline.sources.tracking import EXPOSURE_EVENT, TrackedEvent, TrackingSpool, tracking_paths
from beton_pipeline.store.experiments import ExperimentEntry, configured_experiments, defined_experiments

api = APIRouter(prefix="/api", default_response_class=WarehouseJSON)
pages = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)

TRACK_SHAPE = (
    '{"experiment": "new-onboarding", "variant": "test", "user": "user-42", "event": "exposure" or "conversion", '
    '"timestamp": "2026-12-01T09:30:00Z" (optional)}'
)
EVENTS = ("exposure", "conversion")
TRACKED_STATUSES = ("Running",)
"""The statuses an experiment takes events in (beton.yaml's experiments are always Running)."""
DEFINITIONS_SECONDS = 30.0
"""How old the experiments' definitions the endpoint checks against may be before they are read again."""
RETRY_SECONDS = 5.0
"""After a failed read (a run holds the warehouse), how long the endpoint goes on with the last definitions before
it tries again: tracking never waits for a run more than once in that time."""
EARLIEST = datetime.fromisoformat(MIN_TIMESTAMP).replace(tzinfo=UTC)
"""The earliest time the events' rules keep (`contract.MIN_TIMESTAMP`): an earlier event would be quarantined,
yet, kept first in the spool, would stand for the user's exposure."""
MAX_FUTURE = timedelta(minutes=5)
"""How far ahead of this machine's clock a timestamp may be (clocks differ a little; a later one is refused)."""


@dataclass
class _Definitions:
    """The experiments as last read (`entries`, in `store.experiments.find_experiment`'s order) and when (monotonic
    seconds; None: never); `stale` when this app changed one since; `retry_at`: no new read before then (a run held
    the warehouse at the last try)."""

    entries: list[ExperimentEntry]
    read_at: float | None = None
    stale: bool = False
    retry_at: float = 0.0


_LOCK = threading.Lock()
_READ: weakref.WeakKeyDictionary[Warehouse, _Definitions] = weakref.WeakKeyDictionary()
"""Each app's (its warehouse reader's) definitions as last read."""
_SPOOLS: weakref.WeakKeyDictionary[Warehouse, TrackingSpool] = weakref.WeakKeyDictionary()
"""Each app's tracking spool (opened once: its schema and WAL mode are set up on first use)."""


def forget_definitions(reader: Warehouse) -> None:
    """Read the experiments again on the next track (this app created or moved one); until that read succeeds,
    the last ones are known to be out of date."""
    with _LOCK:
        definitions = _READ.get(reader)
        if definitions is not None:
            definitions.stale, definitions.retry_at = True, 0.0


def _definitions(reader: Warehouse) -> tuple[list[ExperimentEntry], bool]:
    """Every experiment (beton.yaml's, then the app's) and whether the list is current: read at most every
    `DEFINITIONS_SECONDS`, or at once after this app changed one; while a run holds the warehouse, the last list
    read (beton.yaml's alone before any) as not current, tried again after `RETRY_SECONDS`."""
    now = time.monotonic()
    with _LOCK:  # the common case: read a moment ago, nothing parsed or opened
        definitions = _READ.setdefault(reader, _Definitions([]))
        fresh = definitions.read_at is not None and now - definitions.read_at < DEFINITIONS_SECONDS
        if fresh and not definitions.stale:
            return definitions.entries, True
    config = reader.settings.playbook_config()
    with _LOCK:
        if now < definitions.retry_at:
            return _last(definitions, config), False
    try:
        with reader.open() as con:
            entries = [d.entry for d in defined_experiments(con, config)]
    except WarehouseUnavailable:
        with _LOCK:
            definitions.retry_at = time.monotonic() + RETRY_SECONDS
            return _last(definitions, config), False
    with _LOCK:
        definitions.entries, definitions.read_at, definitions.stale = entries, time.monotonic(), False
    return entries, True


def _last(definitions: _Definitions, config) -> list[ExperimentEntry]:
    """The last list read, or beton.yaml's experiments before any was."""
    if definitions.read_at is not None:
        return definitions.entries
    return [d.entry for d in configured_experiments(config)]


def _text(body: dict, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise Refused(f"{name}: give it as non-empty text: {TRACK_SHAPE}", 400)
    return value.strip()


def _moment(value: object) -> datetime:
    """The event's time: now when not given, else ISO 8601 (an offset, or UTC without one), not in the future."""
    now = datetime.now(UTC)
    if value is None:
        return now
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None:
        raise Refused(f"timestamp {value!r}: give an ISO 8601 time such as 2026-12-01T09:30:00Z", 400)
    try:
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:
        raise Refused(f"timestamp {value} is out of range in UTC", 400) from None
    if moment < EARLIEST:
        raise Refused(f"timestamp {value} is before {EARLIEST:%Y-%m-%d}, which the events' rules quarantine", 400)
    if moment > now + MAX_FUTURE:
        raise Refused(f"timestamp {value} is in the future (now is {now:%Y-%m-%dT%H:%M:%SZ})", 400)
    return moment


def tracked_event(
    entries: list[ExperimentEntry], body: dict, current: bool = True
) -> tuple[TrackedEvent, ExperimentEntry]:
    """The event a track request asks to keep, checked against the experiments: Refused (400 a field or a variant
    not the experiment's, 404 an unknown experiment, 409 one not Running) saying what to change. With `entries`
    not `current` (a run holds the warehouse), an experiment they do not show Running cannot be told apart from
    one just defined or started: WarehouseUnavailable (503, retry) instead of 404 or 409."""
    key, variant, user, event = (_text(body, n) for n in ("experiment", "variant", "user", "event"))
    if event not in EVENTS:
        raise Refused(f"event {event!r}: give exposure or conversion", 400)
    entry = next((e for e in entries if e.name == key), None) or next((e for e in entries if e.flag == key), None)
    if (entry is None or entry.status not in TRACKED_STATUSES) and not current:
        raise WarehouseUnavailable(
            f"A beton run is writing the warehouse and experiment {key!r} was not Running when last read; the event "
            f"was not recorded: send it again in {RETRY_AFTER_SECONDS} s."
        )
    if entry is None:
        known = ", ".join(e.name for e in entries) or "none yet"
        raise Refused(f"no experiment named or flagged {key!r} (known: {known}); define it first", 404)
    if entry.status not in TRACKED_STATUSES:
        raise Refused(
            f"experiment {entry.name} is {entry.status}: events are tracked while it is Running; move it to Running "
            "first",
            409,
        )
    if entry.variants and variant not in entry.variants:
        others = [e.name for e in entries if e is not entry and variant in e.variants]
        elsewhere = f"; {variant!r} is a variant of {', '.join(others)}" if others else ""
        raise Refused(
            f"variant {variant!r} is not one of experiment {entry.name}'s variants ({', '.join(entry.variants)})"
            f"{elsewhere}",
            400,
        )
    name = EXPOSURE_EVENT if event == "exposure" else entry.goal_event
    return TrackedEvent(entry.flag, variant, user, event, name, _moment(body.get("timestamp"))), entry


def _after_exposure(spool: TrackingSpool, conversion: TrackedEvent) -> None:
    """Refused (409) for a conversion at or before the user's tracked exposure: it would not count (a conversion
    counts after the exposure) and, kept first, would stop the real one from being kept."""
    exposure = spool.kept(conversion.experiment, conversion.user_key, "exposure")
    if exposure is not None and conversion.occurred_at <= exposure.occurred_at:
        raise Refused(
            f"the conversion at {conversion.occurred_at:%Y-%m-%dT%H:%M:%SZ} is not after the user's exposure at "
            f"{exposure.occurred_at:%Y-%m-%dT%H:%M:%SZ}: it would not count, and it was not recorded",
            409,
        )


def track(reader: Warehouse, body: dict) -> tuple[dict, bool]:
    """Keep one tracked event (see the module docstring): its answer, and whether it was a duplicate."""
    entries, current = _definitions(reader)
    event, entry = tracked_event(entries, body, current)
    with _LOCK:
        spool = _SPOOLS.get(reader) or _SPOOLS.setdefault(reader, TrackingSpool(tracking_paths(reader.path)[0]))
    try:
        if event.event_type == "conversion":
            _after_exposure(spool, event)
        uuid, duplicate = spool.record(event)
        kept = spool.kept(event.experiment, event.user_key, event.event_type) if duplicate else None
    except ValueError as exc:
        raise Refused(str(exc), 400) from None
    except sqlite3.OperationalError:  # another writer held the spool for the whole busy timeout
        raise WarehouseUnavailable(
            f"The tracking spool is busy; the event was not recorded: send it again in {RETRY_AFTER_SECONDS} s."
        ) from None
    answer = {
        "uuid": uuid,
        "duplicate": duplicate,
        "experiment": entry.name,
        "variant": kept.variant if kept else event.variant,  # a repeat: the variant the user counts in
        "event": event.event_type,
        "event_name": event.event_name,
    }
    return answer, duplicate


@api.post("/track", tags=["experiments"], status_code=201)
async def api_track(request: Request, reader: Reader) -> WarehouseJSON:
    """Track an exposure or a conversion, with `Authorization: Bearer <BETON_APP_TOKEN>`: the JSON body
    `{"experiment": "new-onboarding", "variant": "test", "user": "user-42", "event": "exposure"}` (`experiment`: its
    name or flag; `event`: exposure or conversion; optional `timestamp`, ISO 8601, default now). 201 with the
    event's `uuid`; 200 with `"duplicate": true` and the first one's uuid for a repeat of (experiment, user, event);
    400 for a variant that is not the experiment's (naming the experiment it belongs to, if any), 404 for an unknown
    experiment, 409 for one not Running. Kept at once; the next run loads it through the contract's rules."""
    bearer_ok(request)
    body = await json_object(request, TRACK_SHAPE)
    answer, duplicate = await run_in_threadpool(track, reader, body)
    return WarehouseJSON(answer, status_code=200 if duplicate else 201)
