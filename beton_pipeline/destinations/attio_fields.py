"""Attio: list an object's attributes and create the ones beton writes (`beton destinations attio fields`).

Attio's REST API (v2), with a bearer key:

* ``GET {base}/v2/objects/{object}/attributes?limit=&offset=&show_archived=true`` answers ``{"data": [...]}``,
  each attribute with ``id.attribute_id``, ``title``, ``api_slug``, ``type``, ``is_archived``, ``is_writable``,
  ``is_system_attribute``, ``is_multiselect``, ``config``…, in the order the UI sorts them. Scope
  ``object_configuration:read``. We page with ``limit``/``offset`` until a page comes back shorter than the
  limit (at most :data:`MAX_PAGES` pages), and ask for archived attributes too: an archived attribute still
  holds its slug, so the matching must see it.
* ``POST {base}/v2/objects/{object}/attributes`` with ``{"data": {"title", "description", "api_slug", "type",
  "is_required", "is_unique", "is_multiselect", "config"}}`` creates one and answers ``{"data": <attribute>}``;
  a slug already taken answers 409 ``slug_conflict``. Scope ``object_configuration:read-write``.

One attempt per call (the command is interactive: it says what failed and the user runs it again). Every
failure is an :class:`AttioFieldsError` whose text is a short paragraph with the key redacted.
"""

from __future__ import annotations

import json
from urllib.parse import quote, urlencode

from beton_pipeline.core.crm_fields import FieldProposal
from beton_pipeline.destinations.attio import API_KEY_ENV, BASE_URL_ENV
from beton_pipeline.destinations.http import REDACTED, HttpResponse, http_request, redact

READ_SCOPE = "object_configuration:read"
WRITE_SCOPE = "object_configuration:read-write"
PAGE_SIZE = 100
MAX_PAGES = 100
"""A bound on the pages read (10,000 attributes at PAGE_SIZE); an object with more is an error, not a loop."""


class AttioFieldsError(Exception):
    """Listing or creating attributes failed; the message is a short paragraph for the user (no key in it)."""


class AttioAttributes:
    """Attio's attribute endpoints for one key and base URL."""

    def __init__(self, api_key: str, base_url: str, timeout_seconds: float = 10.0):
        if not api_key:
            raise AttioFieldsError(
                f"{API_KEY_ENV} is not set: export an Attio access token with the scopes {WRITE_SCOPE}"
            )
        self._api_key = api_key
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout_seconds

    def _url(self, object_slug: str, query: dict | None = None) -> str:
        url = f"{self._base_url}/v2/objects/{quote(object_slug, safe='')}/attributes"
        return f"{url}?{urlencode(query)}" if query else url

    def _call(self, method: str, url: str, body: dict | None = None) -> HttpResponse:
        return http_request(
            method,
            url,
            headers={
                "Authorization": f"Bearer {self._api_key}",
                "Accept": "application/json",
                **({"Content-Type": "application/json"} if body is not None else {}),
            },
            body=json.dumps(body).encode() if body is not None else None,
            timeout=self._timeout,
        )

    def _error(self, response: HttpResponse, doing: str, scope: str, object_slug: str) -> AttioFieldsError:
        """The paragraph for a failed call: no answer, a refused key, a missing scope, no such object, other."""
        if response.status is None:
            text = (
                f"Attio at {self._base_url} did not answer while {doing} ({response.error}); check {BASE_URL_ENV} "
                "(unset means https://api.attio.com) and the network, then run the command again."
            )
        elif response.status == 401:
            text = (
                f"Attio refused the key in {API_KEY_ENV} (HTTP 401) while {doing}: it is wrong, revoked or expired. "
                f"Create an access token in Attio (Workspace settings → Developers) with the scopes {READ_SCOPE} "
                f"and {WRITE_SCOPE}, and export it as {API_KEY_ENV}."
            )
        elif response.status == 403:
            text = (
                f"The key in {API_KEY_ENV} lacks a permission (HTTP 403) while {doing}: this needs the scope "
                f"{scope}. Give its token that scope in Attio (Workspace settings → Developers) and run again."
            )
        elif response.status == 404:
            text = (
                f"Attio has no object {object_slug!r} (HTTP 404 while {doing}); pass --object with the object's "
                "slug (companies for accounts)."
            )
        else:
            answer = response.json()
            said = redact(str(answer.get("message") or answer.get("code") or ""), [self._api_key])
            text = f"Attio answered HTTP {response.status} while {doing}" + (f": {said}" if said else "") + "."
            if response.status == 429:
                text += " It limits request rates; run the command again in a minute."
        return AttioFieldsError(text.replace(self._api_key, REDACTED))

    def list(self, object_slug: str, page_size: int = PAGE_SIZE) -> list[dict]:
        """Every attribute of ``object_slug``, archived ones included, in Attio's order."""
        attributes: list[dict] = []
        for page in range(MAX_PAGES):
            query = {"limit": page_size, "offset": page * page_size, "show_archived": "true"}
            response = self._call("GET", self._url(object_slug, query))
            if response.status != 200:
                raise self._error(response, f"listing the attributes of {object_slug}", READ_SCOPE, object_slug)
            data = response.json().get("data")
            if not isinstance(data, list):
                raise AttioFieldsError(
                    f"Attio answered the attribute list of {object_slug} without a `data` array; is {BASE_URL_ENV} "
                    "Attio's API?"
                )
            attributes += [a for a in data if isinstance(a, dict)]
            if len(data) < page_size:
                return attributes
        raise AttioFieldsError(
            f"{object_slug} has more than {MAX_PAGES * page_size:,} attributes (or Attio ignored the offset); "
            "beton stopped reading them."
        )

    def create(self, object_slug: str, proposal: FieldProposal, description: str) -> dict:
        """Create the attribute a ``create`` proposal names (single-valued, optional, not unique); its answer."""
        body = {
            "data": {
                "title": proposal.title,
                "description": description,
                "api_slug": proposal.api_slug,
                "type": proposal.value_type,
                "is_required": False,
                "is_unique": False,
                "is_multiselect": False,
                "config": {},
            }
        }
        response = self._call("POST", self._url(object_slug), body)
        doing = f"creating {proposal.api_slug} on {object_slug}"
        if response.status == 409:
            raise AttioFieldsError(
                f"Attio refused to create {proposal.api_slug} on {object_slug}: the slug is taken (HTTP 409). "
                "Someone may have created it meanwhile; run the command again to match it."
            )
        if response.status != 200:
            raise self._error(response, doing, WRITE_SCOPE, object_slug)
        data = response.json().get("data")
        return data if isinstance(data, dict) else {}
