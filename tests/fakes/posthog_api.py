"""A real HTTP server on 127.0.0.1 standing in for PostHog's query API (`POST /api/projects/{id}/query/`).

It holds a project's events and answers HogQL queries over them by evaluating, on its own list, the parts of
the query the beton connector sends: the window (`timestamp >= toDateTime({p})`, `timestamp <= toDateTime({p})`),
the keyset bound
(`timestamp > toDateTime({p}) OR (timestamp = toDateTime({p}) AND uuid > toUUID({p}))`), excluded event names
(`event NOT IN ({p}, …)`), `ORDER BY timestamp, uuid` and `LIMIT n`, with the placeholders' values taken from
the body's `values` as PostHog does. Without the ORDER BY the rows come in the order they were added (as a
database gives no order); a LIMIT over 50,000 is cut to 50,000 without a word and a query without one gets 100
rows, both as PostHog does. Differences on purpose: a query with OFFSET is refused (400), so a connector
paging by OFFSET fails the tests, and so is one with any other condition or clause (the fake would otherwise
ignore it).

The answer has PostHog's shape: `results` (lists in `columns` order), `columns` (aliases, or the field's last
name), `types` ([name, ClickHouse type] pairs), `hasMore`/`limit`/`offset` (null for a query with its own LIMIT,
which PostHog runs without its paginator), `hogql`, `clickhouse`, `timings`, cache fields… Times are written as
Django REST framework writes them: ISO in the project's time zone, `Z` for UTC. Errors are PostHog's JSON
errors (`type`, `code`, `detail`, `attr`): 401 for a wrong key (its detail echoes the key presented, harsher
than PostHog, so that a connector passing an error body on fails the secret test), 404 for another project,
400 for a query it cannot read.

Events are dicts like PostHog's rows: `uuid`, `event`, `timestamp` (ISO with offset), `distinct_id`,
`properties` and `person_properties` (dicts; a string is answered as it is). A malformed event, which PostHog
itself would never hold (a null uuid, a timestamp "yesterday"), is placed in the order by `_at` (an ISO time).

    with FakePostHog(api_key="phx_test", project_id="4242", events=events) as posthog:
        config = PostHogConfig(host=posthog.url, project_id="4242", page_size=5)
        ...
        assert len(posthog.queries) == 5
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from tests.fakes import FakeServer, Recorded

MAX_LIMIT = 50_000
DEFAULT_LIMIT = 100

_SELECT = re.compile(r"^\s*SELECT\s+(?P<select>.+?)\s+FROM\s+events\b(?P<rest>.*)$", re.I | re.S)
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_WINDOW = re.compile(r"\btimestamp\s*>=\s*toDateTime\(\{(\w+)\}\)", re.I)
_WINDOW_END = re.compile(r"\btimestamp\s*<=\s*toDateTime\(\{(\w+)\}\)", re.I)
_AFTER = re.compile(
    r"\(\s*timestamp\s*>\s*toDateTime\(\{(\w+)\}\)\s+OR\s+\(\s*timestamp\s*=\s*toDateTime\(\{(\w+)\}\)"
    r"\s+AND\s+uuid\s*>\s*toUUID\(\{(\w+)\}\)\s*\)\s*\)",
    re.I,
)
_NOT_IN = re.compile(r"\bevent\s+NOT\s+IN\s*\(([^)]*)\)", re.I)
_ORDER = re.compile(r"\bORDER\s+BY\s+timestamp\s*,\s*uuid\b", re.I)
_LIMIT = re.compile(r"\bLIMIT\s+(\d+)\s*$", re.I)
_OFFSET = re.compile(r"\bOFFSET\b", re.I)
_ITEM = re.compile(r"^\s*(?P<expr>[\w.]+)(?:\s+AS\s+(?P<alias>\w+))?\s*$", re.I)

FIELDS = {
    "uuid": ("uuid", "UUID"),
    "event": ("event", "String"),
    "timestamp": ("timestamp", "DateTime64(6, 'UTC')"),
    "distinct_id": ("distinct_id", "String"),
    "properties": ("properties", "String"),
    "person.properties": ("person_properties", "String"),
}
"""HogQL field → (the event dict's key, its ClickHouse type)."""


class QueryError(Exception):
    """A query the fake (like PostHog) refuses: answered 400 with this detail."""


@dataclass(frozen=True)
class Query:
    """One query the fake answered: its HogQL text, placeholder values and the rows it returned."""

    hogql: str
    values: dict[str, Any]
    rows: int


class FakePostHog(FakeServer):
    """PostHog's query endpoint for one project, over `events` (see the module docstring)."""

    def __init__(
        self,
        api_key: str = "phx_test_key",
        project_id: str = "4242",
        events: list[dict] | None = None,
        timezone: str = "UTC",
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.project_id = project_id
        self.events: list[dict] = list(events or [])
        self.zone: tzinfo = ZoneInfo(timezone)
        self.timezone = timezone
        self.queries: list[Query] = []
        self._broken_after: int | None = None

    # -- test controls ------------------------------------------------------------------------
    def add(self, events: list[dict]) -> None:
        """New events reach the project (late ones included: their timestamps may be old)."""
        with self.lock:
            self.events.extend(events)

    def break_after(self, answered: int) -> None:
        """Answer 500 to every query once `answered` queries have been answered, until `recover()`."""
        self._broken_after = answered

    def recover(self) -> None:
        self._broken_after = None

    # -- the endpoint -----------------------------------------------------------------------------
    def handle_ok(self, rec: Recorded):
        path = rec.path.split("?", 1)[0]
        match = re.fullmatch(r"/api/projects/([^/]+)/query/?", path)
        if match is None or rec.method != "POST":
            return 404, _error("invalid_request", "not_found", "Not found."), {}, 0.0
        presented = rec.headers.get("Authorization", "")
        if presented != f"Bearer {self.api_key}":
            detail = f"Personal API key found in request Authorization header is invalid: {presented}"
            return 401, _error("authentication_error", "authentication_failed", detail), {}, 0.0
        if match.group(1) != self.project_id:
            return 404, _error("invalid_request", "not_found", "Project not found."), {}, 0.0
        with self.lock:
            if self._broken_after is not None and len(self.queries) >= self._broken_after:
                return 500, b"<h1>Server Error (500)</h1>", {}, 0.0
        try:
            body = json.loads(rec.body.decode() or "{}")
            query = body["query"]
            if query.get("kind") != "HogQLQuery" or not isinstance(query.get("query"), str):
                raise QueryError("query.kind must be HogQLQuery with a query string")
            answer = self._answer(query["query"], query.get("values") or {})
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return 400, _error("validation_error", "parse_error", f"JSON parse error: {exc}"), {}, 0.0
        except QueryError as exc:
            return 400, _error("validation_error", "invalid_input", str(exc)), {}, 0.0
        return 200, answer, {}, 0.0

    def _answer(self, hogql: str, values: dict[str, Any]) -> dict:
        """Evaluate `hogql` over the events and answer as PostHog does."""
        if _OFFSET.search(hogql):
            raise QueryError("this fake refuses OFFSET: page by (timestamp, uuid)")
        unresolved = sorted(set(_PLACEHOLDER.findall(hogql)) - set(values))
        if unresolved:
            raise QueryError(f"Placeholder {{{unresolved[0]}}} is not available in this context")
        match = _SELECT.match(hogql)
        if match is None:
            raise QueryError("Syntax error: expected SELECT … FROM events")
        columns = [_column(item) for item in match.group("select").split(",")]
        rest = match.group("rest")
        _check_understood(rest)
        with self.lock:
            events = list(self.events)
        rows = [e for e in events if _matches(e, rest, values)]
        if _ORDER.search(rest):
            rows.sort(key=_order_key)
        limit_match = _LIMIT.search(rest)
        limit = min(int(limit_match.group(1)), MAX_LIMIT) if limit_match else DEFAULT_LIMIT
        has_more = None if limit_match else len(rows) > limit
        rows = rows[:limit]
        results = [[self._value(e, FIELDS[expr][0]) for expr, _ in columns] for e in rows]
        with self.lock:
            self.queries.append(Query(hogql, dict(values), len(results)))
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        return {
            "cache_key": f"cache_{uuid.uuid4().hex}",
            "cache_target_age": None,
            "calculation_trigger": None,
            "clickhouse": "SELECT … FROM events WHERE and(equals(events.team_id, 1), …) LIMIT …",
            "columns": [name for _, name in columns],
            "error": None,
            "explain": None,
            "hasMore": has_more,
            "hogql": hogql,
            "is_cached": False,
            "last_refresh": now,
            "limit": None if limit_match else limit,
            "metadata": None,
            "modifiers": {"personsOnEventsMode": "person_id_override_properties_on_events"},
            "next_allowed_client_refresh": now,
            "offset": None if limit_match else 0,
            "query": hogql,
            "query_status": None,
            "results": results,
            "timezone": self.timezone,
            "timings": [{"k": "./query", "t": 0.004}, {"k": ".", "t": 0.005}],
            "types": [[name, FIELDS[expr][1]] for expr, name in columns],
        }

    def _value(self, event: dict, key: str) -> Any:
        """A field as PostHog's JSON answer holds it: times in the project's zone, properties as JSON text."""
        value = event.get(key)
        if key == "timestamp":
            moment = _time(value)
            if moment is None:
                return value
            text = moment.astimezone(self.zone).isoformat()
            return text[:-6] + "Z" if text.endswith("+00:00") else text
        if key in ("properties", "person_properties") and isinstance(value, dict):
            return json.dumps(value)
        return value


def _column(item: str) -> tuple[str, str]:
    """(HogQL field, answer column name) of one SELECT item."""
    match = _ITEM.match(item)
    if match is None or match.group("expr") not in FIELDS:
        raise QueryError(f"Unable to resolve field: {item.strip()}")
    expr = match.group("expr")
    return expr, match.group("alias") or expr.rsplit(".", 1)[-1]


def _check_understood(rest: str) -> None:
    """Refuse (400) a query with a condition or clause the fake cannot evaluate, rather than ignore it."""
    leftover = rest
    for pattern in (_AFTER, _WINDOW, _WINDOW_END, _NOT_IN, _ORDER, _LIMIT):
        leftover = pattern.sub(" ", leftover)
    if not re.fullmatch(r"\s*(WHERE(\s+AND)*)?\s*", leftover, re.I):
        raise QueryError(f"this fake cannot evaluate: {' '.join(leftover.split())}")


def _matches(event: dict, rest: str, values: dict[str, Any]) -> bool:
    """Whether an event passes the WHERE parts the fake knows: window, keyset bound, excluded names."""
    at, key = _order_key(event)
    for name in _WINDOW.findall(rest):
        if at < _placeholder_time(values, name):
            return False
    for name in _WINDOW_END.findall(rest):
        if at > _placeholder_time(values, name):
            return False
    for ts_name, ts_again, uuid_name in _AFTER.findall(rest):
        after_at = _placeholder_time(values, ts_name)
        after_key = uuid.UUID(str(values[uuid_name])).int
        if ts_again != ts_name or (at, key) <= (after_at, after_key):
            return False
    for names in _NOT_IN.findall(rest):
        excluded = {values[n] for n in _PLACEHOLDER.findall(names)}
        if event.get("event") in excluded:
            return False
    return True


def _placeholder_time(values: dict[str, Any], name: str) -> datetime:
    """A placeholder's value parsed as `toDateTime` does (best-effort ISO); 400 when it is not a time."""
    moment = _time(values[name])
    if moment is None:
        raise QueryError(f"Cannot parse {values[name]!r} as a DateTime")
    return moment


def _order_key(event: dict) -> tuple[datetime, int]:
    """(timestamp, uuid) as ClickHouse orders them; a malformed event sits at its `_at`."""
    at = _time(event.get("_at")) or _time(event.get("timestamp"))
    if at is None:
        raise ValueError(f"fake event {event!r} has no time: give a malformed one an `_at`")
    try:
        key = uuid.UUID(str(event.get("uuid"))).int
    except ValueError:
        key = 0
    return at, key


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _error(type_: str, code: str, detail: str) -> dict:
    """A PostHog API error body (drf-exceptions-hog's shape)."""
    return {"type": type_, "code": code, "detail": detail, "attr": None}
