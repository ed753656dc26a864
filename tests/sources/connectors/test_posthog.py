"""The PostHog connector against a fake PostHog query API on 127.0.0.1 (`tests/fakes/posthog_api.py`): every
pull lands Parquet through dlt, the ordinary ingest loads it, and each test checks the exact rows of
`raw.raw_events` (and the quarantine) against the fake's events.

Paging is by (timestamp, uuid) keyset, never OFFSET; the cursor moves only with a committed load; the overlap
re-read is dropped by the ingest as exact duplicates; 429s (Retry-After in seconds or as a date), 5xx and
timeouts are retried; a refused key or a missing one is a `ConnectorError` that never holds the key."""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from email.utils import formatdate
from pathlib import Path

import pytest

from beton_pipeline.sources.connectors.common import ConnectorError, pull, source_dir
from beton_pipeline.sources.connectors.posthog import MAX_QUERY_ROWS, PostHogConfig, posthog_source
from beton_pipeline.sources.contract import TABLES_BY_NAME
from beton_pipeline.sources.ingest import IngestResult, ingest_table
from beton_pipeline.warehouse import connect
from tests.fakes.posthog_api import FakePostHog

KEY = "phx_beton_test_secret_4f9a"
KEY_ENV = "BETON_POSTHOG_API_KEY"
PROJECT = "4242"
START = "2025-01-01T00:00:00Z"
BASE = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
BERLIN = timezone(timedelta(hours=1))


@pytest.fixture(autouse=True)
def _api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def _event(n: int, at: datetime, name: str = "$pageview") -> dict:
    """A PostHog event: uuid from `n` (its order differs from `n`'s), time written with a +01:00 offset."""
    return {
        "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"event-{n}")),
        "event": name,
        "timestamp": at.astimezone(BERLIN).isoformat(),
        "distinct_id": f"user-{n % 7}",
        "properties": {"$current_url": f"https://app.acme.io/{n}", "$groups": {"company": "acme.io"}},
        "person_properties": {"email": f"user{n % 7}@acme.io"},
    }


def _history(count: int = 23) -> list[dict]:
    """`count` events 10 minutes apart, except events 3 to 6 which share one time (a batch): with pages of 5,
    a page boundary falls inside the tie, where paging by timestamp alone would lose rows."""
    times = [BASE + timedelta(minutes=10 * (3 if 3 <= n <= 6 else n)) for n in range(count)]
    return [_event(n, at) for n, at in zip(range(count), times, strict=True)][::-1]  # stored out of order


def _key(event: dict) -> tuple[datetime, int]:
    return datetime.fromisoformat(event["timestamp"]), uuid.UUID(event["uuid"]).int


def _bound(event: dict) -> tuple[str, str]:
    """The keyset bound the connector must send after `event`: its time in UTC ISO and its uuid."""
    return datetime.fromisoformat(event["timestamp"]).astimezone(UTC).isoformat(), event["uuid"]


def _expected(events: list[dict]) -> list[tuple]:
    """`raw.raw_events` rows for `events` as the ingest loads them (naive UTC times, minified JSON)."""
    rows = [
        (
            e["uuid"],
            e["event"],
            datetime.fromisoformat(e["timestamp"]).astimezone(UTC).replace(tzinfo=None),
            e["distinct_id"],
            json.dumps(e["properties"], separators=(",", ":")),
            json.dumps(e["person_properties"], separators=(",", ":")),
        )
        for e in events
    ]
    return sorted(rows, key=lambda r: (r[2], r[0]))


def _config(fake: FakePostHog, **changes) -> PostHogConfig:
    """Small pages and fast retries; `changes` override."""
    settings = dict(
        host=fake.url,
        project_id=PROJECT,
        page_size=5,
        start=START,
        timeout_seconds=10.0,
        max_attempts=3,
        backoff_factor=0.01,
        max_wait_seconds=5.0,
    )
    return PostHogConfig(**{**settings, **changes})


def _ingest(landing: Path) -> tuple[IngestResult, list[tuple]]:
    """Ingest what was pulled into the warehouse beside it (incremental): the result and the raw rows."""
    with connect(landing / "w.duckdb") as con:
        result = ingest_table(con, source_dir("posthog", landing), TABLES_BY_NAME["events"], incremental=True)
        rows = con.sql(
            "select uuid, event, timestamp, distinct_id, properties, person_properties "
            "from raw.raw_events order by timestamp, uuid"
        ).fetchall()
    assert result.rows_read == result.rows_loaded + result.rows_quarantined + result.exact_duplicates_dropped
    return result, rows


def _counts(result: IngestResult) -> tuple[int, int, int, int]:
    """(rows read, loaded, quarantined, dropped as exact duplicates)."""
    return result.rows_read, result.rows_loaded, result.rows_quarantined, result.exact_duplicates_dropped


def _failed_pull(config: PostHogConfig, landing: Path) -> tuple[ConnectorError, str]:
    """Run a pull that must fail: the `ConnectorError` (dlt wraps it in its step error) and all the text raised."""
    with pytest.raises(Exception) as raised:
        pull(posthog_source(config), landing)
    chain, error = [], raised.value
    while error is not None and error not in chain and len(chain) < 20:  # a chain can loop back on itself
        chain.append(error)
        error = error.__cause__ or error.__context__
    found = [e for e in chain if isinstance(e, ConnectorError)]
    assert found, f"no ConnectorError in {chain!r}"
    return found[0], "\n".join(str(e) for e in chain)


def test_pages_by_timestamp_and_uuid_and_lands_every_event_once(tmp_path):
    events = _history()
    ordered = sorted(events, key=_key)
    with FakePostHog(api_key=KEY, project_id=PROJECT, events=events, timezone="America/New_York") as fake:
        pull(posthog_source(_config(fake)), tmp_path)
        queries = fake.queries

    result, rows = _ingest(tmp_path)
    assert rows == _expected(events)
    assert _counts(result) == (23, 23, 0, 0)
    assert [q.rows for q in queries] == [5, 5, 5, 5, 3]
    assert all(
        "OFFSET" not in q.hogql.upper() and q.hogql.endswith("ORDER BY timestamp, uuid LIMIT 5") for q in queries
    )
    assert "after_uuid" not in queries[0].values
    for page, query in enumerate(queries[1:], start=1):
        assert (query.values["after_timestamp"], query.values["after_uuid"]) == _bound(ordered[5 * page - 1])
        assert query.values["window_start"] == "2025-01-01T00:00:00+00:00"
        assert not any(value in query.hogql for value in query.values.values())  # values travel as placeholders


def test_second_pull_reads_from_cursor_minus_overlap_and_loads_only_new_events(tmp_path):
    events = _history()
    last = max(events, key=_key)
    last_at = datetime.fromisoformat(last["timestamp"])
    new = [
        _event(100, last_at + timedelta(minutes=5)),
        _event(101, last_at + timedelta(minutes=15)),
        _event(102, last_at + timedelta(minutes=25), name="invited_teammate"),
        _event(103, last_at - timedelta(minutes=25), name="late_from_offline_client"),  # inside the overlap
    ]
    overlap = [e for e in events if datetime.fromisoformat(e["timestamp"]) >= last_at - timedelta(minutes=60)]
    with FakePostHog(api_key=KEY, project_id=PROJECT, events=events) as fake:
        config = _config(fake, overlap_minutes=60.0)
        pull(posthog_source(config), tmp_path)
        _ingest(tmp_path)
        fake.add(new)
        first_pull_queries = len(fake.queries)
        pull(posthog_source(config), tmp_path)
        second = fake.queries[first_pull_queries:]

    assert second[0].values["window_start"] == (last_at - timedelta(minutes=60)).astimezone(UTC).isoformat()
    assert set(second[0].values) == {"window_start", "window_end"}
    assert sum(q.rows for q in second) == len(overlap) + 4 == 11
    result, rows = _ingest(tmp_path)
    assert rows == _expected(events + new)
    assert len({r[0] for r in rows}) == len(rows) == 27
    assert result.mode == "incremental"
    assert _counts(result) == (23 + 11, 27, 0, len(overlap))


def test_rate_limits_server_errors_and_timeouts_are_retried(tmp_path):
    events = _history(12)
    with FakePostHog(api_key=KEY, project_id=PROJECT, events=events) as fake:
        fake.fail_next(429, retry_after=formatdate(time.time() + 2, usegmt=True))  # an HTTP date, 1-2 s ahead
        fake.fail_next(429, retry_after=1)
        fake.fail_next(500)
        # An answer later than the timeout; read, it would fail the pull (no `results`): it must be cut off.
        fake.fail_next(200, delay=1.5)
        pull(posthog_source(_config(fake, page_size=10, max_attempts=5, timeout_seconds=0.5)), tmp_path)
        statuses = sorted(r.status for r in fake.requests)
        queries = fake.queries

    assert [q.rows for q in queries] == [10, 2]
    assert statuses.count(429) == 2 and statuses.count(500) == 1
    result, rows = _ingest(tmp_path)
    assert rows == _expected(events)
    assert result.rows_read == 12 and result.exact_duplicates_dropped == 0


def test_malformed_events_land_and_are_quarantined_with_their_reason(tmp_path):
    valid = [_event(n, BASE + timedelta(minutes=10 * n)) for n in range(9)]
    yesterday = {  # ends the first page: the next page is asked after the last readable row before it
        **_event(50, BASE),
        "timestamp": "yesterday",
        "_at": (BASE + timedelta(minutes=25)).isoformat(),
    }
    no_uuid = {**_event(51, BASE + timedelta(minutes=85)), "uuid": None}  # ends the third page
    with FakePostHog(api_key=KEY, project_id=PROJECT, events=[*valid, yesterday, no_uuid]) as fake:
        pull(posthog_source(_config(fake, page_size=4)), tmp_path)
        queries = fake.queries

    assert [q.rows for q in queries] == [4, 4, 4, 1]
    assert (queries[1].values["after_timestamp"], queries[1].values["after_uuid"]) == _bound(valid[2])
    assert (queries[3].values["after_timestamp"], queries[3].values["after_uuid"]) == _bound(valid[8])
    result, rows = _ingest(tmp_path)
    assert rows == _expected(valid)
    # Each malformed row landed twice (re-read after the bound): quarantined once, dropped once as a duplicate.
    assert _counts(result) == (13, 9, 2, 2)
    assert result.quarantine_reasons == {"timestamp: not a timestamp": 1, "uuid is empty": 1}


def test_a_pull_failing_half_way_commits_nothing_and_the_next_pull_lands_everything(tmp_path):
    events = _history()
    landing, clean = tmp_path / "landing", tmp_path / "clean"
    with FakePostHog(api_key=KEY, project_id=PROJECT, events=events) as fake:
        config = _config(fake, max_attempts=3)
        fake.break_after(2)  # the third page answers 500, every attempt
        error, text = _failed_pull(config, landing)
        assert len(fake.queries) == 2 and [r.status for r in fake.requests[-3:]] == [500, 500, 500]
        fake.recover()
        answered = len(fake.queries)
        pull(posthog_source(config), landing)
        retry_start = fake.queries[answered].values["window_start"]
        pull(posthog_source(config), clean)

    message = str(error)
    assert "500" in message and "3 attempts" in message and f"/api/projects/{PROJECT}/query/" in message
    assert KEY not in text
    assert retry_start == "2025-01-01T00:00:00+00:00"  # the failed pull's cursor was not committed
    result, rows = _ingest(landing)
    clean_result, clean_rows = _ingest(clean)
    assert rows == clean_rows == _expected(events)
    assert (result.rows_read, result.exact_duplicates_dropped) == (clean_result.rows_read, 0) == (23, 0)


def test_a_missing_or_refused_key_is_a_clear_error_without_the_key(tmp_path, monkeypatch):
    with FakePostHog(api_key=KEY, project_id=PROJECT, events=_history(3)) as fake:
        monkeypatch.delenv(KEY_ENV)
        error, _ = _failed_pull(_config(fake), tmp_path)
        assert KEY_ENV in str(error) and fake.requests == []

        wrong = "phx_wrong_key_0123456789"
        monkeypatch.setenv(KEY_ENV, wrong)
        error, text = _failed_pull(_config(fake), tmp_path)
        assert len(fake.requests) == 1 and fake.requests[0].status == 401  # refused, not retried
        assert "refused (401)" in str(error) and KEY_ENV in str(error)
        assert wrong not in text and KEY not in text

        monkeypatch.setenv(KEY_ENV, KEY)
        error, _ = _failed_pull(_config(fake, project_id=""), tmp_path)
        assert "sources.posthog.project_id is empty" in str(error)
        error, _ = _failed_pull(_config(fake, project_id="999"), tmp_path)
        assert "no project 999" in str(error) and "(404" in str(error)
    assert not (source_dir("posthog", tmp_path) / "events").exists()


def test_full_refresh_pulls_from_start_again(tmp_path):
    events = _history(8)
    with FakePostHog(api_key=KEY, project_id=PROJECT, events=events) as fake:
        config = _config(fake)
        pull(posthog_source(config), tmp_path)
        _ingest(tmp_path)
        answered = len(fake.queries)
        pull(posthog_source(config), tmp_path, full_refresh=True)
        refreshed = fake.queries[answered:]

    assert refreshed[0].values["window_start"] == "2025-01-01T00:00:00+00:00"
    assert set(refreshed[0].values) == {"window_start", "window_end"}
    assert [q.rows for q in refreshed] == [5, 3]
    result, rows = _ingest(tmp_path)
    assert rows == _expected(events)
    assert (result.mode, result.rows_read, result.rows_loaded, result.exact_duplicates_dropped) == ("full", 8, 8, 0)


def test_excluded_events_are_not_pulled_and_the_page_size_is_clamped_to_posthogs_limit(tmp_path):
    kept = _history(6)
    noise = [_event(60 + n, BASE + timedelta(minutes=n), name=name) for n, name in enumerate(["$autocapture", "$$x"])]
    with FakePostHog(api_key=KEY, project_id=PROJECT, events=[*kept, *noise]) as fake:
        config = _config(fake, page_size=200_000, excluded_events=("$autocapture", "$$x"))
        pull(posthog_source(config), tmp_path)
        (query,) = fake.queries

    assert query.hogql.endswith(f"LIMIT {MAX_QUERY_ROWS}")
    assert query.values["excluded_0"] == "$autocapture" and "$autocapture" not in query.hogql
    _, rows = _ingest(tmp_path)
    assert rows == _expected(kept)


def test_an_event_from_a_clock_ahead_does_not_carry_the_cursor_past_events_still_to_come(tmp_path, caplog):
    """An event timestamped 5 hours ahead (a client's clock) waits outside the window until its time has passed;
    events that arrive meanwhile with the right time are still pulled by the next pull."""
    now = datetime.now(UTC)
    ahead, before = _event(900, now + timedelta(hours=5)), _event(901, now - timedelta(hours=1))
    with FakePostHog(KEY, PROJECT, [ahead, before]) as fake:
        pull(posthog_source(_config(fake, start=(now - timedelta(days=1)).isoformat())), tmp_path)
        _, rows = _ingest(tmp_path)
        assert [r[0] for r in rows] == [before["uuid"]]
        arrived = [_event(902, now + timedelta(seconds=1)), _event(903, now + timedelta(seconds=2))]
        fake.add(arrived)
        time.sleep(2.5)  # their times have passed when the next pull starts
        pull(posthog_source(_config(fake)), tmp_path)
        _, rows = _ingest(tmp_path)
    assert [r[0] for r in rows] == [before["uuid"], arrived[0]["uuid"], arrived[1]["uuid"]]


def test_a_pull_stops_after_max_pages_commits_and_the_next_continues(tmp_path, caplog):
    """A long history is pulled over several pulls: each stops after `max_pages`, commits what it landed and says
    so; the next continues after it; together they load every event once."""
    events = _history(23)
    with FakePostHog(KEY, PROJECT, events) as fake:
        with caplog.at_level(logging.WARNING, logger="beton_pipeline.sources.connectors.posthog"):
            pull(posthog_source(_config(fake, max_pages=2)), tmp_path)
        assert [q.rows for q in fake.queries] == [5, 5]
        assert "2 pages (10 events) pulled, sources.posthog.max_pages" in caplog.text
        _, rows = _ingest(tmp_path)
        assert len(rows) == 10
        pull(posthog_source(_config(fake, max_pages=2, overlap_minutes=0)), tmp_path)
        pull(posthog_source(_config(fake, max_pages=2, overlap_minutes=0)), tmp_path)
        _, rows = _ingest(tmp_path)
    assert rows == _expected(events)


def test_dlts_working_folder_can_be_deleted_the_cursor_comes_back_from_the_landing(tmp_path):
    """RUNBOOK: `.dlt/` under the landing folder is safe to delete; the next pull restores its cursor from what
    was landed and asks only from the cursor minus the overlap, not from `start`."""
    import shutil

    events = _history(23)
    with FakePostHog(KEY, PROJECT, events) as fake:
        pull(posthog_source(_config(fake)), tmp_path)
        shutil.rmtree(tmp_path / ".dlt")
        asked = len(fake.queries)
        pull(posthog_source(_config(fake)), tmp_path)
        assert fake.queries[asked].values["window_start"] != "2025-01-01T00:00:00+00:00"
        _, rows = _ingest(tmp_path)
    assert rows == _expected(events)
