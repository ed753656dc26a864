"""PostHog connector: the `events` table, pulled incrementally through PostHog's query API (HogQL).

Each page is one `POST {host}/api/projects/{project_id}/query/` with a personal API key (scope `query:read`) as
`Authorization: Bearer …` and the body `{"query": {"kind": "HogQLQuery", "query": …, "values": …}, "refresh":
"force_blocking", "name": …}`:

    SELECT uuid, event, timestamp, distinct_id, properties, person.properties AS person_properties
    FROM events
    WHERE timestamp >= toDateTime({window_start}) AND timestamp <= toDateTime({window_end})
      AND (timestamp > toDateTime({after_timestamp})
           OR (timestamp = toDateTime({after_timestamp}) AND uuid > toUUID({after_uuid})))
    ORDER BY timestamp, uuid
    LIMIT <page size>

The window ends at the time the pull started (`window_end`): PostHog keeps events whose client clock ran ahead
(up to 23 hours), and one such event must not carry the cursor past events that have yet to arrive; it is pulled
once its time has passed.

Keyset pagination, never OFFSET (PostHog's own advice: an OFFSET query re-reads every row it skips, so it gets
slower with every page and can miss or repeat rows while events arrive): each page asks for the rows after the
last (timestamp, uuid) seen; the first page of a pull has no such bound. Timestamps tie (a batch of events
captured in one call), so the uuid breaks the tie and no row on a page boundary is lost.

No value is written into the query text: the window start and the bound travel as HogQL placeholders (`values`,
which PostHog turns into constants, the way it queries its own query log); they are ours anyway, times and
uuids parsed and written back in a canonical form (`_bound`). `toDateTime` of a string is PostHog's best-effort
ISO parser, so the offset in the text is honoured. `refresh: force_blocking` skips PostHog's query cache: a
cached answer could be older than the events the pull is after.

The answer is read by its `columns` names (`results` are lists in that order). A query with its own LIMIT runs
without PostHog's paginator, so `hasMore`, `limit` and `offset` come back null: a page with fewer rows than
the LIMIT is the last one.

Limits (posthog.com/docs/api/queries): a LIMIT of at most `MAX_QUERY_ROWS` (50,000) rows; PostHog cuts a
larger LIMIT down without a word, which would make a full page look like the last one, so `page_size` is
clamped to it (`PostHogConfig.query_limit`). Per project: 240 queries a minute and 2,400 an hour (some older
projects: 120 an hour), 3 running at once, 10 seconds of execution each. A 429 carries `Retry-After`
(seconds), honoured by dlt's retrying client, as are 5xx answers (504: a query over its execution time),
timeouts and dropped connections, up to `max_attempts`; then a `ConnectorError` says what to change.

Incremental: the resource state (`dlt.current.resource_state()`) keeps the newest (timestamp, uuid) landed,
committed by dlt with the load it belongs to, so a pull that fails half-way commits neither its rows nor its
cursor and the next pull restarts from the last committed one. Each pull starts `overlap_minutes` before
the cursor, to catch events that reach PostHog late (ingestion lag, clients sending offline batches); the
re-read rows land again and the ingest drops them as exact duplicates (a changed one as a repeated `uuid`,
first wins). An event later than that overlap is missed by the incremental pull (a `full_refresh` pull reads
everything again). The first pull starts at `start` (default: `DEFAULT_LOOKBACK_DAYS` before now).

Every event becomes a contract row through one function, `event_row`, whichever way it was read (this query, or a
batch export's object: `posthog_batch`, used instead of the query when `batch_export` is set): its timestamp as
ISO in UTC when it parses (PostHog answers in the project's time zone, an export in UTC), so that one event read
both ways lands as the same text, an exact duplicate the ingest drops.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import dlt
import pyarrow as pa
from dlt.sources.helpers.requests import Client, RequestException, Response

from beton_pipeline.sources.connectors.common import (
    ConnectorError,
    as_text,
    contract_row,
    contract_table,
    secret,
    text_columns,
)
from beton_pipeline.sources.contract import TABLES_BY_NAME

logger = logging.getLogger(__name__)

SOURCE = "posthog"
TABLE = "events"
COLUMNS: tuple[str, ...] = TABLES_BY_NAME[TABLE].column_names
"""The answer's columns the connector reads: the contract's events columns, by name."""

MAX_QUERY_ROWS = 50_000
"""PostHog's largest LIMIT for a query through the API (`MAX_SELECT_RETURNED_ROWS` in posthog/hogql/constants.py)."""

DEFAULT_LOOKBACK_DAYS = 400
"""How far back the first pull reads when `start` is not set: a year of history and a month to spare."""

QUERY_NAME = "beton_events_pull"
"""The query's name in PostHog's query log, so that a PostHog admin can tell beton's queries apart."""

SELECT = (
    "SELECT uuid, event, timestamp, distinct_id, properties, person.properties AS person_properties "
    "FROM events WHERE timestamp >= toDateTime({window_start}) AND timestamp <= toDateTime({window_end})"
)
AFTER_BOUND = (
    " AND (timestamp > toDateTime({after_timestamp})"
    " OR (timestamp = toDateTime({after_timestamp}) AND uuid > toUUID({after_uuid})))"
)
ORDER = " ORDER BY timestamp, uuid"
JSON_COLUMNS = ("properties", "person_properties")


@dataclass(frozen=True)
class BatchExportConfig:
    """Where a PostHog batch export (S3 destination, events model) writes (`sources.posthog.batch_export`).

    `bucket` and `prefix` (the fixed part of the export's key prefix, before its first `{…}` variable) say what is
    listed; `endpoint_url` None is AWS S3 in `region`, else an S3-compatible store (R2, MinIO, GCS, …). One pull
    reads at most `max_objects` objects, oldest first. `format` is `auto` (Parquet and JSON lines, told apart by
    the key's extension), `parquet` or `jsonl` (objects of the other format under the prefix are left alone).
    `top_up`: after the export, query PostHog (HogQL, as without a batch export) for the events after the newest
    exported one, the hours the export has not written yet. See `posthog_batch`."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str = "us-east-1"
    max_objects: int = 200
    format: str = "auto"
    top_up: bool = False


@dataclass(frozen=True)
class PostHogConfig:
    """How to pull a PostHog project's events (`sources.posthog` in beton.yaml).

    `project_id` is required when the source is enabled (PostHog → Project settings → Project ID); the key is
    read from the environment variable `api_key_env` when the pull runs. `page_size` rows per query (at most
    `MAX_QUERY_ROWS`: a larger value is clamped). `overlap_minutes` is read again before the cursor on every
    pull, for late events. `start` (ISO time) is where the first pull begins (None: `DEFAULT_LOOKBACK_DAYS`
    before now). The retry policy (`timeout_seconds` per request, `max_attempts` per query, exponential waits
    of `backoff_factor` × 2^n seconds, each at most `max_wait_seconds`, also when `Retry-After` asks for more)
    applies to 429, 5xx, timeouts and dropped connections. `excluded_events` are event names not pulled.
    `max_pages` bounds one pull (500 pages of 10,000: 5M events, about 13 minutes of PostHog's hourly query
    budget): a longer history is pulled over several pulls, each committing what it landed. `batch_export`: read
    the events from a PostHog batch export on S3 instead (`BatchExportConfig`; None: the query alone)."""

    host: str = "https://us.posthog.com"
    project_id: str = ""
    api_key_env: str = "BETON_POSTHOG_API_KEY"
    page_size: int = 10_000
    overlap_minutes: float = 60.0
    start: str | None = None
    timeout_seconds: float = 60.0
    max_attempts: int = 5
    backoff_factor: float = 1.0
    max_wait_seconds: float = 60.0
    excluded_events: tuple[str, ...] = ()
    max_pages: int = 500
    batch_export: BatchExportConfig | None = None

    @property
    def query_limit(self) -> int:
        """The LIMIT of each query: `page_size`, at most `MAX_QUERY_ROWS` (PostHog would cut a larger one)."""
        return min(int(self.page_size), MAX_QUERY_ROWS)

    @property
    def query_path(self) -> str:
        """The query endpoint's path (no secret in it: the key travels in a header)."""
        return f"/api/projects/{self.project_id.strip()}/query/"


@dlt.source(name=SOURCE)
def posthog_source(config: PostHogConfig):
    """The PostHog source: one resource, `events`, appended on every pull (see the module docstring), read from the
    batch export when one is configured (`posthog_batch`), else through the query API."""

    @dlt.resource(name=TABLE, write_disposition="append", columns=text_columns(TABLE))
    def events() -> Iterator[pa.Table]:
        state = dlt.current.resource_state()
        if config.batch_export is None:
            yield from pull_events(config, state)
        else:
            from beton_pipeline.sources.connectors.posthog_batch import pull_batch_export  # boto3 only when used

            yield from pull_batch_export(config, state)

    return events


def pull_events(config: PostHogConfig, state: dict[str, Any], not_before: datetime | None = None) -> Iterator[pa.Table]:
    """The events after the window start (cursor − overlap, or `start`; never before `not_before` when given), one
    Arrow table of contract rows per page.

    `state` is the resource state: its `cursor` is the (timestamp, uuid) of the last readable row landed, the
    newest one (unless PostHog deleted newer events since, e.g. a person's data erased: the cursor then moves
    back, which only re-reads more). Every row lands as PostHog answered it (`event_row`), readable or not."""
    if not config.project_id.strip():
        raise ConnectorError(
            "the posthog connector is enabled but sources.posthog.project_id is empty: set it in beton.yaml to the "
            "project's id (PostHog → Project settings → Project ID), or set sources.posthog.enabled: false."
        )
    if config.page_size < 1:
        raise ConnectorError(f"sources.posthog.page_size is {config.page_size}: set at least 1 row per query.")
    key = secret(config.api_key_env, SOURCE)
    client = _client(config)
    now = datetime.now(UTC)
    window_start = _window_start(config, state.get("cursor"), now)
    if not_before is not None:
        window_start = max(window_start, not_before)
    limit = config.query_limit
    after: tuple[str, str] | None = None
    for page in range(1, config.max_pages + 1):
        rows = read_answer(_post_query(client, config, key, query_body(config, window_start, now, after)))
        if rows:
            yield events_table(rows)
        bound = last_bound(rows)
        if bound is not None:
            state["cursor"] = {"timestamp": bound[0], "uuid": bound[1]}
        if len(rows) < limit:
            return
        if bound is None or bound == after:
            raise ConnectorError(
                f"posthog: a full page of {len(rows)} events from {config.query_path} ends without a readable "
                f"(timestamp, uuid) after {after}: the next page cannot be asked for. PostHog's answer is not what "
                "this connector reads; report it with the PostHog version."
            )
        after = bound
        if page == config.max_pages:
            logger.warning(
                f"posthog: {page} pages ({page * limit:,} events) pulled, sources.posthog.max_pages; the rest of "
                f"the window, after {bound[0]}, is pulled by the next pull (this one is committed)."
            )


def query_body(
    config: PostHogConfig, window_start: datetime, window_end: datetime, after: tuple[str, str] | None
) -> dict[str, Any]:
    """The query API's request body for one page: the HogQL text and its placeholder values."""
    values: dict[str, str] = {"window_start": window_start.isoformat(), "window_end": window_end.isoformat()}
    hogql = SELECT
    if after is not None:
        hogql += AFTER_BOUND
        values["after_timestamp"], values["after_uuid"] = after
    if config.excluded_events:
        names = [f"excluded_{i}" for i in range(len(config.excluded_events))]
        hogql += " AND event NOT IN (" + ", ".join("{" + name + "}" for name in names) + ")"
        values.update(zip(names, map(str, config.excluded_events), strict=True))
    hogql += f"{ORDER} LIMIT {config.query_limit:d}"
    return {
        "query": {"kind": "HogQLQuery", "query": hogql, "values": values},
        "refresh": "force_blocking",
        "name": QUERY_NAME,
    }


def read_answer(answer: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The answer's `results` as dicts keyed by its `columns`; a clear error when a contract column is missing."""
    columns, results = answer.get("columns"), answer.get("results")
    if not isinstance(columns, list) or not isinstance(results, list):
        raise ConnectorError(
            "posthog: the query API answered without `columns` and `results` lists (keys: "
            f"{sorted(answer)[:10]}); this connector reads PostHog's synchronous HogQL answer."
        )
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        raise ConnectorError(f"posthog: the query API's answer has no column {missing} (its columns: {columns}).")
    return [dict(zip(columns, row, strict=False)) for row in results]


def event_row(values: Mapping[str, Any]) -> dict[str, str | None]:
    """One PostHog event (a query answer's row or a batch export's record, by column name) as a contract `events`
    row of text: the timestamp as ISO in UTC when it is a time (a datetime, or ISO text with any offset; other
    text lands as it came, for the ingest to quarantine); `properties` and `person_properties` given as objects
    (a JSON lines export) as compact JSON in their own key order, the text PostHog stores; the rest `as_text`."""
    row = contract_row(TABLE, values)
    moment = _utc(values.get("timestamp"))
    if moment is not None:
        row["timestamp"] = moment.isoformat()
    for name in JSON_COLUMNS:
        value = values.get(name)
        if isinstance(value, (Mapping, list)):
            row[name] = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=as_text)
    return row


def events_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """PostHog events (`event_row`) as one Arrow table of the contract's events columns, all text."""
    return contract_table(TABLE, [event_row(row) for row in rows])


def _utc(value: Any) -> datetime | None:
    """A datetime (no zone = UTC) or ISO text as an aware UTC datetime; None for anything else."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    return parse_time(value)


def last_bound(rows: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The keyset bound after `rows`: the (timestamp, uuid) of the last row where both parse, canonical."""
    for row in reversed(rows):
        bound = _bound(row.get("timestamp"), row.get("uuid"))
        if bound is not None:
            return bound
    return None


def _bound(timestamp: Any, event_uuid: Any) -> tuple[str, str] | None:
    """(ISO time in UTC, canonical uuid) when both values parse, else None: only such text reaches a query."""
    moment = parse_time(timestamp)
    if moment is None or not isinstance(event_uuid, str):
        return None
    try:
        return moment.isoformat(), str(uuid.UUID(event_uuid))
    except ValueError:
        return None


def parse_time(value: Any) -> datetime | None:
    """An ISO-8601 time as an aware UTC datetime (no zone = UTC); None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def _window_start(config: PostHogConfig, cursor: Mapping[str, str] | None, now: datetime) -> datetime:
    """Where this pull starts: the cursor minus the overlap; on the first pull `start` (or the default lookback)."""
    if cursor is not None:
        return datetime.fromisoformat(cursor["timestamp"]) - timedelta(minutes=config.overlap_minutes)
    if config.start is None:
        return now - timedelta(days=DEFAULT_LOOKBACK_DAYS)
    start = parse_time(config.start)
    if start is None:
        raise ConnectorError(
            f"sources.posthog.start is {config.start!r}, not an ISO time: write it as 2025-01-31 or "
            "2025-01-31T00:00:00Z, or remove it to start 400 days back."
        )
    return start


def _client(config: PostHogConfig) -> Client:
    """dlt's retrying HTTP client with the config's policy; statuses are judged here (`_post_query`)."""
    return Client(
        request_timeout=config.timeout_seconds,
        request_max_attempts=config.max_attempts,
        request_backoff_factor=config.backoff_factor,
        request_max_retry_delay=config.max_wait_seconds,
        respect_retry_after_header=True,
        raise_for_status=False,
    )


def _post_query(client: Client, config: PostHogConfig, key: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST one query (retried by `client`) and return the JSON answer, or raise a `ConnectorError` saying why not."""
    endpoint = f"{config.host.rstrip('/')}{config.query_path}"
    try:
        response = client.post(endpoint, json=body, headers={"Authorization": f"Bearer {key}"})
    except RequestException as exc:
        raise ConnectorError(
            f"posthog: no answer from POST {endpoint} after {config.max_attempts} attempts "
            f"({type(exc).__name__}, {config.timeout_seconds:g} s timeout each): check sources.posthog.host and the "
            "network, or raise sources.posthog.timeout_seconds or max_attempts."
        ) from None  # the request error can hold the headers (the key): never chained
    if response.status_code != 200:
        raise ConnectorError(_refusal(response, config, endpoint, key))
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise ConnectorError(f"posthog: POST {endpoint} answered 200 with a body that is not a JSON object.")
    return answer


def _refusal(response: Response, config: PostHogConfig, endpoint: str, key: str) -> str:
    """Why a query was not answered, by status, and what to change; never the key nor the raw body."""
    status, where = response.status_code, f"POST {endpoint}"
    if status == 401:
        return (
            f"posthog: the key in {config.api_key_env} was refused (401) by {where}: set it to a personal API key "
            f"of this PostHog instance ({config.host}) with the query:read scope."
        )
    if status == 403:
        return (
            f"posthog: the key in {config.api_key_env} may not query project {config.project_id} (403) at {where}: "
            "give it the query:read scope and access to this project."
        )
    if status == 404:
        return (
            f"posthog: no project {config.project_id} at {config.host} (404 from {where}): check "
            "sources.posthog.project_id and sources.posthog.host (US: https://us.posthog.com, EU: https://eu.posthog.com)."
        )
    if status == 400:
        return f"posthog: the events query was rejected (400) by {where}: {_detail(response, key)}"
    if status == 202:
        return (
            f"posthog: {where} answered 202 (the query went asynchronous); this connector needs a synchronous answer."
        )
    if status == 429:
        return (
            f"posthog: still rate-limited (429) by {where} after {config.max_attempts} attempts. PostHog allows "
            "240 queries a minute and 2,400 an hour per project (some older projects 120 an hour), shared by "
            "everything using its API: pull less often, or raise sources.posthog.max_attempts or max_wait_seconds."
        )
    return (
        f"posthog: {where} answered {status} after {config.max_attempts} attempts. Try again later; a 504 means "
        "the query ran over PostHog's execution time: lower sources.posthog.page_size."
    )


def _detail(response: Response, key: str) -> str:
    """PostHog's own description of a rejected query (its `detail`), short, with the key blanked if echoed."""
    try:
        detail = str(response.json().get("detail", ""))
    except (ValueError, AttributeError):
        detail = ""
    detail = detail.replace(key, "***")[:300] if detail else "no detail given"
    return detail
