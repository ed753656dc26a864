"""Webhooks: a JSON POST signed with HMAC-SHA256, the way Stripe signs its webhooks.

Signature (header ``Beton-Signature: t=<unix seconds>,v1=<hex>``)::

    v1 = hex(HMAC_SHA256(key = secret, message = f"{t}.{raw request body}"))

A receiver recomputes ``v1`` from the raw body and the ``t`` in the header, compares in constant time
and rejects a ``t`` older than its tolerance (replay protection); :func:`verify_signature` does
exactly that. Every request also carries ``Idempotency-Key`` (the outbox key), so a receiver can drop
the rare duplicate a crash between sending and recording could cause.

Each webhook has a name in beton.yaml; its secret comes from ``BETON_WEBHOOK_SECRET_<NAME>``
(:func:`secret_env_var`). URLs must be http(s), and with an allowlist only listed hosts are allowed
(``core.playbooks.check_url``, the URL policy): checked when beton.yaml is read and again before every send.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping

from beton_pipeline.core.playbooks import AccountMatchedEvent, HealthChangedEvent, WebhookURLError, check_url
from beton_pipeline.destinations.http import DeliveryResult, http_request, redact, result_from_response

SIGNATURE_HEADER = "Beton-Signature"
DEFAULT_TOLERANCE_SECONDS = 300


def secret_env_var(name: str) -> str:
    """``BETON_WEBHOOK_SECRET_<NAME>``: the name upper-cased, every non-alphanumeric run → ``_``."""
    return "BETON_WEBHOOK_SECRET_" + re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_")


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The header value ``t=<timestamp>,v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(
    secret: str,
    header: str | None,
    body: bytes,
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """For receivers: whether ``header`` is a valid signature of ``body`` no older than the tolerance."""
    if not header:
        return False
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        fields.setdefault(key, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_seconds:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return any(hmac.compare_digest(expected, candidate) for candidate in fields.get("v1", []))


def _event_payload(event: AccountMatchedEvent | HealthChangedEvent, event_type: str, body: Mapping) -> dict:
    """The stored payload of a webhook action: its name, its URL and the event (what is POSTed)."""
    header = {
        "type": event_type,
        "idempotency_key": event.idempotency_key,
        "playbook": event.playbook,
        "day": event.day.isoformat(),
    }
    return {"webhook": event.webhook, "url": event.url, "event": {**header, **body}}


def account_matched_payload(event: AccountMatchedEvent) -> dict:
    """An account playbook's ``playbook.matched`` event: the account, its score and top contributions."""
    account = event.account
    return _event_payload(
        event,
        "playbook.matched",
        {
            "account": {
                "account_id": account.account_id,
                "company_name": account.company_name,
                "domain": account.domain,
                "is_crm_company": account.is_crm_company,
                "crm_url": account.crm_url or None,
                "app_url": account.app_url,
            },
            "score": account.score,
            "score_rank": account.score_rank,
            "top_contributions": list(account.top_contributions),
        },
    )


def health_changed_payload(event: HealthChangedEvent) -> dict:
    """A health playbook's ``signal.health_changed`` event: the signal, its new and previous health, its lifts."""
    return _event_payload(event, "signal.health_changed", {"signal": dataclasses.asdict(event.change)})


def canonical_body(event: Mapping) -> bytes:
    """The exact bytes sent: compact JSON with sorted keys (so a stored payload re-sends byte-identically)."""
    return json.dumps(event, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")


class WebhookSender:
    """Signs and POSTs prepared events (one attempt per call)."""

    def __init__(
        self,
        secrets: Mapping[str, str],
        allowed_hosts: Iterable[str] = (),
        timeout_seconds: float = 10.0,
        clock: Callable[[], float] = time.time,
    ):
        self._secrets = dict(secrets)
        self._allowed = tuple(allowed_hosts)
        self._timeout = timeout_seconds
        self._clock = clock

    def blocked_reason(self, payload: Mapping) -> str | None:
        """The env var to set when this payload's webhook has no secret (the action then waits), else None."""
        name = payload["webhook"]
        return None if self._secrets.get(name) else secret_env_var(name)

    def send(self, payload: Mapping, idempotency_key: str) -> DeliveryResult:
        """POST ``payload["event"]`` to ``payload["url"]``, signed with the webhook's secret."""
        name, url = payload["webhook"], payload["url"]
        secret = self._secrets.get(name)
        if not secret:
            return DeliveryResult("fail", None, error=f"webhook {name}: no secret ({secret_env_var(name)} is not set)")
        try:
            check_url(url, self._allowed)
        except WebhookURLError as exc:
            return DeliveryResult("fail", None, error=redact(f"webhook {name}: {exc}", self._secrets.values()))
        body = canonical_body(payload["event"])
        response = http_request(
            "POST",
            url,
            headers={
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(secret, int(self._clock()), body),
                "Idempotency-Key": idempotency_key,
            },
            body=body,
            timeout=self._timeout,
        )
        return result_from_response(response, f"webhook {name}", self._secrets.values())
