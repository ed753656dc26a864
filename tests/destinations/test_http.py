"""Shared delivery rules: status classification, Retry-After, backoff, redaction."""

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from beton_pipeline.destinations.http import RetryPolicy, classify_status, http_request, parse_retry_after, redact


@pytest.mark.parametrize(
    "status, outcome",
    [
        (200, "sent"),
        (201, "sent"),
        (204, "sent"),
        (None, "retry"),
        (408, "retry"),
        (409, "retry"),
        (429, "retry"),
        (500, "retry"),
        (502, "retry"),
        (503, "retry"),
        (400, "fail"),
        (401, "fail"),
        (403, "fail"),
        (404, "fail"),
        (422, "fail"),
    ],
)
def test_classify_status(status, outcome):
    assert classify_status(status) == outcome


def test_retry_after_seconds_and_http_date():
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("30") == 30.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=90), usegmt=True), now=now) == pytest.approx(90.0)
    assert parse_retry_after(format_datetime(now - timedelta(seconds=90), usegmt=True), now=now) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") == 0.0


def test_backoff_is_exponential_capped_and_honours_retry_after():
    policy = RetryPolicy(max_attempts=6, base_seconds=10, max_seconds=60)
    assert [policy.wait_seconds(k) for k in range(1, 6)] == [10, 20, 40, 60, 60]
    assert policy.wait_seconds(1, retry_after=3) == 3
    assert policy.wait_seconds(4, retry_after=0) == 0
    assert policy.wait_seconds(1, retry_after=7200) == 60  # a capped Retry-After
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_redact_replaces_every_secret_and_bounds_length():
    text = "token xoxb-123-abc rejected; key sk_live_XYZ; xoxb-123-abc again"
    out = redact(text, ["xoxb-123-abc", "sk_live_XYZ", None, ""])
    assert "xoxb-123-abc" not in out and "sk_live_XYZ" not in out
    assert out.count("[redacted]") == 3
    assert len(redact("x" * 5000, [])) <= 300
    assert redact(None, ["a"]) is None


def test_connection_refused_is_a_response_without_status():
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    response = http_request("POST", f"http://127.0.0.1:{port}/x", body=b"{}", timeout=2)
    assert response.status is None and "connection failed" in response.error
