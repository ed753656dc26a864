"""What every destination shares: one HTTP call, how its outcome is classified, backoff, redaction.

No Dagster import and no retry loop here: a sender makes *one* attempt and returns a
:class:`DeliveryResult`; the outbox (`beton_pipeline/store/outbox.py`) decides whether and when to try
again, and records every attempt. That keeps each attempt visible in `beton.playbook_actions`.

Classification of an HTTP outcome (:func:`classify_status`):

* 2xx → ``sent``;
* 408 (timeout), 409 (Attio's ``concurrent_write_conflict``), 425, 429 (rate limited), 5xx and
  connection errors/timeouts → ``retry``;
* any other status (400, 401, 403, 404, 422, …) → ``fail``: retrying a bad request or a bad
  credential cannot succeed, so the action goes straight to ``dead`` with the reason.
"""

from __future__ import annotations

import email.utils
import json
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

Outcome = Literal["sent", "retry", "fail"]

USER_AGENT = "beton-playbooks/0.1"
REDACTED = "[redacted]"
MAX_ERROR_CHARS = 300
"""Error texts stored in the outbox are cut to this length (after redaction)."""

RETRYABLE_STATUS = frozenset({408, 409, 425, 429})


@dataclass(frozen=True)
class DeliveryResult:
    """The outcome of one delivery attempt.

    Attributes:
        outcome: ``sent``, ``retry`` (a transient failure) or ``fail`` (permanent).
        status_code: the HTTP status, or None when no response arrived (connection error, timeout).
        retry_after: seconds the destination asked us to wait (``Retry-After``), if it said.
        error: a short, redacted description of the failure (None when sent).
        response_id: an identifier the destination returned (Slack's message ``ts``), if any.
    """

    outcome: Outcome
    status_code: int | None = None
    retry_after: float | None = None
    error: str | None = None
    response_id: str | None = None


@dataclass(frozen=True)
class HttpResponse:
    """A response (any status), or ``status is None`` with ``error`` when the request never completed."""

    status: int | None
    headers: Mapping[str, str]
    body: bytes
    error: str | None = None

    def json(self) -> dict:
        """The body parsed as a JSON object ({} when it is not one)."""
        try:
            value = json.loads(self.body.decode("utf-8", errors="replace") or "{}")
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def header(self, name: str) -> str | None:
        """A header value, case-insensitively."""
        lower = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lower:
                return value
        return None


@dataclass(frozen=True)
class RetryPolicy:
    """When to try an action again.

    The wait before attempt ``k + 1`` (after ``k`` failed attempts) is::

        wait = min(max_seconds, Retry-After)                 if the destination sent Retry-After
        wait = min(max_seconds, base_seconds * 2 ** (k - 1)) otherwise

    After ``max_attempts`` failed attempts the action is ``dead`` (the outbox uses each row's own
    ``max_attempts``, its playbook's; this one is the default for a caller without rows). A wait of at most
    ``max_inline_wait_seconds`` is slept inside the run; a longer one is deferred: the action stays
    ``retrying`` with ``next_attempt_at`` and the retry sensor requests a run when it is due.
    """

    max_attempts: int = 6
    base_seconds: float = 10.0
    max_seconds: float = 3600.0
    max_inline_wait_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.base_seconds < 0 or self.max_seconds < 0 or self.max_inline_wait_seconds < 0:
            raise ValueError("backoff seconds must be non-negative")

    def wait_seconds(self, failed_attempts: int, retry_after: float | None = None) -> float:
        """Seconds to wait after ``failed_attempts`` (>= 1) failures; see the class docstring."""
        if retry_after is not None and retry_after >= 0:
            return float(min(self.max_seconds, retry_after))
        return float(min(self.max_seconds, self.base_seconds * 2.0 ** max(0, failed_attempts - 1)))


def classify_status(status: int | None) -> Outcome:
    """``sent`` for 2xx; ``retry`` for no response, 408/409/425/429 and 5xx; ``fail`` otherwise."""
    if status is None:
        return "retry"
    if 200 <= status < 300:
        return "sent"
    if status in RETRYABLE_STATUS or status >= 500:
        return "retry"
    return "fail"


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds (``"30"``) or an HTTP-date (RFC 9110 §10.2.3).

    Returns None when absent or unparseable; never negative.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


def redact(text: str | None, secrets: Iterable[str | None]) -> str | None:
    """``text`` with every non-empty secret replaced by ``[redacted]``, cut to MAX_ERROR_CHARS.

    Secrets shorter than 4 characters are still replaced (a short secret is still a secret); the
    replacement runs longest-first so that a secret containing another is removed whole.
    """
    if text is None:
        return None
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 1] + "…"
    return text


def http_request(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 10.0,
) -> HttpResponse:
    """One HTTP request with a timeout; never raises for HTTP or network failures.

    A non-2xx status is returned as a response (its body read); a connection error or timeout is
    returned with ``status=None`` and a short ``error`` naming the exception type (no URL, no
    headers, so no credential can leak through it). Redirects are not followed for non-GET
    methods (urllib's default), so a POST is never silently replayed elsewhere.
    """
    request = urllib.request.Request(url, data=body, method=method)
    request.add_header("User-Agent", USER_AGENT)
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (scheme checked by callers)
            return HttpResponse(response.status, dict(response.headers.items()), response.read())
    except urllib.error.HTTPError as exc:
        try:
            payload = exc.read()
        except OSError:
            payload = b""
        return HttpResponse(exc.code, dict(exc.headers.items()) if exc.headers else {}, payload)
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return HttpResponse(None, {}, b"", error=f"connection failed: {type(reason).__name__}")


def result_from_response(
    response: HttpResponse, destination: str, secrets: Iterable[str | None] = ()
) -> DeliveryResult:
    """A :class:`DeliveryResult` from an HTTP response, with a redacted, short error text."""
    outcome = classify_status(response.status)
    if outcome == "sent":
        return DeliveryResult("sent", response.status)
    if response.status is None:
        error = f"{destination}: {response.error or 'no response'}"
    else:
        detail = response.json()
        message = detail.get("message") or detail.get("error") or detail.get("code") or ""
        error = f"{destination}: HTTP {response.status}" + (f" ({message})" if message else "")
    return DeliveryResult(
        outcome,
        response.status,
        retry_after=parse_retry_after(response.header("Retry-After")) if response.status else None,
        error=redact(error, secrets),
    )
