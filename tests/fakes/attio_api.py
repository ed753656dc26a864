"""Attio's REST API (v2) as the Attio connector reads it: company, person and deal records, and a deal's stage
history; and the object attributes `beton destinations attio fields` lists and creates.

A real HTTP server on 127.0.0.1 (`FakeServer`) that holds records as Attio stores them: every attribute a list of
value objects (`active_from`, `active_until`, `created_by_actor`, `attribute_type` and the type's own fields), a
changed attribute keeping its old value with `active_until` set. It answers

* `POST /v2/objects/{object}/records/query` with `{"limit", "offset"}` over its records in insertion order, each
  record with its current values only (the record endpoints show current values; history is asked per attribute);
* `GET /v2/objects/{object}/records/{record_id}/attributes/{attribute}/values` with `show_historic=true` (every
  value, oldest first) or without (current values only), and `limit` / `offset`;
* `GET /v2/objects/{object}/attributes` with `limit` / `offset` (no limit: all) and `show_archived` (archived
  attributes only when `true`), each attribute in Attio's shape (`id.attribute_id`, `title`, `description`,
  `api_slug`, `type`, `is_system_attribute`, `is_writable`, `is_required`, `is_unique`, `is_multiselect`,
  `is_default_value_enabled`, `is_archived`, `default_value`, `relationship`, `created_at`, `config`), the object's
  standard attributes first; scope `object_configuration:read` (`identity["scope"]`), else 403;
* `POST /v2/objects/{object}/attributes` with `{"data": {title, description, api_slug, type, is_required,
  is_unique, is_multiselect, config}}` (every key required, as Attio's schema has them): 200 with the new
  attribute; 400 `validation_type` for a missing key or an unknown type; 409 `slug_conflict` when an attribute
  (archived ones included) has the slug; scope `object_configuration:read-write`, else 403;

with a bearer key, and Attio's error JSON (`status_code`, `type`, `code`, `message`) on a refusal. Besides the
queue of `fail_next`, `fail_when` fails only the requests a predicate picks (one object's second page, say).

    with FakeAttioRecords("attio-key") as attio:
        attio.add_attribute("companies", "lead_score", "Lead score", "text")
        attio.add_company("c1", "Acme", ["acme.io"], created_at="2025-01-05T10:00:00.000000000Z")
        attio.add_deal("d1", "Acme pilot", "c1", [("Lead", "2025-02-01T09:00:00.000000000Z")], ...)
        attio.move_deal("d1", "Won 🎉", "2025-03-01T09:00:00.000000000Z")
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from tests.fakes import FakeServer, Recorded

WORKSPACE_ID = "14beef7a-99f7-4534-a87e-70b564330a4c"
OBJECT_IDS = {
    "companies": "97052eb9-e65e-443f-a297-f2d9a4a7f795",
    "people": "5e1a6a7c-0b3d-4f0e-9a51-9f1a4b0f3c2d",
    "deals": "c6b7e0d2-8a41-4b7e-b0f3-6f7b1d9e2a10",
}
SINGULAR = {"companies": "company", "people": "person", "deals": "deal"}
STAGE_ATTRIBUTE_ID = "a4977b52-d367-4e28-a671-b5c4fa401fc5"
SYSTEM = {"type": "system", "id": None}
ATTRIBUTE_TYPES = (
    "text",
    "number",
    "checkbox",
    "currency",
    "date",
    "timestamp",
    "rating",
    "status",
    "select",
    "record-reference",
    "actor-reference",
    "location",
    "domain",
    "email-address",
    "phone-number",
)
"""The types `POST …/attributes` accepts (Attio's create schema)."""
CREATE_ATTRIBUTE_KEYS = (
    "title",
    "description",
    "api_slug",
    "type",
    "is_required",
    "is_unique",
    "is_multiselect",
    "config",
)
STANDARD_ATTRIBUTES = {
    "companies": (  # slug, title, type, writable, multiselect
        ("record_id", "Record ID", "text", False, False),
        ("name", "Name", "text", True, False),
        ("domains", "Domains", "domain", True, True),
        ("description", "Description", "text", True, False),
        ("team", "Team", "record-reference", True, True),
        ("categories", "Categories", "select", True, True),
        ("primary_location", "Primary location", "location", True, False),
        ("employee_range", "Employee range", "select", True, False),
        ("created_at", "Created at", "timestamp", False, False),
        ("created_by", "Created by", "actor-reference", False, False),
    ),
    "people": (
        ("record_id", "Record ID", "text", False, False),
        ("name", "Name", "personal-name", True, False),
        ("email_addresses", "Email addresses", "email-address", True, True),
        ("company", "Company", "record-reference", True, False),
        ("job_title", "Job title", "text", True, False),
        ("created_at", "Created at", "timestamp", False, False),
    ),
    "deals": (
        ("record_id", "Record ID", "text", False, False),
        ("name", "Deal name", "text", True, False),
        ("stage", "Deal stage", "status", True, False),
        ("value", "Deal value", "currency", True, False),
        ("associated_company", "Associated company", "record-reference", True, False),
        ("created_at", "Created at", "timestamp", False, False),
    ),
}
"""The standard (system) attributes each object starts with, in the UI's order."""


def _id(*parts: str) -> str:
    """A stable UUID for a name (status, option and member ids)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(parts)))


def member(name: str) -> dict:
    """A workspace member as an actor (`created_by_actor`, an owner)."""
    return {"type": "workspace-member", "id": _id("member", name)}


ALICE = member("alice")


def value(attribute_type: str, active_from: str, *, active_until: str | None = None, actor=ALICE, **fields) -> dict:
    """One Attio value object."""
    return {
        "active_from": active_from,
        "active_until": active_until,
        "created_by_actor": actor,
        **fields,
        "attribute_type": attribute_type,
    }


def _select(object_slug: str, slug: str, title: str, at: str) -> dict:
    option = {
        "id": {
            "workspace_id": WORKSPACE_ID,
            "object_id": OBJECT_IDS[object_slug],
            "attribute_id": _id("attribute", object_slug, slug),
            "option_id": _id("option", object_slug, slug, title),
        },
        "title": title,
        "is_archived": False,
    }
    return value("select", at, option=option)


def _status(title: str, at: str) -> dict:
    status = {
        "id": {
            "workspace_id": WORKSPACE_ID,
            "object_id": OBJECT_IDS["deals"],
            "attribute_id": STAGE_ATTRIBUTE_ID,
            "status_id": _id("status", title),
        },
        "title": title,
        "is_archived": False,
        "target_time_in_status": None,
        "celebration_enabled": title.lower().startswith("won"),
    }
    return value("status", at, status=status)


def _reference(target_object: str, record_id: str | None, at: str) -> list[dict]:
    if record_id is None:
        return []
    return [value("record-reference", at, target_object=target_object, target_record_id=record_id)]


def _email(address: str, at: str) -> dict:
    local, _, domain = address.partition("@")
    return value(
        "email-address",
        at,
        original_email_address=address,
        email_address=address.lower(),
        email_domain=domain.lower(),
        email_root_domain=".".join(domain.lower().split(".")[-2:]),
        email_local_specifier=local.lower(),
    )


def _error(status: int, type_: str, code: str, message: str) -> tuple[int, dict, dict, float]:
    return status, {"status_code": status, "type": type_, "code": code, "message": message}, {}, 0.0


@dataclass
class _Targeted:
    match: Callable[[Recorded], bool]
    status: int
    times: int
    headers: dict[str, str]
    body: dict | None


class FakeAttioRecords(FakeServer):
    """Attio's record and attribute-value reads over companies, people and deals (see the module docstring)."""

    def __init__(self, api_key: str = "attio-test-key") -> None:
        super().__init__()
        self.api_key = api_key
        self.records: dict[str, list[dict]] = {slug: [] for slug in OBJECT_IDS}
        self.identity = {
            "active": True,
            "scope": "record_permission:read object_configuration:read user_management:read",
            "client_id": _id("client", "beton"),
            "token_type": "Bearer",
            "exp": None,
            "iat": 1_760_000_000,
            "sub": WORKSPACE_ID,
            "aud": _id("client", "beton"),
            "iss": "attio.com",
            "authorized_by_workspace_member_id": ALICE["id"],
            "workspace_id": WORKSPACE_ID,
            "workspace_name": "Beton Test",
            "workspace_slug": "beton-test",
            "workspace_logo_url": None,
        }
        """What `GET /v2/self` answers (Attio's token identity); tests change `scope` or `active`."""
        self.attributes: dict[str, list[dict]] = {
            slug: [
                self._attribute(slug, a, t, y, writable=w, multiselect=m, system=True)
                for a, t, y, w, m in STANDARD_ATTRIBUTES[slug]
            ]
            for slug in OBJECT_IDS
        }
        """Each object's attributes in Attio's shape, in the order listed; tests add their own (`add_attribute`)."""
        self._targeted: list[_Targeted] = []
        self.offset_shift: int | None = 0
        """Answer a query at offset k > 0 from k + `offset_shift` (-1: a deletion during the pull shifted the
        records back); None: ignore the offset (every page is the first)."""

    # -- the workspace --------------------------------------------------------------------------------------
    def _record(self, object_slug: str, record_id: str, created_at: str, values: dict) -> dict:
        record = {
            "id": {"workspace_id": WORKSPACE_ID, "object_id": OBJECT_IDS[object_slug], "record_id": record_id},
            "created_at": created_at,
            "web_url": f"https://app.attio.com/beton/{SINGULAR[object_slug]}/{record_id}",
            "values": {
                **values,
                "created_at": [value("timestamp", created_at, actor=SYSTEM, value=created_at)],
                "created_by": [
                    value(
                        "actor-reference",
                        created_at,
                        referenced_actor_type="workspace-member",
                        referenced_actor_id=ALICE["id"],
                    )
                ],
            },
        }
        with self.lock:
            self.records[object_slug].append(record)
        return record

    def add_company(
        self,
        record_id: str,
        name: str,
        domains: Sequence[str] = (),
        *,
        created_at: str,
        categories: Sequence[str] = (),
        employee_range: str | None = None,
        employee_count: int | None = None,
        former_names: Sequence[tuple[str, str]] = (),
    ) -> dict:
        """A company; `employee_count` adds the workspace's own number attribute of that slug. `former_names`:
        (name, until) pairs, oldest first, kept as historic values of `name`."""
        names, since = [], created_at
        for old, until in former_names:
            names.append(value("text", since, active_until=until, value=old))
            since = until
        names.append(value("text", since, value=name))
        values = {
            "name": names,
            "domains": [value("domain", created_at, domain=d, root_domain=d.lower()) for d in domains],
            "description": [],
            "categories": [_select("companies", "categories", c, created_at) for c in categories],
            "employee_range": [_select("companies", "employee_range", employee_range, created_at)]
            if employee_range
            else [],
            "primary_location": [],
            "team": [],
        }
        if employee_count is not None:
            values["employee_count"] = [value("number", created_at, value=employee_count)]
        return self._record("companies", record_id, created_at, values)

    def add_person(
        self, record_id: str, emails: Sequence[str], company: str | None, *, created_at: str, name: str = "Ada Test"
    ) -> dict:
        """A person with e-mail addresses (the first is the primary one) and a company (or none)."""
        first, _, last = name.partition(" ")
        values = {
            "name": [value("personal-name", created_at, first_name=first, last_name=last, full_name=name)],
            "email_addresses": [_email(e, created_at) for e in emails],
            "company": _reference("companies", company, created_at),
            "job_title": [],
        }
        return self._record("people", record_id, created_at, values)

    def add_deal(
        self,
        record_id: str,
        name: str,
        company: str | None,
        stages: Sequence[tuple[str, str]],
        *,
        created_at: str,
        amount: float,
        currency: str = "USD",
        owner: dict = ALICE,
    ) -> dict:
        """A deal that went through `stages` ((title, when), oldest first); the last one is its current stage."""
        values = {
            "name": [value("text", created_at, value=name)],
            "stage": [],
            "owner": [
                value(
                    "actor-reference",
                    created_at,
                    referenced_actor_type=owner["type"],
                    referenced_actor_id=owner["id"],
                )
            ],
            "value": [value("currency", created_at, currency_value=amount, currency_code=currency)],
            "associated_company": _reference("companies", company, created_at),
            "associated_people": [],
        }
        record = self._record("deals", record_id, created_at, values)
        for title, at in stages:
            self.move_deal(record_id, title, at)
        return record

    def move_deal(self, record_id: str, stage: str, at: str) -> None:
        """Move a deal to `stage` at `at`: its current stage value ends then, and the new one begins."""
        with self.lock:
            (record,) = [r for r in self.records["deals"] if r["id"]["record_id"] == record_id]
            for old in record["values"]["stage"]:
                if old["active_until"] is None:
                    old["active_until"] = at
            record["values"]["stage"].append(_status(stage, at))

    def _attribute(
        self,
        object_slug: str,
        api_slug: str,
        title: str,
        type_: str,
        *,
        description: str | None = None,
        writable: bool = True,
        multiselect: bool = False,
        system: bool = False,
        archived: bool = False,
        unique: bool = False,
        required: bool = False,
    ) -> dict:
        ident = {
            "workspace_id": WORKSPACE_ID,
            "object_id": OBJECT_IDS[object_slug],
            "attribute_id": _id("attribute", object_slug, api_slug),
        }
        return {
            "id": ident,
            "title": title,
            "description": description,
            "api_slug": api_slug,
            "type": type_,
            "is_system_attribute": system,
            "is_writable": writable,
            "is_required": required,
            "is_unique": unique or api_slug == "record_id",
            "is_multiselect": multiselect,
            "is_default_value_enabled": False,
            "is_archived": archived,
            "default_value": None,
            "relationship": None,
            "created_at": "2025-01-01T00:00:00.000000000Z",
            "config": {
                "currency": {"default_currency_code": None, "display_type": None},
                "record_reference": {"allowed_object_ids": None},
            },
        }

    def add_attribute(self, object_slug: str, api_slug: str, title: str, type_: str, **flags) -> dict:
        """A workspace attribute (flags: `writable`, `multiselect`, `system`, `archived`, `description`)."""
        attribute = self._attribute(object_slug, api_slug, title, type_, **flags)
        with self.lock:
            self.attributes[object_slug].append(attribute)
        return attribute

    def attribute(self, object_slug: str, api_slug: str) -> dict | None:
        """The attribute of that slug, if the object has one."""
        with self.lock:
            return next((a for a in self.attributes[object_slug] if a["api_slug"] == api_slug), None)

    # -- failures ------------------------------------------------------------------------------------------
    def fail_when(
        self,
        match: Callable[[Recorded], bool],
        status: int,
        *,
        times: int = 1,
        retry_after: str | None = None,
        body: dict | None = None,
    ) -> None:
        """Answer the next `times` requests that `match` picks with `status` (5xx: an HTML error page)."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        with self.lock:
            self._targeted.append(_Targeted(match, status, times, headers, body))

    def respond(self, rec: Recorded):
        with self.lock:
            hit = next((t for t in self._targeted if t.times > 0 and t.match(rec)), None)
            if hit is not None:
                hit.times -= 1
        if hit is None:
            return super().respond(rec)
        body = b"<html>upstream error</html>" if hit.status >= 500 else (hit.body or {"error": "scripted"})
        return hit.status, body, hit.headers, 0.0

    # -- answers -------------------------------------------------------------------------------------------
    def handle_ok(self, rec: Recorded):
        if rec.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "auth_error", "unauthorized", "The access token is invalid or has been revoked.")
        url = urlsplit(rec.path)
        parts = url.path.strip("/").split("/")
        if rec.method == "GET" and parts == ["v2", "self"]:  # the key's identity (`beton check --sources`)
            return 200, self.identity, {}, 0.0
        if len(parts) == 4 and parts[:2] == ["v2", "objects"] and parts[3] == "attributes":
            return self._attributes(rec, parts[2], parse_qs(url.query))
        if len(parts) < 4 or parts[:2] != ["v2", "objects"] or parts[3] != "records":
            return _error(404, "invalid_request_error", "not_found", f"No route for {rec.method} {url.path}.")
        object_slug = parts[2]
        if object_slug not in self.records:
            return _error(404, "invalid_request_error", "not_found", f'Object with slug/ID "{object_slug}" not found.')
        if rec.method == "POST" and parts[4:] == ["query"]:
            return self._query(object_slug, rec)
        if rec.method == "GET" and len(parts) == 8 and parts[5] == "attributes" and parts[7] == "values":
            return self._values(object_slug, parts[4], parts[6], parse_qs(url.query))
        return _error(404, "invalid_request_error", "not_found", f"No route for {rec.method} {url.path}.")

    def _attributes(self, rec: Recorded, object_slug: str, query: dict[str, list[str]]):
        if object_slug not in self.attributes:
            return _error(404, "invalid_request_error", "not_found", f'Object with slug/ID "{object_slug}" not found.')
        scopes = str(self.identity.get("scope", "")).split()
        needed = "object_configuration:read" if rec.method == "GET" else "object_configuration:read-write"
        if needed not in scopes:
            return _error(403, "auth_error", "forbidden", f"The access token lacks the scope {needed}.")
        if rec.method == "GET":
            with self.lock:
                listed = list(self.attributes[object_slug])
            if query.get("show_archived", ["false"])[0] != "true":
                listed = [a for a in listed if not a["is_archived"]]
            offset = int(query.get("offset", ["0"])[0])
            limit = int(query.get("limit", [str(len(listed) or 1)])[0])
            return 200, {"data": listed[offset : offset + limit]}, {}, 0.0
        if rec.method != "POST":
            return _error(404, "invalid_request_error", "not_found", f"No route for {rec.method} {rec.path}.")
        data = rec.json().get("data")
        if not isinstance(data, dict) or any(k not in data for k in CREATE_ATTRIBUTE_KEYS):
            return _error(400, "invalid_request_error", "validation_type", "Body payload validation error.")
        if data["type"] not in ATTRIBUTE_TYPES:
            return _error(400, "invalid_request_error", "validation_type", f'Unknown attribute type "{data["type"]}".')
        if self.attribute(object_slug, data["api_slug"]) is not None:
            return _error(
                409, "invalid_request_error", "slug_conflict", f'An attribute with slug "{data["api_slug"]}" exists.'
            )
        created = self.add_attribute(
            object_slug,
            data["api_slug"],
            data["title"],
            data["type"],
            description=data["description"],
            multiselect=data["is_multiselect"],
            unique=data["is_unique"],
            required=data["is_required"],
        )
        return 200, {"data": created}, {}, 0.0

    def _query(self, object_slug: str, rec: Recorded):
        body = rec.json()
        limit, offset = body.get("limit", 500), body.get("offset", 0)
        if not isinstance(limit, int) or not isinstance(offset, int) or limit < 1 or offset < 0:
            return _error(400, "invalid_request_error", "validation_type", "Body payload validation error.")
        sorts = body.get("sorts") or []
        if any(not isinstance(x, dict) or x.get("attribute") != "created_at" for x in sorts):
            return _error(400, "invalid_request_error", "validation_type", "This fake sorts by created_at only.")
        with self.lock:
            records = self.records[object_slug]
            if sorts:  # created_at, ties in the order records were stored (Attio documents no tie-break)
                records = sorted(records, key=lambda r: r["created_at"], reverse=sorts[0].get("direction") == "desc")
            if self.offset_shift is None:
                offset = 0
            elif offset:
                offset = max(0, offset + self.offset_shift)
            page = records[offset : offset + limit]
            data = [{**r, "values": {k: _active(v) for k, v in r["values"].items()}} for r in page]
        return 200, {"data": data}, {}, 0.0

    def _values(self, object_slug: str, record_id: str, attribute: str, query: dict[str, list[str]]):
        with self.lock:
            found = [r for r in self.records[object_slug] if r["id"]["record_id"] == record_id]
            if not found:
                return _error(404, "invalid_request_error", "not_found", f'Record with ID "{record_id}" not found.')
            if attribute not in found[0]["values"]:
                return _error(
                    404, "invalid_request_error", "not_found", f'Attribute with slug/ID "{attribute}" not found.'
                )
            values = list(found[0]["values"][attribute])
        if query.get("show_historic", ["false"])[0] != "true":
            values = _active(values)
        values.sort(key=lambda v: v["active_from"])
        offset = int(query.get("offset", ["0"])[0])
        limit = int(query.get("limit", [str(len(values) or 1)])[0])
        return 200, {"data": values[offset : offset + limit]}, {}, 0.0

    # -- what was asked --------------------------------------------------------------------------------------
    def history_asked(self) -> list[str]:
        """The deals whose stage history was answered, each once (a long history takes several pages), in the
        order first asked."""
        paths = [urlsplit(r.path).path for r in self.successes() if r.method == "GET"]
        deals = [p.split("/")[5] for p in paths if p.endswith("/attributes/stage/values")]
        return list(dict.fromkeys(deals))


def _active(values: list[dict]) -> list[dict]:
    return [v for v in values if v["active_until"] is None]
