"""The PostHog connector reading a batch export from S3 (moto's S3 server on 127.0.0.1: `tests/fakes/s3.py`), and
topping it up through the query API (`tests/fakes/posthog_api.py`): every pull lands Parquet through dlt, the
ordinary ingest loads it, and each test checks the exact rows of `raw.raw_events` (and the quarantine).

Objects are named and shaped as PostHog's S3 destination writes them (Parquet with zstd, JSON lines plain, gzip'd
or brotli'd, split intervals with a manifest); each is read once, or again when PostHog writes it again; a pull
that fails commits nothing; `max_objects` spreads a backlog over pulls; errors never carry the key pair."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from beton_pipeline.sources.connectors.common import ConnectorError, pull, source_dir
from beton_pipeline.sources.connectors.posthog import BatchExportConfig, PostHogConfig, posthog_source
from beton_pipeline.sources.connectors.posthog_batch import ACCESS_KEY_ENV, SECRET_KEY_ENV
from tests.fakes.posthog_api import FakePostHog
from tests.fakes.s3 import FakeS3, export_event
from tests.sources.connectors.test_posthog import _counts, _failed_pull, _ingest

API_KEY = "phx_beton_batch_test_secret"
PROJECT = "4242"
H0 = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)


@pytest.fixture
def s3(monkeypatch):
    with FakeS3() as fake:
        monkeypatch.setenv(ACCESS_KEY_ENV, fake.access_key)
        monkeypatch.setenv(SECRET_KEY_ENV, fake.secret_key)
        monkeypatch.setenv("BETON_POSTHOG_API_KEY", API_KEY)
        yield fake


def _hour(hour: int, count: int, first: int) -> list[dict]:
    """`count` events of the hour starting `hour` hours after H0, 30 seconds apart, numbered from `first`."""
    return [export_event(first + i, H0 + timedelta(hours=hour, seconds=30 * i)) for i in range(count)]


def _put_hour(s3: FakeS3, hour: int, events: list[dict], **kwargs) -> str:
    start = H0 + timedelta(hours=hour)
    return s3.put_export(events, start, start + timedelta(hours=1), **kwargs)


def _config(s3: FakeS3, posthog: FakePostHog | None = None, **export) -> PostHogConfig:
    """Fast retries; `export` overrides the batch export's settings."""
    return PostHogConfig(
        host=posthog.url if posthog else "http://127.0.0.1:9",
        project_id=PROJECT,
        page_size=7,  # several Arrow tables per object
        start="2025-01-01T00:00:00Z",
        timeout_seconds=5.0,
        max_attempts=2,
        backoff_factor=0.01,
        max_wait_seconds=1.0,
        batch_export=BatchExportConfig(
            **{"bucket": s3.bucket, "prefix": "posthog/events/", "endpoint_url": s3.url, **export}
        ),
    )


def _expected(events: list[dict]) -> list[tuple]:
    """`raw.raw_events` rows for `events` (naive UTC times, minified JSON in the events' key order)."""
    rows = [
        (
            e["uuid"],
            e["event"],
            e["timestamp"].astimezone(UTC).replace(tzinfo=None),
            e["distinct_id"],
            json.dumps(e["properties"], separators=(",", ":")),
            json.dumps(e["person_properties"], separators=(",", ":")),
        )
        for e in events
    ]
    return sorted(rows, key=lambda r: (r[2], r[0]))


def _landed_files(landing: Path) -> list[Path]:
    return sorted((source_dir("posthog", landing) / "events").glob("*.parquet"))


def test_every_object_is_read_once_and_a_second_pull_reads_only_the_new_one(s3, tmp_path):
    hours = [_hour(0, 20, 0), _hour(1, 9, 100), _hour(2, 12, 200), _hour(3, 5, 300)]
    _put_hour(s3, 0, hours[0], compression="zstd")
    _put_hour(s3, 1, hours[1], file_format="JSONLines")
    split = [_put_hour(s3, 2, hours[2][:6], file_number=0), _put_hour(s3, 2, hours[2][6:], file_number=1)]
    s3.put_manifest(H0 + timedelta(hours=2), H0 + timedelta(hours=3), split)
    s3.put("posthog/events/README.txt", b"not an export file")
    pull(posthog_source(_config(s3)), tmp_path)
    result, rows = _ingest(tmp_path)
    assert rows == _expected(hours[0] + hours[1] + hours[2])
    assert _counts(result) == (41, 41, 0, 0)

    key = _put_hour(s3, 3, hours[3], file_format="JSONLines", compression="brotli")
    assert key == (
        "posthog/events/2025/03/01/14/2025-03-01T13:00:00+00:00-2025-03-01T14:00:00+00:00.jsonl.br"
    )  # PostHog's name: the prefix's variables from the interval's end
    pull(posthog_source(_config(s3)), tmp_path)
    result, rows = _ingest(tmp_path)
    assert rows == _expected(sum(hours, []))
    assert result.mode == "incremental" and _counts(result) == (46, 46, 0, 0)  # the new object's 5 events only


def test_an_object_written_again_is_read_again_and_the_ingest_keeps_no_duplicate(s3, tmp_path):
    first, second = _hour(0, 10, 0), _hour(1, 8, 100)
    _put_hour(s3, 0, first)
    key = _put_hour(s3, 1, second, file_format="JSONLines", compression="gzip")
    pull(posthog_source(_config(s3)), tmp_path)
    _ingest(tmp_path)
    etag = s3.etag(key)

    late = export_event(150, H0 + timedelta(hours=1, minutes=59))  # a retried run also finds a late event
    assert _put_hour(s3, 1, [*second, late], file_format="JSONLines", compression="gzip") == key
    assert s3.etag(key) != etag
    pull(posthog_source(_config(s3)), tmp_path)
    result, rows = _ingest(tmp_path)
    assert rows == _expected([*first, *second, late])
    assert _counts(result) == (10 + 8 + 9, 19, 0, 8)  # the rewritten object's 8 old events: exact duplicates

    pull(posthog_source(_config(s3)), tmp_path)  # nothing new: nothing landed
    assert _counts(_ingest(tmp_path)[0]) == (27, 19, 0, 8)


def test_malformed_records_land_and_are_quarantined_with_their_reason(s3, tmp_path):
    good = _hour(0, 6, 0)
    bad_time = {**export_event(50, H0), "timestamp": "yesterday"}
    no_uuid = {**export_event(51, H0 + timedelta(minutes=5)), "uuid": None}
    _put_hour(s3, 0, [good[0], bad_time, *good[1:4], no_uuid, *good[4:]], file_format="JSONLines")
    pull(posthog_source(_config(s3)), tmp_path)
    result, rows = _ingest(tmp_path)
    assert rows == _expected(good)
    assert _counts(result) == (8, 6, 2, 0)
    assert result.quarantine_reasons == {"timestamp: not a timestamp": 1, "uuid is empty": 1}


def test_a_pull_failing_half_way_commits_nothing_and_the_next_lands_everything_once(s3, tmp_path):
    hours = [_hour(0, 9, 0), _hour(1, 9, 100), _hour(2, 9, 200)]
    _put_hour(s3, 0, hours[0])
    broken = _put_hour(s3, 1, hours[1])
    s3.put(broken, b"PAR1 this is not a Parquet file")  # an upload cut short
    _put_hour(s3, 2, hours[2])
    error, _ = _failed_pull(_config(s3), tmp_path)
    assert str(error).startswith(f"posthog batch export: {broken} (31 bytes) cannot be read as Parquet")
    assert _landed_files(tmp_path) == []  # the first object's rows were read, not committed

    _put_hour(s3, 1, hours[1])  # PostHog's retry writes it whole
    pull(posthog_source(_config(s3)), tmp_path)
    result, rows = _ingest(tmp_path)
    assert rows == _expected(sum(hours, []))
    assert _counts(result) == (27, 27, 0, 0)


def test_max_objects_spreads_a_backlog_over_pulls_oldest_first_with_nothing_lost(s3, tmp_path, caplog):
    hours = [_hour(h, 4, 100 * h) for h in range(5)]
    for h, events in enumerate(hours):
        _put_hour(s3, h, events, file_format="JSONLines" if h % 2 else "Parquet")
    config = _config(s3, max_objects=2)
    loaded = []
    with caplog.at_level(logging.WARNING, logger="beton_pipeline.sources.connectors.posthog_batch"):
        for _ in range(3):
            pull(posthog_source(config), tmp_path)
            loaded.append(_counts(_ingest(tmp_path)[0]))
    assert loaded == [(8, 8, 0, 0), (16, 16, 0, 0), (20, 20, 0, 0)]
    assert "2 objects read (sources.posthog.batch_export.max_objects); 3 more are read by the next pulls" in caplog.text
    assert _ingest(tmp_path)[1] == _expected(sum(hours, []))


def test_top_up_queries_posthog_from_the_newest_exported_event(s3, tmp_path):
    """The export holds hours 0-1; PostHog holds those and hour 2, which the export has not written yet: the pull
    lands all three, the query asked from the export's newest event on. When the export writes hour 2, its
    events land again as exact duplicates (one text both ways), and nothing is quarantined."""
    exported, recent = _hour(0, 5, 0) + _hour(1, 5, 100), _hour(2, 6, 200)
    for h, events in ((0, exported[:5]), (1, exported[5:])):
        _put_hour(s3, h, events)
    newest = max(e["timestamp"] for e in exported)
    with FakePostHog(API_KEY, PROJECT, [_as_posthog(e) for e in exported + recent]) as posthog:
        pull(posthog_source(_config(s3, posthog, top_up=True)), tmp_path)
        queries = list(posthog.queries)
        result, rows = _ingest(tmp_path)
        assert rows == _expected(exported + recent)
        assert {q.values["window_start"] for q in queries} == {newest.isoformat()}
        assert sum(q.rows for q in queries) == 1 + 6  # the newest exported event again, and hour 2
        assert _counts(result) == (10 + 7, 16, 0, 1)

        _put_hour(s3, 2, recent)
        pull(posthog_source(_config(s3, posthog, top_up=True)), tmp_path)
        result, rows = _ingest(tmp_path)
        assert rows == _expected(exported + recent)
        assert posthog.queries[-1].values["window_start"] == max(e["timestamp"] for e in recent).isoformat()
        assert result.rows_quarantined == 0 and result.rows_loaded == 16


def test_without_top_up_posthog_is_never_asked(s3, tmp_path):
    _put_hour(s3, 0, _hour(0, 3, 0))
    with FakePostHog(API_KEY, PROJECT, [_as_posthog(e) for e in _hour(1, 3, 100)]) as posthog:
        pull(posthog_source(_config(s3, posthog)), tmp_path)
        assert posthog.requests == []
    assert _counts(_ingest(tmp_path)[0]) == (3, 3, 0, 0)


def test_refused_credentials_a_missing_bucket_and_no_answer_are_paragraphs_without_the_keys(s3, tmp_path, monkeypatch):
    key_id, secret_key = s3.require_credentials()
    _put_hour(s3, 0, _hour(0, 3, 0))
    monkeypatch.setenv(ACCESS_KEY_ENV, key_id)
    monkeypatch.setenv(SECRET_KEY_ENV, "wrongSECRETwrongSECRETwrongSECRET")
    error, text = _failed_pull(_config(s3), tmp_path)
    assert str(error) == (
        f"posthog batch export: the S3 credentials ({ACCESS_KEY_ENV} and {SECRET_KEY_ENV}) were refused "
        f"(SignatureDoesNotMatch, HTTP 403) listing the objects (0 listed) under s3://{s3.bucket}/posthog/events/ "
        f"at {s3.url}: check the key pair, and give it s3:ListBucket on the bucket and s3:GetObject on the objects "
        "under the prefix."
    )
    assert "wrongSECRET" not in text and key_id not in text

    monkeypatch.setenv(SECRET_KEY_ENV, secret_key)
    error, text = _failed_pull(_config(s3, bucket="no-such-bucket"), tmp_path)
    assert str(error).startswith(f"posthog batch export: there is no bucket 'no-such-bucket' at {s3.url}")
    assert secret_key not in text and key_id not in text

    monkeypatch.delenv(SECRET_KEY_ENV)
    error, _ = _failed_pull(_config(s3), tmp_path)
    assert SECRET_KEY_ENV in str(error) and "is not set" in str(error)

    monkeypatch.setenv(SECRET_KEY_ENV, secret_key)
    pull(posthog_source(_config(s3)), tmp_path)  # the right pair reads the export
    assert _counts(_ingest(tmp_path)[0]) == (3, 3, 0, 0)
    s3.down()
    error, text = _failed_pull(_config(s3), tmp_path)
    assert str(error).startswith(f"posthog batch export: no answer at {s3.url} listing the objects (0 listed)")
    assert "after 2 attempts (EndpointConnectionError, 5 s timeout each)" in str(error)
    assert secret_key not in text


def test_a_json_lines_compression_beton_cannot_read_stops_the_pull_and_says_what_to_change(s3, tmp_path):
    _put_hour(s3, 0, _hour(0, 3, 0))
    odd = _put_hour(s3, 1, _hour(1, 3, 100), file_format="JSONLines", compression="lz4")
    error, _ = _failed_pull(_config(s3), tmp_path)
    assert f"{odd} is JSON lines compressed as .lz4, which beton cannot read" in str(error)
    assert "sources.posthog.batch_export.format: parquet" in str(error)
    pull(posthog_source(_config(s3, format="parquet")), tmp_path)  # the JSON lines objects left alone
    assert _counts(_ingest(tmp_path)[0]) == (3, 3, 0, 0)


def _as_posthog(event: dict) -> dict:
    """An exported event as the query fake holds it (properties as PostHog's stored JSON text)."""
    return {
        "uuid": event["uuid"],
        "event": event["event"],
        "timestamp": event["timestamp"].isoformat(),
        "distinct_id": event["distinct_id"],
        "properties": json.dumps(event["properties"], separators=(",", ":")),
        "person_properties": json.dumps(event["person_properties"], separators=(",", ":")),
    }


class _Listing:
    """A stub S3 client whose `list_objects_v2` paginator lists the given (key, LastModified, ETag) entries: the
    window rules tested at exact times, which objects written by a live server cannot reach."""

    def __init__(self, entries: list[tuple[str, datetime, str]]):
        self.entries = entries

    def get_paginator(self, name: str):
        assert name == "list_objects_v2"
        contents = [{"Key": k, "LastModified": t, "ETag": e, "Size": 1} for k, t, e in self.entries]
        return type("Paginator", (), {"paginate": lambda _self, **_: iter([{"Contents": contents}])})()


def _name(hour: int) -> str:
    start = H0 + timedelta(hours=hour)
    return f"posthog/events/{start.isoformat()}-{(start + timedelta(hours=1)).isoformat()}.parquet"


def test_the_overlap_window_decides_which_objects_are_read_to_the_second():
    from beton_pipeline.sources.connectors import posthog_batch as batch

    config = PostHogConfig(overlap_minutes=60, batch_export=BatchExportConfig(bucket="abc", prefix="posthog/events/"))
    high = H0 + timedelta(hours=10)
    kept = {
        "high_water": [high.isoformat(), _name(9)],
        "imported": {_name(9): batch._identity('"e9"', high)},
    }
    entries = [
        (_name(9), high, '"e9"'),  # read before, unchanged: skipped
        (_name(8), high - timedelta(minutes=60), '"e8"'),  # late, exactly at the window's start: read
        (_name(7), high - timedelta(minutes=60, seconds=1), '"e7"'),  # late beyond the overlap: skipped
        (_name(6), high - timedelta(minutes=30), '"e6"'),  # late within the overlap: read
        (_name(10), high + timedelta(minutes=5), '"e10"'),  # new: read
        ("posthog/events/x_manifest.json", high + timedelta(minutes=6), '"m"'),  # not data
    ]
    pending, waiting = batch._pending(_Listing(entries), config, kept)
    assert [o.key for o in pending] == [_name(8), _name(6), _name(10)] and waiting == 0

    rewritten = [(_name(9), high + timedelta(minutes=1), '"e9-new"')]  # PostHog wrote it again
    assert [o.key for o in batch._pending(_Listing(rewritten), config, kept)[0]] == [_name(9)]

    kept["high_water"] = [(high + timedelta(minutes=61)).isoformat(), _name(10)]
    batch._forget_outside_overlap(kept, config)
    assert kept["imported"] == {}, "an object older than the window is forgotten"
    gone = [(_name(9), high + timedelta(minutes=1), '"e9"')]  # a forgotten object rewritten inside the window
    assert [o.key for o in batch._pending(_Listing(gone), config, kept)[0]] == [_name(9)]

    kept["imported"] = {_name(9): batch._identity('"e9"', high + timedelta(minutes=1, microseconds=500))}
    batch._forget_outside_overlap(kept, config)
    assert list(kept["imported"]) == [_name(9)], "kept while inside the window, compared to the second"


def test_an_unknown_aws_profile_is_a_paragraph(monkeypatch):
    from beton_pipeline.sources.connectors.posthog_batch import pull_batch_export

    for name in (ACCESS_KEY_ENV, SECRET_KEY_ENV, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    config = PostHogConfig(batch_export=BatchExportConfig(bucket="abc", endpoint_url="http://127.0.0.1:9"))
    with pytest.raises(ConnectorError, match=r"the AWS profile 'no-such-profile' \(AWS_PROFILE\) does not exist"):
        list(pull_batch_export(config, {}))
