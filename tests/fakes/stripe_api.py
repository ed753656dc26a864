"""A fake Stripe API on 127.0.0.1: customers, subscriptions, invoices and the events that changed them.

It answers the endpoints the Stripe connector reads, as Stripe documents them. Four lists:
`GET /v1/customers`, `GET /v1/subscriptions` (`status`: default every status but canceled, `all`, `ended` or
one status), `GET /v1/invoices` and `GET /v1/events` (the last 30 days' only; `created[gt|gte|lt|lte]`, `type`
with a `*` wildcard or `types[]` of up to 20 names, not both). Lists are Stripe's list objects (`object: "list"`,
`data`, `has_more`, `url`), newest first, `limit` 1-100 (default 10), paged with `starting_after=<id of the last
object>`; query parameters in Stripe's bracket syntax (`created[gte]=…`, `types[0]=…`, as the SDK sends them).
Three retrieves: `GET /v1/customers/{id}`, `/v1/subscriptions/{id}`, `/v1/invoices/{id}` answer the object; a
deleted customer answers Stripe's stub (`{"id", "object": "customer", "deleted": true}`), an id the account does
not have (a deleted draft invoice) Stripe's 404 `resource_missing` error JSON.
Requests need `Authorization: Bearer <api_key>`; any other key gets Stripe's 401 error JSON, which here echoes the
key in full (Stripe masks all but its last four characters: echoing it whole makes a leak in our errors visible).

The objects are Stripe's shapes with the fields we do not read as well: subscriptions carry
`items.data[].price.recurring` and `quantity`; an invoice names its subscription either at the top level
(`subscription`, API versions before 2025-03-31.basil) or under `parent.subscription_details.subscription`
(basil and later), as invoices rendered in different API versions do. Every change made through `add`,
`update` or `delete_customer` is also recorded as an event whose `data.object` is the object after the change,
so that the events and the current objects always agree, as in Stripe.

Two switches make it misbehave as the connector must survive: `same_second_oldest_first` lists the events of one
second oldest first (Stripe documents only the order by `created`, in whole seconds, so any order inside a second
is Stripe's right), and `ignore_starting_after` answers every page of a list as if it were the first (an API or
proxy that drops the parameter).

    with FakeStripe(api_key="sk_test_abc") as fake:
        fake.seed_sample(now=int(time.time()))
        ... StripeConfig(api_base=fake.url) ...
        fake.update("subscription", "sub_a", status="canceled", event_type="customer.subscription.deleted")
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
import time
from urllib.parse import parse_qs, unquote, urlsplit

from tests.fakes import FakeServer, Recorded

API_VERSION_BASIL = "2025-03-31.basil"
API_VERSION_OLD = "2024-06-20"
DAY = 86_400
EVENTS_KEPT_SECONDS = 30 * DAY
"""Stripe lists the events of the last 30 days only."""

EVENT_PREFIX = {"customer": "customer", "subscription": "customer.subscription", "invoice": "invoice"}
"""The prefix of the events about each kind of object (`customer.subscription.updated` is a subscription's)."""

LIST_PATHS = {"/v1/customers": "customer", "/v1/subscriptions": "subscription", "/v1/invoices": "invoice"}
"""The list endpoints of the objects; `<path>/<id>` retrieves one."""

RATE_LIMIT_BODY = {
    "error": {
        "code": "rate_limit",
        "doc_url": "https://stripe.com/docs/error-codes/rate-limit",
        "message": "Request rate limit exceeded. Learn more about rate limits here "
        "https://stripe.com/docs/rate-limits.",
        "type": "invalid_request_error",
    }
}


def _error(status: int, message: str, *, param: str | None = None, code: str | None = None):
    """Stripe's error answer: `{"error": {"message", "type", …}}`."""
    body: dict = {"message": message, "type": "invalid_request_error"}
    if param:
        body["param"] = param
    if code:
        body["code"] = code
        body["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
    return status, {"error": body}, {"Request-Id": "req_fake"}, 0.0


def customer(cid: str, email: str | None, created: int, metadata: dict | None = None) -> dict:
    """A Stripe customer object."""
    return {
        "id": cid,
        "object": "customer",
        "address": None,
        "balance": 0,
        "created": created,
        "currency": "usd",
        "default_source": None,
        "delinquent": False,
        "description": None,
        "email": email,
        "invoice_prefix": cid[-8:].upper(),
        "invoice_settings": {"custom_fields": None, "default_payment_method": None, "footer": None},
        "livemode": False,
        "metadata": metadata or {},
        "name": None,
        "phone": None,
        "preferred_locales": [],
        "shipping": None,
        "tax_exempt": "none",
    }


def price(pid: str, unit_amount: int | None, interval: str, interval_count: int = 1, currency: str = "usd") -> dict:
    """A recurring Stripe price (per-unit, licensed)."""
    return {
        "id": pid,
        "object": "price",
        "active": True,
        "billing_scheme": "per_unit",
        "created": 1_600_000_000,
        "currency": currency,
        "livemode": False,
        "lookup_key": None,
        "metadata": {},
        "nickname": None,
        "product": f"prod_{pid[6:]}",
        "recurring": {
            "interval": interval,
            "interval_count": interval_count,
            "meter": None,
            "trial_period_days": None,
            "usage_type": "licensed",
        },
        "tax_behavior": "unspecified",
        "type": "recurring",
        "unit_amount": unit_amount,
        "unit_amount_decimal": None if unit_amount is None else str(unit_amount),
    }


def subscription(
    sid: str,
    customer_id: str | None,
    status: str,
    created: int | str,
    prices: list[tuple[dict, int]],
    *,
    trial_end: int | None = None,
    canceled_at: int | None = None,
) -> dict:
    """A Stripe subscription with one item per (price, quantity); the currency is the first price's."""
    items = [
        {
            "id": f"si_{sid[4:]}_{n}",
            "object": "subscription_item",
            "created": created,
            "current_period_end": None,
            "current_period_start": None,
            "discounts": [],
            "metadata": {},
            "price": p,
            "quantity": quantity,
            "subscription": sid,
            "tax_rates": [],
        }
        for n, (p, quantity) in enumerate(prices)
    ]
    return {
        "id": sid,
        "object": "subscription",
        "billing_cycle_anchor": created,
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": canceled_at,
        "collection_method": "charge_automatically",
        "created": created,
        "currency": prices[0][0]["currency"] if prices else "usd",
        "customer": customer_id,
        "default_payment_method": None,
        "ended_at": canceled_at,
        "items": {
            "object": "list",
            "data": items,
            "has_more": False,
            "total_count": len(items),
            "url": f"/v1/subscription_items?subscription={sid}",
        },
        "latest_invoice": None,
        "livemode": False,
        "metadata": {},
        "start_date": created,
        "status": status,
        "trial_end": trial_end,
        "trial_start": None if trial_end is None else created,
    }


def invoice(
    iid: str,
    customer_id: str,
    subscription_id: str | None,
    status: str,
    amount: int,
    created: int,
    *,
    paid_at: int | None = None,
    currency: str = "usd",
    shape: str = "basil",
) -> dict:
    """A Stripe invoice; `shape` "basil" names the subscription under `parent`, "old" at the top level."""
    obj = {
        "id": iid,
        "object": "invoice",
        "account_country": "US",
        "amount_due": amount,
        "amount_paid": amount if status == "paid" else 0,
        "amount_remaining": 0 if status == "paid" else amount,
        "attempt_count": 1 if status == "paid" else 0,
        "billing_reason": "subscription_cycle" if subscription_id else "manual",
        "collection_method": "charge_automatically",
        "created": created,
        "currency": currency,
        "customer": customer_id,
        "hosted_invoice_url": None,
        "lines": {"object": "list", "data": [], "has_more": False, "url": f"/v1/invoices/{iid}/lines"},
        "livemode": False,
        "metadata": {},
        "number": None,
        "period_end": created,
        "period_start": created,
        "status": status,
        "status_transitions": {
            "finalized_at": None if status == "draft" else created,
            "marked_uncollectible_at": None,
            "paid_at": paid_at,
            "voided_at": None,
        },
        "total": amount,
    }
    if shape == "old":
        obj["subscription"] = subscription_id
    else:
        obj["parent"] = (
            {
                "quote_details": None,
                "subscription_details": {"metadata": {}, "subscription": subscription_id},
                "type": "subscription_details",
            }
            if subscription_id
            else None
        )
    return obj


class FakeStripe(FakeServer):
    """Stripe's list endpoints over objects kept in memory, with the events of every change (module docstring)."""

    def __init__(self, api_key: str = "sk_test_fake_0123456789") -> None:
        super().__init__()
        self.api_key = api_key
        self.objects: dict[str, dict[str, dict]] = {"customer": {}, "subscription": {}, "invoice": {}}
        self.events: list[dict] = []
        self.clock = 0
        """The `created` of the next event (seconds); `add`/`update` take `at=` to set it."""
        self.event_api_version = API_VERSION_BASIL
        self.same_second_oldest_first = False
        """List the events of one second oldest first (module docstring)."""
        self.ignore_starting_after = False
        """Answer every page of a list as the first (module docstring)."""
        self.deleted_customers: set[str] = set()
        self._sequence = itertools.count()
        self._order: dict[str, int] = {}
        self._failures: list[list] = []

    # -- data ---------------------------------------------------------------------------------
    def add(self, kind: str, obj: dict, *, at: int | None = None, event: bool = True) -> dict:
        """Create an object (`kind`: customer, subscription or invoice) and its `<prefix>.created` event."""
        with self.lock:
            self.objects[kind][obj["id"]] = copy.deepcopy(obj)
            self._order[obj["id"]] = next(self._sequence)
        if event:
            self._emit(f"{EVENT_PREFIX[kind]}.created", obj, at)
        return obj

    def update(self, kind: str, oid: str, *, event_type: str | None = None, at: int | None = None, **changes) -> dict:
        """Change top-level fields of an object (dicts are merged one level deep) and record the event."""
        with self.lock:
            obj = self.objects[kind][oid]
            for key, value in changes.items():
                if isinstance(value, dict) and isinstance(obj.get(key), dict):
                    obj[key] = {**obj[key], **value}
                else:
                    obj[key] = value
            snapshot = copy.deepcopy(obj)
        self._emit(event_type or f"{EVENT_PREFIX[kind]}.updated", snapshot, at)
        return snapshot

    def delete_customer(self, cid: str, *, at: int | None = None) -> None:
        """Delete a customer as Stripe does: its live subscriptions are canceled at once, then it is gone."""
        at = self.clock if at is None else at
        for sub in list(self.objects["subscription"].values()):
            if sub["customer"] == cid and sub["status"] not in ("canceled", "incomplete_expired"):
                self.update(
                    "subscription",
                    sub["id"],
                    event_type="customer.subscription.deleted",
                    at=at,
                    status="canceled",
                    canceled_at=at,
                    ended_at=at,
                )
        with self.lock:
            gone = self.objects["customer"].pop(cid)
            self.deleted_customers.add(cid)
        self._emit("customer.deleted", gone, at)

    def delete_invoice(self, iid: str, *, at: int | None = None) -> None:
        """Delete a draft invoice as Stripe does (only drafts can be): `invoice.deleted`, then a 404 for its id."""
        with self.lock:
            gone = self.objects["invoice"][iid]
            if gone["status"] != "draft":
                raise ValueError(f"{iid} is {gone['status']}: Stripe deletes draft invoices only")
            del self.objects["invoice"][iid]
        self._emit("invoice.deleted", gone, at)

    def _emit(self, event_type: str, obj: dict, at: int | None) -> None:
        with self.lock:
            created = self.clock if at is None else at
            self.clock = max(self.clock, created)
            seq = next(self._sequence)
            self.events.append(
                {
                    "id": f"evt_{seq:08d}",
                    "object": "event",
                    "api_version": self.event_api_version,
                    "created": created,
                    "data": {"object": copy.deepcopy(obj), "previous_attributes": {}},
                    "livemode": False,
                    "pending_webhooks": 0,
                    "request": {"id": None, "idempotency_key": None},
                    "type": event_type,
                }
            )
            self._order[self.events[-1]["id"]] = seq

    def current(self, kind: str) -> list[dict]:
        """The objects of `kind` a listing would return now (every status), newest first."""
        with self.lock:
            return self._newest_first(list(self.objects[kind].values()))

    def seed_sample(self, now: int) -> None:
        """A small account: 7 customers; 6 subscriptions (two items, a quarterly plan, a trial, a canceled one, one
        in euros); 8 invoices naming their subscription in either shape. Created over the last 60 days, the last
        changes also as events of the last 14 days (older events are past Stripe's 30 days and gone).

        The trial ends 12 hours from `now`: the ingest quarantines timestamps more than a day ahead."""
        old = now - 60 * DAY
        basic, team = price("price_basic", 4900, "month"), price("price_team", 1500, "month")
        quarterly, yearly = price("price_quarterly", 12000, "month", 3), price("price_yearly", 99000, "year")
        seat_eur = price("price_seat_eur", 900, "month", currency="eur")
        for n, (cid, email, meta) in enumerate(
            [
                ("cus_a", "Ops@Acme.io", {"company_domain": "acme.io"}),
                ("cus_b", "billing@globex.com", {}),
                ("cus_c", "finance@initech.com", {"company_domain": "initech.com", "tier": "smb"}),
                ("cus_d", None, {}),
                ("cus_e", "eve@umbrella.eu", {}),
                ("cus_f", "frank@hooli.com", {}),
                ("cus_g", "lead@piedpiper.com", {}),
            ]
        ):
            self.add("customer", customer(cid, email, old + n * DAY, meta), event=False)
        for sub in [
            subscription("sub_a", "cus_a", "active", old + 10 * DAY, [(basic, 1), (team, 4)]),
            subscription("sub_c", "cus_c", "active", old + 12 * DAY, [(quarterly, 2)]),
            subscription("sub_d", "cus_d", "canceled", old + 13 * DAY, [(basic, 1)], canceled_at=old + 40 * DAY),
            subscription("sub_e", "cus_e", "past_due", old + 14 * DAY, [(seat_eur, 10)]),
            subscription("sub_f", "cus_f", "active", old + 15 * DAY, [(yearly, 1)]),
        ]:
            self.add("subscription", sub, event=False)
        for inv in [
            invoice("in_1", "cus_a", "sub_a", "paid", 10900, old + 10 * DAY, paid_at=old + 10 * DAY + 60, shape="old"),
            invoice("in_2", "cus_c", "sub_c", "paid", 24000, old + 12 * DAY, paid_at=old + 12 * DAY + 90, shape="old"),
            invoice("in_3", "cus_d", "sub_d", "paid", 4900, old + 13 * DAY, paid_at=old + 13 * DAY + 30),
            invoice("in_4", "cus_e", "sub_e", "open", 9000, old + 44 * DAY, currency="eur"),
            invoice("in_5", "cus_f", "sub_f", "paid", 99000, old + 15 * DAY, paid_at=old + 15 * DAY + 10),
            invoice("in_6", "cus_b", None, "draft", 2500, old + 50 * DAY),
        ]:
            self.add("invoice", inv, event=False)
        trial_start = now - 14 * DAY + DAY // 2
        self.add(
            "subscription",
            subscription("sub_b", "cus_b", "trialing", trial_start, [(basic, 1)], trial_end=trial_start + 14 * DAY),
            at=trial_start,
        )
        self.event_api_version = API_VERSION_OLD  # the account upgraded to basil since
        self.add(
            "invoice", invoice("in_7", "cus_a", "sub_a", "open", 10900, now - 5 * DAY, shape="old"), at=now - 5 * DAY
        )
        self.update(
            "invoice",
            "in_7",
            event_type="invoice.paid",
            at=now - 4 * DAY,
            status="paid",
            amount_paid=10900,
            amount_remaining=0,
            status_transitions={"paid_at": now - 4 * DAY},
        )
        self.event_api_version = API_VERSION_BASIL
        self.add("invoice", invoice("in_8", "cus_c", "sub_c", "void", 24000, now - 3 * DAY), at=now - 3 * DAY)
        self.update("customer", "cus_g", at=now - 2 * DAY, email="hello@piedpiper.com")

    # -- failures -----------------------------------------------------------------------------
    def fail_requests(self, path: str, status: int, *, times: int, query_contains: str = "") -> None:
        """Answer `status` (with an HTML body, as a proxy would) to the next `times` requests to `path` whose
        query holds `query_contains` (e.g. "starting_after": a later page)."""
        with self.lock:
            self._failures.append([path, query_contains, status, times])

    def rate_limit_next(self, retry_after: str | None) -> None:
        """Answer the next request with Stripe's 429 (its error JSON) and the given Retry-After."""
        self.fail_next(429, retry_after=retry_after, body=RATE_LIMIT_BODY)

    def respond(self, rec: Recorded):
        url = urlsplit(rec.path)
        with self.lock:
            for rule in self._failures:
                if rule[0] == url.path and rule[1] in url.query and rule[3] > 0:
                    rule[3] -= 1
                    return rule[2], b"<html>upstream error</html>", {}, 0.0
        return super().respond(rec)

    # -- the API ------------------------------------------------------------------------------
    def handle_ok(self, rec: Recorded):
        url = urlsplit(rec.path)
        parent, _, oid = url.path.rpartition("/")
        retrieve = parent in LIST_PATHS and oid != ""
        if rec.method != "GET" or not (retrieve or url.path in LIST_PATHS or url.path == "/v1/events"):
            return _error(404, f"Unrecognized request URL ({rec.method}: {url.path}).")
        auth = rec.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return _error(401, "You did not provide an API key.")
        if auth[len("Bearer ") :] != self.api_key:
            return _error(401, f"Invalid API Key provided: {auth[len('Bearer ') :]}")
        if retrieve:
            return self._retrieve(LIST_PATHS[parent], unquote(oid))
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if url.path == "/v1/events":
            events = self._events(query)
            return events if isinstance(events, tuple) else self._page(url.path, self._events_listed(events), query)
        kind = LIST_PATHS[url.path]
        with self.lock:
            selected = list(self.objects[kind].values())
        if kind == "subscription":
            selected = self._by_status(selected, query.get("status"))
        if "customer" in query:
            selected = [o for o in selected if o.get("customer") == query["customer"]]
        return self._page(url.path, self._newest_first(selected), query)

    def _retrieve(self, kind: str, oid: str):
        """One object; a deleted customer's stub; Stripe's 404 for an id the account does not have."""
        with self.lock:
            obj = copy.deepcopy(self.objects[kind].get(oid))
            deleted = kind == "customer" and oid in self.deleted_customers
        if obj is None and deleted:
            obj = {"id": oid, "object": "customer", "deleted": True}
        if obj is None:
            return _error(404, f"No such {kind}: '{oid}'", param="id", code="resource_missing")
        return 200, obj, {"Request-Id": "req_fake"}, 0.0

    def _events_listed(self, events: list[dict]) -> list[dict]:
        """Events newest first by `created`; inside one second newest first too, or oldest first when
        `same_second_oldest_first` is set."""
        if not self.same_second_oldest_first:
            return self._newest_first(events)
        return sorted(events, key=lambda e: (-e["created"], self._order[e["id"]]))

    def _newest_first(self, objects: list[dict]) -> list[dict]:
        return sorted(
            objects,
            key=lambda o: (o["created"] if isinstance(o["created"], int) else 0, self._order[o["id"]]),
            reverse=True,
        )

    @staticmethod
    def _by_status(subs: list[dict], status: str | None) -> list[dict]:
        if status == "all":
            return subs
        if status == "ended":
            return [s for s in subs if s["status"] in ("canceled", "incomplete_expired")]
        if status:
            return [s for s in subs if s["status"] == status]
        return [s for s in subs if s["status"] != "canceled"]

    def _events(self, query: dict[str, str]):
        """The events matching `created[…]`, `type` and `types[]`, or Stripe's 400 for a bad filter."""
        types = [v for k, v in query.items() if k.startswith("types[")]
        if types and "type" in query:
            return _error(400, "You may only specify one of these parameters: type, types.", param="types")
        if len(types) > 20:
            return _error(400, "You can pass at most 20 types.", param="types")
        with self.lock:
            events = [e for e in self.events if e["created"] >= time.time() - EVENTS_KEPT_SECONDS]
        if types:
            events = [e for e in events if e["type"] in types]
        elif "type" in query:
            events = [e for e in events if fnmatch.fnmatchcase(e["type"], query["type"])]
        bounds = {"gt": int.__gt__, "gte": int.__ge__, "lt": int.__lt__, "lte": int.__le__}
        for op, keep in bounds.items():
            if f"created[{op}]" in query:
                limit = int(query[f"created[{op}]"])
                events = [e for e in events if keep(e["created"], limit)]
        if "created" in query:
            events = [e for e in events if e["created"] == int(query["created"])]
        return events

    def _page(self, path: str, ordered: list[dict], query: dict[str, str]):
        """One page of a Stripe list object: `limit` objects after `starting_after`, `has_more`."""
        try:
            limit = int(query.get("limit", "10"))
        except ValueError:
            return _error(400, "Invalid integer: limit", param="limit")
        if not 1 <= limit <= 100:
            return _error(400, "This value must be less than or equal to 100.", param="limit")
        start = 0
        if "starting_after" in query and not self.ignore_starting_after:
            ids = [o["id"] for o in ordered]
            if query["starting_after"] not in ids:
                return _error(
                    400, f"No such object: '{query['starting_after']}'", param="starting_after", code="resource_missing"
                )
            start = ids.index(query["starting_after"]) + 1
        data = ordered[start : start + limit]
        body = {"object": "list", "data": copy.deepcopy(data), "has_more": start + limit < len(ordered), "url": path}
        return 200, body, {"Request-Id": "req_fake"}, 0.0

    def paths(self) -> list[str]:
        """The paths (no query) of every request seen, in order."""
        with self.lock:
            return [urlsplit(r.path).path for r in self.requests]
