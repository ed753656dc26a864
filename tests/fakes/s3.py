"""An S3 server on 127.0.0.1 (moto's `ThreadedMotoServer`, a real HTTP server speaking S3's REST API) holding a
bucket that a PostHog batch export writes into, and helpers that write objects as PostHog's S3 destination does.

Keys follow PostHog's `get_s3_key`: the key prefix with its variables filled from the interval's end (`{year}`,
`{month}`, `{day}`, `{hour}`, …), then `<data_interval_start>-<data_interval_end>` as ISO times, `-<n>` when a
max file size splits the interval, `.parquet` or `.jsonl`, and the compression's suffix (`.zst`, `.gz`, `.br`,
…); a split interval also gets `<start>-<end>_manifest.json` listing its files. Records carry the S3 default
fields of the events model: `uuid`, `timestamp`, `_inserted_at`, `created_at`, `event`, `properties`,
`distinct_id`, `elements_chain`, `person_properties`, `person_id`. In Parquet, the times are
`timestamp[us, UTC]` and the properties JSON text; in JSON lines (written like orjson: compact, times as ISO
with `+00:00`) the properties are objects.

moto keeps its state per process, so entering the fake resets it; `require_credentials()` turns on moto's IAM
checks (signatures and permissions) with one user allowed `s3:*`, so that a wrong key pair is refused as AWS
refuses it. `down()` stops the server: connections are refused from then on.

    with FakeS3() as s3:
        key = s3.put_export(events, start, end)
        config = BatchExportConfig(bucket=s3.bucket, prefix="posthog/events/", endpoint_url=s3.url)
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import posixpath
from datetime import datetime, timedelta
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import requests
from moto.core.authorization import enable_iam_authentication
from moto.server import ThreadedMotoServer

from tests.fakes import LOCALHOST

REGION = "us-east-1"
BUCKET = "beton-posthog-export"
KEY_PREFIX = "posthog/events/{year}/{month}/{day}/{hour}"
"""A key prefix as a PostHog user writes it in the export's settings."""

PARQUET_SCHEMA = pa.schema(
    [
        ("uuid", pa.string()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("_inserted_at", pa.timestamp("us", tz="UTC")),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("event", pa.string()),
        ("properties", pa.string()),
        ("distinct_id", pa.string()),
        ("elements_chain", pa.string()),
        ("person_properties", pa.string()),
        ("person_id", pa.string()),
    ]
)
"""The events model's S3 default fields in PostHog's order, typed as its Parquet files type them."""

COMPRESSION_SUFFIX = {"gzip": "gz", "snappy": "sz", "brotli": "br", "zstd": "zst", "lz4": "lz4"}


class FakeS3:
    """moto's S3 on 127.0.0.1 with one bucket (see the module docstring)."""

    def __init__(self, bucket: str = BUCKET, access_key: str = "AKIAFAKEBETON0000001", secret_key: str = "s") -> None:
        self.bucket = bucket
        self.access_key, self.secret_key = access_key, secret_key
        self._server: ThreadedMotoServer | None = None
        self._auth = None
        self.url = ""

    def __enter__(self) -> FakeS3:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request in the test output
        self._server = ThreadedMotoServer(ip_address=LOCALHOST, port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        requests.post(f"{self.url}/moto-api/reset", timeout=10).raise_for_status()
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def __exit__(self, *exc) -> None:
        if self._auth is not None:
            self._auth.__exit__(None, None, None)
            self._auth = None
        self.down()

    def down(self) -> None:
        """Stop the server: connections to its port are refused from now on."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self):
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def require_credentials(self) -> tuple[str, str]:
        """Check every request's signature and permissions from now on; the one key pair allowed (`s3:*`)."""
        iam = boto3.session.Session().client(
            "iam", endpoint_url=self.url, region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x"
        )
        iam.create_user(UserName="beton-reader")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="beton-reader", PolicyName="read-export", PolicyDocument=json.dumps(policy))
        created = iam.create_access_key(UserName="beton-reader")["AccessKey"]
        self.access_key, self.secret_key = created["AccessKeyId"], created["SecretAccessKey"]
        self._auth = enable_iam_authentication()
        self._auth.__enter__()
        return self.access_key, self.secret_key

    # -- what PostHog writes ----------------------------------------------------------------------------------
    def put_export(
        self,
        events: list[dict],
        start: datetime,
        end: datetime,
        *,
        file_format: str = "Parquet",
        compression: str | None = None,
        file_number: int | None = None,
        key_prefix: str = KEY_PREFIX,
    ) -> str:
        """Write one export file of `events` for the interval [start, end) as PostHog names it; its key."""
        key = export_key(key_prefix, start, end, file_format, compression, file_number)
        body = parquet_bytes(events, compression) if file_format == "Parquet" else jsonl_bytes(events, compression)
        self.put(key, body)
        return key

    def put_manifest(self, start: datetime, end: datetime, keys: list[str], key_prefix: str = KEY_PREFIX) -> str:
        """The manifest PostHog writes after the files of a split interval."""
        key = posixpath.join(_prefix(key_prefix, start, end), f"{start.isoformat()}-{end.isoformat()}_manifest.json")
        self.put(key, json.dumps({"files": keys}).encode())
        return key

    def put(self, key: str, body: bytes) -> None:
        self.client().put_object(Bucket=self.bucket, Key=key, Body=body)

    def etag(self, key: str) -> str:
        return self.client().head_object(Bucket=self.bucket, Key=key)["ETag"]


def export_event(n: int, at: datetime, name: str = "$pageview", inserted: timedelta = timedelta(seconds=3)) -> dict:
    """One event of the export with every S3 default field; `properties`/`person_properties` as dicts."""
    import uuid

    return {
        "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"export-event-{n}")),
        "timestamp": at,
        "_inserted_at": at + inserted,
        "created_at": at + inserted,
        "event": name,
        "properties": {"$current_url": f"https://app.acme.io/{n}", "$groups": {"company": "acme.io"}, "n": n},
        "distinct_id": f"user-{n % 7}",
        "elements_chain": "",
        "person_properties": {"email": f"user{n % 7}@acme.io", "plan": "pro"},
        "person_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"person-{n % 7}")),
    }


def export_key(
    key_prefix: str, start: datetime, end: datetime, file_format: str, compression: str | None, file_number: int | None
) -> str:
    """PostHog's `get_s3_key`."""
    name = f"{start.isoformat()}-{end.isoformat()}"
    if file_number is not None:
        name += f"-{file_number}"
    name += ".parquet" if file_format == "Parquet" else ".jsonl"
    if compression is not None:
        name += f".{COMPRESSION_SUFFIX[compression]}"
    return posixpath.join(_prefix(key_prefix, start, end), name)


def _prefix(key_prefix: str, start: datetime, end: datetime) -> str:
    return key_prefix.format(
        second=f"{end:%S}",
        minute=f"{end:%M}",
        hour=f"{end:%H}",
        day=f"{end:%d}",
        month=f"{end:%m}",
        year=f"{end:%Y}",
        data_interval_start=start.isoformat(),
        data_interval_end=end.isoformat(),
        table="events",
    )


def parquet_bytes(events: list[dict], compression: str | None) -> bytes:
    """Events as PostHog's Parquet file (properties as JSON text, compact as PostHog stores them)."""
    rows = [{**e, **{k: _json_text(e.get(k)) for k in ("properties", "person_properties")}} for e in events]
    table = pa.Table.from_pylist(rows, schema=PARQUET_SCHEMA)
    out = io.BytesIO()
    pq.write_table(table, out, compression=compression or "none")
    return out.getvalue()


def jsonl_bytes(events: list[dict], compression: str | None) -> bytes:
    """Events as PostHog's JSON lines file (orjson's output: compact, ISO times, properties as objects)."""
    text = "".join(json.dumps(_jsonable(e), separators=(",", ":"), ensure_ascii=False) + "\n" for e in events)
    data = text.encode()
    if compression is None:
        return data
    if compression == "gzip":
        return gzip.compress(data)
    out = pa.BufferOutputStream()
    with pa.CompressedOutputStream(out, compression) as stream:
        stream.write(data)
    return out.getvalue().to_pybytes()


def _json_text(value: Any) -> Any:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False) if isinstance(value, dict) else value


def _jsonable(event: dict) -> dict:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in event.items()}
