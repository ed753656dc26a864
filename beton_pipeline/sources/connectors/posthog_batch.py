"""PostHog events from a batch export on S3 (or an S3-compatible store: R2, MinIO, GCS's interoperability API).

A PostHog batch export with the S3 destination writes the `events` model, one run per interval (hourly by default,
or every 5 minutes, daily, weekly), to `bucket` under a key built by PostHog (`get_s3_key` in PostHog's
`s3_batch_export.py`; posthog.com/docs/cdp/batch-exports/s3):

    <key prefix with its variables filled>/<data_interval_start>-<data_interval_end>[-<file number>].<format>[.<compression>]

* The key prefix may hold `{year}`, `{month}`, `{day}`, `{hour}`, `{minute}`, `{second}` (of the interval's end),
  `{table}`, `{data_interval_start}` and `{data_interval_end}`: `sources.posthog.batch_export.prefix` is its fixed
  part, before the first variable (e.g. `posthog/events/` of `posthog/events/{year}/{month}/{day}/{hour}/`), and
  every object under it is listed.
* The file name is the interval's bounds as ISO times (`2025-03-01T12:00:00+00:00-2025-03-01T13:00:00+00:00`);
  with a max file size set, an interval is split into files numbered `-0`, `-1`, … and a
  `<start>-<end>_manifest.json` lists them. The manifest, and any object whose name does not end in `.parquet` or
  `.jsonl` (with an optional compression suffix), is not export data and is left alone.
* Formats: `.parquet` (read with pyarrow; its compression, zstd, lz4, snappy, gzip or brotli, is inside the file,
  and PostHog still adds it to the name: `.parquet.zst`, `.parquet.lz4`, `.parquet.sz`, `.parquet.gz`,
  `.parquet.br`) and `.jsonl` (JSON lines; PostHog compresses them with gzip or brotli: `.jsonl.gz`,
  `.jsonl.br`; `.jsonl.zst` is read too). A JSON lines object compressed otherwise (`.jsonl.sz`, `.jsonl.lz4`:
  PostHog does not write them, but another writer could) cannot be read as a stream here: the pull stops with
  a paragraph saying to choose gzip or brotli (or Parquet) in the export, or `format: parquet` to leave the JSON
  lines objects alone.
* Columns of the events model (S3's default fields): `uuid`, `event`, `distinct_id`, `person_id`, `properties`
  and `person_properties` (JSON text in Parquet, objects in JSON lines), `elements_chain`, `timestamp`,
  `created_at` and `_inserted_at` (microsecond UTC `TIMESTAMP`s in Parquet, ISO text in JSON lines); `team_id`,
  `set` and `set_once` are the other destinations' defaults, not S3's. New columns may appear. The contract's
  events columns (uuid, event, timestamp, distinct_id, properties, person_properties) are read by name, and each
  record becomes a row through `posthog.event_row`, as the query API's rows do; the rest are not read.

PostHog exports by insertion time (`_inserted_at` within the interval), not by event time: an event that reaches
PostHog late is in a later interval's object, and nothing the export holds is missed by reading every object.

Which objects a pull reads (the cursor, in the resource state under `batch_export`, committed by dlt with the load
it belongs to: a pull that fails half-way commits neither its rows nor its cursor):

* every object listed under the prefix is compared with the `high_water` (LastModified, key) of the newest
  object read so far, and with `imported`: the objects already read whose LastModified is within
  `overlap_minutes` of the high water, each as (ETag, LastModified to the second);
* an object is read when its LastModified is at most `overlap_minutes` before the high water (or there is no
  high water yet) and it is not in `imported` as it is now: a new object, one written late (S3 stamps an upload
  when it begins, and objects are listed once their upload completes, so they do not appear in LastModified
  order), or one PostHog wrote again (a retried run or a backfill: same key, new ETag and LastModified). An
  object rewritten holds the same events: landed again, they are exact duplicates the ingest drops (an event
  PostHog changed meanwhile is a repeated `uuid`, quarantined, first wins);
* the oldest `max_objects` of them by (LastModified, key) are read, so a backlog (the first pull, a backfill)
  arrives over several pulls, each committed, oldest first.

An object is never skipped as long as it becomes listable within `overlap_minutes` of its LastModified (an
upload of one export file takes minutes; the default overlap is an hour); one listed later than that, behind
a newer object already read, is missed by the incremental pull (a `full_refresh` pull reads everything again).
Every pull lists the whole prefix (1,000 keys a request, keys and times only) and keeps at most `max_objects`
of them; an object is downloaded to a temporary file and read `page_size` records at a time (Parquet by
record batch, JSON lines by line), so memory does not grow with the bucket or the object.

`top_up: true`: once a pull has read every export object there is, it queries PostHog (`posthog.pull_events`)
for the events after the newest exported event (its timestamp, at most the pull's start: an event whose client
clock ran ahead does not count), the hours the export has not written yet; the query's own cursor minus its
overlap is used when later. Those events reach a later export object again, and land again as exact duplicates
(the timestamp is written in UTC both ways; properties are PostHog's stored JSON text in Parquet and in the
query's answer) which the ingest drops.

Credentials: `BETON_POSTHOG_S3_ACCESS_KEY_ID` and `BETON_POSTHOG_S3_SECRET_ACCESS_KEY` (read when the pull runs);
with both unset, boto3's default chain (AWS_* variables, AWS_PROFILE and ~/.aws, a container's or an EC2
instance's IAM role). They need `s3:ListBucket` on the bucket (for the prefix) and `s3:GetObject` on its objects.
Requests are retried by botocore (`standard` mode: throttling, 5xx, timeouts, dropped connections) up to
`max_attempts`, each with `timeout_seconds`; then a `ConnectorError` says what failed from the error's code, the
bucket, the prefix and the numbers, never from botocore's own message.
"""

from __future__ import annotations

import heapq
import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from beton_pipeline.sources.connectors.common import ConnectorError, secret
from beton_pipeline.sources.connectors.posthog import (
    SOURCE,
    TABLE,
    PostHogConfig,
    events_table,
    parse_time,
    pull_events,
)
from beton_pipeline.sources.contract import TABLES_BY_NAME

logger = logging.getLogger(__name__)

ACCESS_KEY_ENV = "BETON_POSTHOG_S3_ACCESS_KEY_ID"
SECRET_KEY_ENV = "BETON_POSTHOG_S3_SECRET_ACCESS_KEY"

DATA_NAME = re.compile(r"\.(?P<format>parquet|jsonl)(?:\.(?P<compression>[a-z0-9]+))?$")
"""An export data object's name ending: its format, and the compression suffix PostHog adds."""

JSONL_CODECS: dict[str | None, str | None] = {None: None, "gz": "gzip", "br": "brotli", "zst": "zstd"}
"""JSON lines compression suffix → the pyarrow stream codec that reads it."""

COLUMNS = TABLES_BY_NAME[TABLE].column_names
REQUIRED = tuple(c.name for c in TABLES_BY_NAME[TABLE].columns if c.required)
"""The columns a Parquet object must have (the others, when absent, land empty)."""

DOWNLOAD_CHUNK = 1 << 20
ACCESS_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"})


@dataclass(frozen=True, order=True)
class ExportObject:
    """One listed export object, ordered by (LastModified, key): the order a backlog is read in."""

    last_modified: datetime
    key: str
    etag: str = field(compare=False)
    size: int = field(compare=False)
    format: str = field(compare=False)
    compression: str | None = field(compare=False)


def pull_batch_export(config: PostHogConfig, state: dict[str, Any]) -> Iterator[pa.Table]:
    """The events of the export objects not read yet (oldest first, at most `max_objects`), one Arrow table of
    contract rows per `page_size` records; then, with `top_up` and no object left, the query API's events after
    the newest exported one. `state` is the resource state (see the module docstring)."""
    export = config.batch_export
    kept: dict[str, Any] = state.setdefault("batch_export", {})
    now = datetime.now(UTC)
    client = _client_or_failure(config)
    pending, waiting = _pending(client, config, kept)
    for number, obj in enumerate(pending, start=1):
        doing = f"reading {obj.key} (object {number} of {len(pending)} this pull)"
        with tempfile.NamedTemporaryFile(prefix="beton-posthog-export-") as file:
            identity = _download(client, config, obj, file, doing)
            for rows in _records(obj, file.name, config.query_limit):
                table = events_table(rows)
                _note_newest(kept, table, now)
                yield table
        kept.setdefault("imported", {})[obj.key] = identity
        kept["high_water"] = max(kept.get("high_water") or ["", ""], [obj.last_modified.isoformat(), obj.key])
    _forget_outside_overlap(kept, config)
    if waiting:
        logger.warning(
            f"posthog batch export: {len(pending)} objects read (sources.posthog.batch_export.max_objects); "
            f"{waiting} more are read by the next pulls (this one is committed)."
        )
    elif export.top_up:
        newest = kept.get("newest_event")
        yield from pull_events(config, state, not_before=None if newest is None else datetime.fromisoformat(newest))


def s3_client(config: PostHogConfig, max_attempts: int | None = None, timeout: float | None = None):
    """A boto3 S3 client for the export's store, with the config's retries and timeouts and the credentials from
    `ACCESS_KEY_ENV`/`SECRET_KEY_ENV` (both unset: boto3's default chain)."""
    import boto3
    from botocore.config import Config

    export = config.batch_export
    seconds = timeout or config.timeout_seconds
    settings = Config(
        region_name=export.region,
        retries={"max_attempts": max_attempts or config.max_attempts, "mode": "standard"},
        connect_timeout=seconds,
        read_timeout=seconds,
    )
    return boto3.session.Session().client("s3", endpoint_url=export.endpoint_url, config=settings, **_credentials())


def _client_or_failure(config: PostHogConfig):
    """`s3_client`, or a ConnectorError paragraph when boto3 cannot make one (an unknown AWS_PROFILE, a region
    it refuses)."""
    from botocore.exceptions import BotoCoreError

    try:
        return s3_client(config)
    except BotoCoreError as exc:
        raise ConnectorError(s3_failure(exc, config, "setting up the S3 client", attempts=1)) from None


def describe_bucket(config: PostHogConfig, timeout: float) -> tuple[bool, str]:
    """(ok, sentence) for `beton check --sources`: one page of the prefix listed (no retries), how many export
    objects and the newest one's time, and one HEAD of it (read access); or why not."""
    from botocore.exceptions import BotoCoreError, ClientError

    export = config.batch_export
    try:
        client = s3_client(config, max_attempts=1, timeout=timeout)
        page = client.list_objects_v2(Bucket=export.bucket, Prefix=export.prefix)
        listed = [obj for obj in map(_export_object, page.get("Contents", [])) if obj is not None]
        if listed:
            client.head_object(Bucket=export.bucket, Key=max(listed).key)
    except ConnectorError as exc:
        return False, str(exc)
    except (BotoCoreError, ClientError) as exc:
        return False, s3_failure(exc, config, "listing the prefix (one page)", attempts=1)
    where = _where(export)
    if not listed:
        return True, f"{where}: no export objects yet (PostHog writes one after each interval; check the prefix)"
    more = " in the first page of 1,000 keys" if page.get("IsTruncated") else ""
    newest = max(listed)
    return True, (
        f"{where}: {len(listed):,} export objects{more}, newest written {newest.last_modified.isoformat()} "
        f"({newest.key.rsplit('/', 1)[-1]}), readable"
    )


def s3_failure(exc: BaseException, config: PostHogConfig, doing: str, attempts: int | None = None) -> str:
    """What failed talking to S3, as a paragraph built from the error's code and our own numbers (never botocore's
    message, which can carry request details) and what to change."""
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        InvalidRegionError,
        NoCredentialsError,
        ProfileNotFound,
        ReadTimeoutError,
    )

    export, tries = config.batch_export, attempts or config.max_attempts
    where = _where(export)
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", "")) or "no code"
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        if code == "NoSuchBucket":
            return (
                f"posthog batch export: there is no bucket {export.bucket!r} {_endpoint(export)} (NoSuchBucket, "
                f"{doing}): check sources.posthog.batch_export.bucket, endpoint_url and region."
            )
        if code in ACCESS_CODES or status == 403:
            return (
                f"posthog batch export: the S3 credentials ({_credential_source()}) were refused ({code}, HTTP "
                f"{status}) {doing} under {where}: check the key pair, and give it s3:ListBucket on the bucket and "
                "s3:GetObject on the objects under the prefix."
            )
        return (
            f"posthog batch export: S3 answered {code} (HTTP {status}) {doing} under {where}, after {tries} "
            "attempts: try again later, or check sources.posthog.batch_export.endpoint_url."
        )
    if isinstance(exc, ProfileNotFound):
        return (
            f"posthog batch export: the AWS profile {exc.kwargs.get('profile')!r} (AWS_PROFILE) does not exist "
            f"({doing}, {where}): set AWS_PROFILE to a profile in ~/.aws/config, unset it, or export "
            f"{ACCESS_KEY_ENV} and {SECRET_KEY_ENV}."
        )
    if isinstance(exc, InvalidRegionError):
        return (
            f"posthog batch export: region {export.region!r} is not a region name ({doing}): set "
            "sources.posthog.batch_export.region to the bucket's region (e.g. us-east-1; R2: auto)."
        )
    if isinstance(exc, NoCredentialsError):
        return (
            f"posthog batch export: no S3 credentials {doing} under {where}: export {ACCESS_KEY_ENV} and "
            f"{SECRET_KEY_ENV}, or give this machine an AWS identity (an IAM role, AWS_PROFILE)."
        )
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError)):
        return (
            f"posthog batch export: no answer {_endpoint(export)} {doing} under {where}, after {tries} attempts "
            f"({type(exc).__name__}, {config.timeout_seconds:g} s timeout each): check "
            "sources.posthog.batch_export.endpoint_url and the network, or raise sources.posthog.timeout_seconds "
            "or max_attempts."
        )
    return (
        f"posthog batch export: {type(exc).__name__} {doing} under {where}: check sources.posthog.batch_export "
        "and the store."
    )


def _pending(client, config: PostHogConfig, kept: dict[str, Any]) -> tuple[list[ExportObject], int]:
    """The objects this pull reads (the oldest `max_objects` of those not read yet) and how many more wait."""
    export = config.batch_export
    window = _window_start(kept, config)
    imported = kept.get("imported", {})
    waiting = _Counted(
        obj
        for obj in _listed(client, config)
        if (window is None or obj.last_modified >= window)
        and imported.get(obj.key) != _identity(obj.etag, obj.last_modified)
    )
    pending = heapq.nsmallest(export.max_objects, waiting)
    return pending, waiting.count - len(pending)


def _listed(client, config: PostHogConfig) -> Iterator[ExportObject]:
    """Every export data object under the prefix (`list_objects_v2`, 1,000 keys a page), in the store's order."""
    from botocore.exceptions import BotoCoreError, ClientError

    export, count = config.batch_export, 0
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=export.bucket, Prefix=export.prefix):
            for entry in page.get("Contents", []):
                count += 1
                obj = _export_object(entry)
                if obj is not None and export.format in ("auto", obj.format):
                    yield obj
    except (BotoCoreError, ClientError) as exc:
        raise ConnectorError(s3_failure(exc, config, f"listing the objects ({count:,} listed)")) from None


def _export_object(entry: dict[str, Any]) -> ExportObject | None:
    """A listed entry as an `ExportObject`, or None when its name is not an export data file's."""
    match = DATA_NAME.search(entry["Key"])
    if match is None:
        return None
    return ExportObject(
        last_modified=entry["LastModified"].astimezone(UTC),
        key=entry["Key"],
        etag=entry["ETag"],
        size=entry.get("Size", 0),
        format=match["format"],
        compression=match["compression"],
    )


def _identity(etag: str, last_modified: datetime) -> list[str]:
    """What says an object is the one read before: its ETag and LastModified to the second (a GET's header has
    no finer time than that, some stores' listings do)."""
    return [etag, last_modified.astimezone(UTC).replace(microsecond=0).isoformat()]


def _window_start(kept: dict[str, Any], config: PostHogConfig) -> datetime | None:
    """The oldest LastModified still considered: the high water minus the overlap (None before the first object)."""
    high_water = kept.get("high_water")
    if not high_water:
        return None
    return datetime.fromisoformat(high_water[0]) - timedelta(minutes=config.overlap_minutes)


def _forget_outside_overlap(kept: dict[str, Any], config: PostHogConfig) -> None:
    """Drop from `imported` the objects older than the window: they are never considered again."""
    window = _window_start(kept, config)
    if window is not None and "imported" in kept:
        kept["imported"] = {
            key: identity
            for key, identity in kept["imported"].items()
            if datetime.fromisoformat(identity[1]) >= window.replace(microsecond=0)
        }


def _download(client, config: PostHogConfig, obj: ExportObject, file, doing: str) -> list[str]:
    """Write the object into `file` (1 MiB at a time) and return the identity of the version read."""
    from botocore.exceptions import BotoCoreError, ClientError

    export = config.batch_export
    try:
        answer = client.get_object(Bucket=export.bucket, Key=obj.key)
        for chunk in answer["Body"].iter_chunks(DOWNLOAD_CHUNK):
            file.write(chunk)
    except (BotoCoreError, ClientError) as exc:
        raise ConnectorError(s3_failure(exc, config, doing)) from None
    file.flush()
    return _identity(answer["ETag"], answer["LastModified"])


def _records(obj: ExportObject, path: str, chunk_rows: int) -> Iterator[list[dict[str, Any]]]:
    """The object's records, `chunk_rows` at a time, as dicts of the contract's columns it has."""
    try:
        if obj.format == "parquet":
            yield from _parquet_records(obj, path, chunk_rows)
        else:
            yield from _jsonl_records(obj, path, chunk_rows)
    except (pa.ArrowException, OSError, UnicodeDecodeError, EOFError) as exc:
        raise ConnectorError(
            f"posthog batch export: {obj.key} ({obj.size:,} bytes) cannot be read as "
            f"{'Parquet' if obj.format == 'parquet' else 'JSON lines'} ({type(exc).__name__}). PostHog writes it "
            "again when the run is retried (Batch exports → the export → Runs → retry); to let the pulls go on "
            "without it, move it out of the prefix."
        ) from None


def _parquet_records(obj: ExportObject, path: str, chunk_rows: int) -> Iterator[list[dict[str, Any]]]:
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as parquet:
        names = parquet.schema_arrow.names
        missing = [name for name in REQUIRED if name not in names]
        if missing:
            raise ConnectorError(
                f"posthog batch export: {obj.key} has no column {missing} (its columns: {names[:20]}): export the "
                "events model with its default fields."
            )
        columns = [name for name in COLUMNS if name in names]
        for batch in parquet.iter_batches(batch_size=chunk_rows, columns=columns):
            yield batch.to_pylist()


def _jsonl_records(obj: ExportObject, path: str, chunk_rows: int) -> Iterator[list[dict[str, Any]]]:
    if obj.compression not in JSONL_CODECS:
        raise ConnectorError(
            f"posthog batch export: {obj.key} is JSON lines compressed as .{obj.compression}, which beton cannot "
            "read (it reads JSON lines plain, .gz, .br or .zst, and Parquet with any compression). In PostHog, set "
            "the export's compression to gzip or brotli, or its format to Parquet; or set "
            "sources.posthog.batch_export.format: parquet to leave the JSON lines objects alone."
        )
    rows: list[dict[str, Any]] = []
    with pa.input_stream(path, compression=JSONL_CODECS[obj.compression]) as stream:
        for number, line in enumerate(io.TextIOWrapper(io.BufferedReader(stream), encoding="utf-8"), start=1):
            if not line.strip():
                continue
            record = _json_record(line)
            if record is None:
                raise ConnectorError(
                    f"posthog batch export: line {number:,} of {obj.key} is not a JSON object: the object is not "
                    "a PostHog JSON lines export; move it out of the prefix."
                )
            rows.append({name: record.get(name) for name in COLUMNS})
            if len(rows) == chunk_rows:
                yield rows
                rows = []
    if rows:
        yield rows


def _json_record(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _note_newest(kept: dict[str, Any], table: pa.Table, now: datetime) -> None:
    """Keep the newest readable event time exported so far (at most `now`), where a top-up starts."""
    times = (parse_time(value) for value in table.column("timestamp").to_pylist())
    newest = max((moment for moment in times if moment is not None and moment <= now), default=None)
    if newest is not None and (
        kept.get("newest_event") is None or newest > datetime.fromisoformat(kept["newest_event"])
    ):
        kept["newest_event"] = newest.isoformat()


def _credentials() -> dict[str, str]:
    """boto3's keyword arguments for our key pair; none when neither variable is set (the default chain)."""
    if not any(os.environ.get(name, "").strip() for name in (ACCESS_KEY_ENV, SECRET_KEY_ENV)):
        return {}
    return {
        "aws_access_key_id": secret(ACCESS_KEY_ENV, SOURCE),
        "aws_secret_access_key": secret(SECRET_KEY_ENV, SOURCE),
    }


def _credential_source() -> str:
    if any(os.environ.get(name, "").strip() for name in (ACCESS_KEY_ENV, SECRET_KEY_ENV)):
        return f"{ACCESS_KEY_ENV} and {SECRET_KEY_ENV}"
    return f"boto3's default chain: {ACCESS_KEY_ENV} is not set"


def _endpoint(export) -> str:
    return f"at {export.endpoint_url}" if export.endpoint_url else f"in AWS S3 ({export.region})"


def _where(export) -> str:
    return f"s3://{export.bucket}/{export.prefix} {_endpoint(export)}"


class _Counted:
    """An iterable that counts what it yields (how many objects wait, while only the oldest few are kept)."""

    def __init__(self, items: Iterable[ExportObject]) -> None:
        self.items, self.count = items, 0

    def __iter__(self) -> Iterator[ExportObject]:
        for item in self.items:
            self.count += 1
            yield item
