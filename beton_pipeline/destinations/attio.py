"""Attio: write an attribute on a company record through Attio's REST API (v2).

``PATCH {base_url}/v2/objects/{object}/records/{record_id}`` with a bearer API key and the body
``{"data": {"values": {"<attribute slug>": <value>}}}``: Attio's "update a record" endpoint, which
changes only the attributes given (and appends to multiselects; PUT would overwrite them). An update
is idempotent, so a retried PATCH after a lost response cannot double-count anything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from urllib.parse import quote

from beton_pipeline.core.playbooks import AttioRecordUpdate
from beton_pipeline.destinations.http import DeliveryResult, http_request, redact, result_from_response

DEFAULT_BASE_URL = "https://api.attio.com"
API_KEY_ENV = "BETON_ATTIO_API_KEY"
"""The environment variable holding the Attio access token (never read at import)."""
BASE_URL_ENV = "BETON_ATTIO_BASE_URL"
"""Points the Attio clients elsewhere (a local test server); unset means DEFAULT_BASE_URL."""


def record_update(object_slug: str, record_id: str, values: Mapping[str, object]) -> dict:
    """The stored payload of one record update (what the sender PATCHes)."""
    return {"object": object_slug, "record_id": record_id, "values": dict(values)}


def update_payload(update: AttioRecordUpdate) -> dict:
    """The stored payload of a playbook's Attio action."""
    return record_update(update.object, update.record_id, {update.attribute: update.value})


def record_url(base_url: str, object_slug: str, record_id: str) -> str:
    """``{base}/v2/objects/{object}/records/{record_id}`` with both path parts percent-encoded."""
    return f"{base_url.rstrip('/')}/v2/objects/{quote(object_slug, safe='')}/records/{quote(record_id, safe='')}"


class AttioSender:
    """PATCHes record attributes (one attempt per call)."""

    def __init__(self, api_key: str, base_url: str = DEFAULT_BASE_URL, timeout_seconds: float = 10.0):
        if not api_key:
            raise ValueError("the Attio API key is empty (BETON_ATTIO_API_KEY)")
        self._api_key = api_key
        self._base_url = base_url
        self._timeout = timeout_seconds

    def send(self, payload: Mapping, idempotency_key: str) -> DeliveryResult:
        """PATCH the record; 2xx → sent, 408/409/429/5xx/network → retry, other 4xx → fail."""
        body = json.dumps({"data": {"values": payload["values"]}}, separators=(",", ":")).encode()
        response = http_request(
            "PATCH",
            record_url(self._base_url, payload["object"], payload["record_id"]),
            headers={
                "Authorization": f"Bearer {self._api_key}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
            body=body,
            timeout=self._timeout,
        )
        result = result_from_response(response, "attio update record", [self._api_key])
        if result.outcome == "sent":
            record = response.json().get("data", {}).get("id", {})
            return DeliveryResult(
                "sent", response.status, response_id=record.get("record_id") if isinstance(record, dict) else None
            )
        return DeliveryResult(
            result.outcome, result.status_code, result.retry_after, redact(result.error, [self._api_key])
        )
