"""The Stripe connector: `billing_customers`, `billing_subscriptions` and `billing_invoices` from Stripe's API.

Each table lands as a full snapshot (`replace`): the ingest keeps the first row of a repeated `id`, so landing a
changed object next to its old version would keep the old one. The snapshot is kept current cheaply through
Stripe's events, whose `data.object` is the object as it was right after the change:

* The first pull (no cursor) notes the `created` second of the newest event of the table's event types, then
  lists every object (`GET /v1/customers`, `/v1/subscriptions?status=all`, `/v1/invoices`) page by page. A
  change made while the listing runs has an event at or after that second, so the next pull sees it.
* A later pull reads only `GET /v1/events?created[gte]=<cursor>&types[]=…` and applies each changed object's
  newest version to the previous snapshot read back from the table's landed Parquet. The whole merged snapshot
  is landed again and the cursor moves to the newest event read.

Which version is newest: Stripe orders events by `created` only, in whole seconds, and says nothing of the order
inside one second, where `customer.subscription.created` and `.updated`, or `invoice.finalized` and
`invoice.paid`, often fall together. So an object's newest event is applied only when it is the object's only
event in that second: its `data.object` replaces the row, or a removing event (`customer.deleted`,
`invoice.deleted`: such objects no longer list) takes the row out. An object with two or more events in its
newest second is read again (`GET /v1/customers/{id}`, `/v1/subscriptions/{id}`, `/v1/invoices/{id}`) and the
answer replaces the row, or removes it when Stripe says the object is gone (a deleted customer answers
`"deleted": true`, a deleted draft invoice 404 `resource_missing`). That is at most one request per such object,
never more than a full listing of the table would take (more of them: the table is listed in full instead); the
log gives the number.

`created[gte]`, not `[gt]`: an event in the cursor's second that Stripe wrote after the cursor was read would be
missed by `gt`. Reading the cursor's second again is harmless: an older version it brings back is outdated by a
newer event of the same object, read too, or shares its second and has the object read again.

The merge base is checked: the source state keeps, next to the cursors, the load id and row count of each table's
last landed snapshot (`landed_loads`). When the table's newest landed load is another one, or its files are
missing, unreadable or hold another number of rows (a half-copied landing folder, files deleted or edited), the
log says why and the table is listed in full rather than events merged onto a wrong base.

Stripe keeps events 30 days. A cursor older than `CURSOR_MAX_AGE` (30 days less a margin for clock skew and a
long pull) means a full listing again too, said in the log. The cursors live in the dlt source state
(`events_cursors`), committed with the load: a pull that fails lands nothing and moves no cursor. (Not resource
state: dlt clears a `replace` resource's state at every run.)

Requests go through the official SDK (`stripe.StripeClient`, its own retries off) and each page or object through
our bounded retry loop (`StripeApi.call`): the SDK does not retry 429 and ignores `Retry-After`. Lists are paged
with `starting_after`; a page ending with an object already returned stops the pull with a ConnectorError rather
than read the same page forever. Objects are read from the JSON of each response, not from the SDK's typed
objects. Events come rendered in the API version of their time, listed and re-read objects in the SDK's pinned
version, so every mapping reads the old and the new place of a field.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar

import dlt
import pyarrow as pa
import pyarrow.parquet as pq
import stripe

from beton_pipeline.sources.connectors.common import ConnectorError, contract_row, secret, source_dir, text_columns

SOURCE = "stripe"

CURSOR_MAX_AGE = timedelta(days=28)
"""How old an events cursor may be and still be read from: Stripe keeps events 30 days; 2 days of margin."""

STATE_KEY = "events_cursors"
"""The source-state key of the per-table events cursors (`created` seconds of the newest event read)."""

LANDED_KEY = "landed_loads"
"""The source-state key of what each table's last pull landed (`{"load_id": …, "rows": …}`): the merge base's check."""

LANDED_FILE = re.compile(r"^(?P<load_id>\d+(?:\.\d+)?)\.[^.]+\.parquet$")
"""A landed file's name: `<load id>.<file id>.parquet`, dlt's load id being `<seconds>.<fraction>`."""

log = logging.getLogger(__name__)
T = TypeVar("T")
Rows = list[dict[str, str | None]]
"""Contract rows (every value text), as landed."""


@dataclass(frozen=True)
class StripeConfig:
    """How the Stripe connector reads: where, with which key, and its retry policy.

    `api_key_env` names the environment variable with a restricted key that can read customers, subscriptions,
    invoices and events. Each page is tried up to `max_attempts` times on 429, 5xx, timeouts and connection
    errors, waiting `Retry-After` when Stripe sends one, else `backoff_seconds * 2**k`, at most
    `max_wait_seconds` each time."""

    api_base: str = "https://api.stripe.com"
    api_key_env: str = "BETON_STRIPE_API_KEY"
    page_size: int = 100
    timeout_seconds: float = 30.0
    max_attempts: int = 5
    backoff_seconds: float = 1.0
    max_wait_seconds: float = 60.0


# --- Mapping Stripe objects to contract rows --------------------------------------------------------------------


def _dig(obj: Any, *keys: str) -> Any:
    """`obj[k1][k2]…`, or None as soon as a level is missing or not an object."""
    for key in keys:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _id_of(value: Any) -> Any:
    """The id of a reference, whether Stripe sent the id or the expanded object."""
    return value.get("id") if isinstance(value, Mapping) else value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def customer_row(obj: Mapping) -> dict[str, str | None]:
    """A `billing_customers` row: id, email, created, metadata (as JSON text)."""
    return contract_row(
        "billing_customers",
        {
            "id": obj.get("id"),
            "email": obj.get("email"),
            "created": obj.get("created"),
            "metadata": obj.get("metadata"),
        },
    )


def _item_price(item: Any) -> Mapping:
    """A subscription item's price; the legacy `plan` (`amount` for `unit_amount`) when there is no `price`."""
    price = _dig(item, "price")
    if isinstance(price, Mapping):
        return price
    plan = _dig(item, "plan")
    if not isinstance(plan, Mapping):
        return {}
    return {
        "unit_amount": plan.get("amount"),
        "currency": plan.get("currency"),
        "recurring": {"interval": plan.get("interval"), "interval_count": plan.get("interval_count")},
    }


def _billing_period(price: Mapping) -> tuple[Any, Any, Any]:
    """(interval, interval_count, currency) of a price: items share a plan amount only when these agree."""
    return _dig(price, "recurring", "interval"), _dig(price, "recurring", "interval_count"), price.get("currency")


def _item_amount(item: Any) -> Any:
    """`unit_amount × quantity` of a subscription item in minor units; the raw `unit_amount` when either is not
    an integer (a tiered or metered price has none; a malformed one lands as it came, for the ingest to reject)."""
    unit_amount, quantity = _item_price(item).get("unit_amount"), _dig(item, "quantity")
    if _is_int(unit_amount) and _is_int(quantity):
        return unit_amount * quantity
    return unit_amount


def subscription_plan(obj: Mapping) -> tuple[Any, Any, Any, Any]:
    """(plan_amount, plan_interval, plan_interval_count, currency) of a subscription, from its items' prices.

    The billing period is the first item's price's `recurring.interval` and `interval_count`. `plan_amount` is
    the sum of `unit_amount × quantity` over the items billed on that period in that currency (a base plan
    plus per-seat add-ons is one amount per period). Items on another period or in another currency (Stripe's
    mixed-interval subscriptions) are left out of it, since one row holds one period's price, and a warning
    names the subscription. An item whose amount is not an integer makes the sum that raw value, so the row is
    quarantined with its reason rather than landed with a wrong amount. No item: every value None."""
    items = _dig(obj, "items", "data")
    if not isinstance(items, list) or not items:
        return None, None, None, obj.get("currency")
    period = _billing_period(_item_price(items[0]))
    same_period = [item for item in items if _billing_period(_item_price(item)) == period]
    if len(same_period) < len(items) or _dig(obj, "items", "has_more") is True:
        log.warning(
            "stripe: subscription %s: plan_amount counts %d of its %s items (the ones billed every %s %s in %s)",
            obj.get("id"),
            len(same_period),
            _dig(obj, "items", "total_count") or len(items),
            period[1],
            period[0],
            period[2],
        )
    amounts = [_item_amount(item) for item in same_period]
    not_integer = [a for a in amounts if not _is_int(a)]
    amount = not_integer[0] if not_integer else sum(amounts)
    return amount, period[0], period[1], obj.get("currency") or period[2]


def subscription_row(obj: Mapping) -> dict[str, str | None]:
    """A `billing_subscriptions` row (`subscription_plan` says how the plan columns are computed)."""
    amount, interval, interval_count, currency = subscription_plan(obj)
    return contract_row(
        "billing_subscriptions",
        {
            "id": obj.get("id"),
            "customer": _id_of(obj.get("customer")),
            "status": obj.get("status"),
            "created": obj.get("created"),
            "trial_end": obj.get("trial_end"),
            "canceled_at": obj.get("canceled_at"),
            "plan_amount": amount,
            "plan_interval": interval,
            "plan_interval_count": interval_count,
            "currency": currency,
        },
    )


def invoice_subscription(obj: Mapping) -> Any:
    """The id of the subscription an invoice bills: `subscription` before API version 2025-03-31.basil,
    `parent.subscription_details.subscription` from then on; None for an invoice outside any subscription."""
    old = _id_of(obj.get("subscription"))
    return old if old is not None else _id_of(_dig(obj, "parent", "subscription_details", "subscription"))


def invoice_row(obj: Mapping) -> dict[str, str | None]:
    """A `billing_invoices` row; `paid_at` is `status_transitions.paid_at`."""
    return contract_row(
        "billing_invoices",
        {
            "id": obj.get("id"),
            "customer": _id_of(obj.get("customer")),
            "subscription": invoice_subscription(obj),
            "status": obj.get("status"),
            "amount_paid": obj.get("amount_paid"),
            "currency": obj.get("currency"),
            "created": obj.get("created"),
            "paid_at": _dig(obj, "status_transitions", "paid_at"),
        },
    )


@dataclass(frozen=True)
class StripeTable:
    """How one contract table is read: its list endpoint, the events that change its objects, its mapping."""

    name: str
    path: str
    list_params: Mapping[str, str]
    event_types: tuple[str, ...]
    removing_events: tuple[str, ...]
    """Events after which the object no longer lists (its row leaves the snapshot)."""
    to_row: Callable[[Mapping], dict[str, str | None]]


TABLES: tuple[StripeTable, ...] = (
    StripeTable(
        "billing_customers",
        "/v1/customers",
        {},
        ("customer.created", "customer.updated", "customer.deleted"),
        ("customer.deleted",),
        customer_row,
    ),
    StripeTable(
        "billing_subscriptions",
        "/v1/subscriptions",
        {"status": "all"},
        tuple(
            f"customer.subscription.{e}"
            for e in (
                "created",
                "updated",
                "deleted",
                "paused",
                "resumed",
                "pending_update_applied",
                "pending_update_expired",
                "trial_will_end",
            )
        ),
        (),
        subscription_row,
    ),
    StripeTable(
        "billing_invoices",
        "/v1/invoices",
        {},
        # Every invoice event but invoice.upcoming (a preview without an id); at most 20 (`types[]`'s limit).
        tuple(
            f"invoice.{e}"
            for e in (
                "created",
                "updated",
                "deleted",
                "finalized",
                "finalization_failed",
                "paid",
                "payment_succeeded",
                "payment_failed",
                "payment_action_required",
                "payment_attempt_required",
                "marked_uncollectible",
                "voided",
                "sent",
                "overdue",
                "overpaid",
                "will_be_due",
            )
        ),
        ("invoice.deleted",),
        invoice_row,
    ),
)


# --- Talking to Stripe ------------------------------------------------------------------------------------------


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """A `Retry-After` header as seconds from `now`: a number of seconds or an HTTP date; None when absent or
    unreadable."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() - now.timestamp()


def retry_wait(retry_after: str | None, attempt: int, config: StripeConfig, now: datetime) -> float:
    """Seconds to wait before attempt `attempt + 1`: `Retry-After` when Stripe sent a readable one, else
    `backoff_seconds * 2**(attempt - 1)`; never more than `max_wait_seconds`, never negative."""
    wait = retry_after_seconds(retry_after, now)
    if wait is None or not math.isfinite(wait):
        wait = config.backoff_seconds * 2 ** (attempt - 1)
    return min(max(wait, 0.0), config.max_wait_seconds)


def _header(error: stripe.StripeError, name: str) -> str | None:
    """A response header of a Stripe error, found whatever its case."""
    for key, value in (error.headers or {}).items():
        if key.lower() == name.lower():
            return value
    return None


def _retryable(error: stripe.StripeError) -> bool:
    """429, a 5xx, a timeout or a refused connection: worth another attempt (not a certificate error)."""
    if isinstance(error, stripe.APIConnectionError):
        return error.should_retry
    if isinstance(error, stripe.RateLimitError):
        return True
    return isinstance(error, stripe.APIError) and (error.http_status or 500) >= 500


def _what_failed(error: stripe.StripeError) -> str:
    """A short, secret-free account of a failed request: the status and Stripe's error code, or the network error."""
    if isinstance(error, stripe.APIConnectionError):
        cause = error.__cause__
        return f"no answer ({type(cause).__name__ if cause else 'connection error'})"
    code = f", {error.code}" if error.code else ""
    return f"HTTP {error.http_status}{code}"


class StripeApi:
    """Stripe's list and retrieve endpoints through the SDK, one page or object per call, each retried by `call`."""

    def __init__(self, config: StripeConfig, api_key: str) -> None:
        self.config = config
        client = stripe.StripeClient(
            api_key,
            base_addresses={"api": config.api_base},
            max_network_retries=0,
            http_client=stripe.RequestsClient(timeout=config.timeout_seconds),
        )
        self._services = {
            "/v1/customers": client.v1.customers,
            "/v1/subscriptions": client.v1.subscriptions,
            "/v1/invoices": client.v1.invoices,
            "/v1/events": client.v1.events,
        }

    def call(self, path: str, request: Callable[[], T]) -> T:
        """`request()`, tried up to `max_attempts` times on retryable failures (`_retryable`), then a
        ConnectorError. A refused key or a missing permission fails at once. No message holds the key."""
        cfg, attempt = self.config, 1
        while True:
            try:
                return request()
            except stripe.AuthenticationError:
                raise ConnectorError(
                    f"{SOURCE}: GET {path} was refused (HTTP 401): the key in {cfg.api_key_env} is not a valid "
                    f"Stripe key for {cfg.api_base}; export a current restricted key (read access to customers, "
                    "subscriptions, invoices and events)."
                ) from None
            except stripe.PermissionError:
                raise ConnectorError(
                    f"{SOURCE}: GET {path} was forbidden (HTTP 403): the key in {cfg.api_key_env} cannot read it; "
                    "give the restricted key read access to customers, subscriptions, invoices and events."
                ) from None
            except stripe.StripeError as error:
                if not _retryable(error):
                    raise ConnectorError(
                        f"{SOURCE}: GET {path} failed ({_what_failed(error)}), not retried since the same request "
                        f"would fail again. Check sources.{SOURCE}.api_base ({cfg.api_base}); if it is Stripe's, "
                        "this is a connector bug or an API change: please report it."
                    ) from None
                if attempt == cfg.max_attempts:
                    raise ConnectorError(
                        f"{SOURCE}: GET {path} failed {attempt} times (last: {_what_failed(error)}); nothing was "
                        "landed and the next pull starts where the last good one ended. If Stripe is slow or "
                        f"limiting us, run the pull again later, or raise sources.{SOURCE}.max_attempts, "
                        f"max_wait_seconds or timeout_seconds (now {cfg.max_attempts}, {cfg.max_wait_seconds} s, "
                        f"{cfg.timeout_seconds} s) in beton.yaml."
                    ) from None
                wait = retry_wait(_header(error, "Retry-After"), attempt, cfg, datetime.now(UTC))
                log.info("stripe: GET %s: %s; attempt %d in %.1f s", path, _what_failed(error), attempt + 1, wait)
                time.sleep(wait)
                attempt += 1

    def _list_page(self, path: str, params: Mapping[str, Any]) -> dict:
        """One page of a list endpoint as Stripe's JSON (`data`, `has_more`)."""
        page = self.call(path, lambda: self._services[path].list(params=dict(params)))
        body = page.last_response.data if page.last_response is not None else None
        if not isinstance(body, Mapping) or not isinstance(body.get("data"), list):
            raise ConnectorError(
                f"{SOURCE}: GET {path} answered something that is not a Stripe list (no `data` array); "
                f"check sources.{SOURCE}.api_base ({self.config.api_base})."
            )
        return body

    def list_all(self, path: str, params: Mapping[str, Any]) -> Iterator[list[dict]]:
        """Every object of a list endpoint, one page (list) at a time, paging with `starting_after`.

        A page ending with an object an earlier page returned (an API that ignores `starting_after`), or one with
        more to come whose last object has no id to page from, stops the listing with a ConnectorError: each
        page must move past the last, so the loop ends."""
        after: str | None = None
        seen: set[str] = set()
        for page in itertools.count(1):
            page_params = {**params, "limit": self.config.page_size}
            if after is not None:
                page_params["starting_after"] = after
            body = self._list_page(path, page_params)
            objects = body["data"]
            last = objects[-1].get("id") if objects else None
            if last in seen or (last is None and objects and body.get("has_more")):
                raise ConnectorError(self._not_paging(path, page, after, last, len(seen)))
            seen.update(o.get("id") for o in objects if o.get("id") is not None)
            yield objects
            if not body.get("has_more") or not objects:
                return
            after = last

    def _not_paging(self, path: str, page: int, after: str | None, last: str | None, objects: int) -> str:
        """The message of a listing stopped because a page did not move past the previous one (`list_all`)."""
        what = f"ends with {last}, already returned" if last else "has more to come but its last object has no id"
        return (
            f"{SOURCE}: GET {path} does not page: page {page} (starting_after={after}) {what}; stopped after "
            f"{page} pages and {objects} distinct objects rather than read the same pages again and again. Stripe "
            f"pages with `starting_after`: check that sources.{SOURCE}.api_base ({self.config.api_base}) is "
            "Stripe's, or a proxy that passes the query on."
        )

    def retrieve(self, path: str, oid: str) -> dict | None:
        """The object `oid` of a list endpoint as Stripe's JSON now (`GET <path>/<id>`, in the SDK's pinned API
        version); None when it is gone: a deleted customer (Stripe answers `"deleted": true`) or an object Stripe
        no longer has (404 `resource_missing`: a deleted draft invoice)."""

        def request() -> Any:
            try:
                return self._services[path].retrieve(oid)
            except stripe.InvalidRequestError as error:
                if error.http_status == 404 and error.code == "resource_missing":
                    return None
                raise

        found = self.call(f"{path}/{oid}", request)
        if found is None:
            return None
        body = found.last_response.data if found.last_response is not None else None
        if not isinstance(body, Mapping) or body.get("id") != oid:
            raise ConnectorError(
                f"{SOURCE}: GET {path}/{oid} answered something that is not that object (no `id` {oid}); "
                f"check sources.{SOURCE}.api_base ({self.config.api_base})."
            )
        return None if body.get("deleted") is True else dict(body)

    def newest_event_time(self, types: tuple[str, ...]) -> int | None:
        """`created` of the newest event of these types, None when Stripe kept none."""
        events = self._list_page("/v1/events", {"limit": 1, "types": list(types)})["data"]
        return events[0].get("created") if events else None

    def events_since(self, cursor: int, types: tuple[str, ...]) -> Iterator[dict]:
        """The events of these types created at or after `cursor`, newest first."""
        for page in self.list_all("/v1/events", {"created": {"gte": cursor}, "types": list(types)}):
            yield from page


# --- Snapshots --------------------------------------------------------------------------------------------------


def _load_id(landed: Path) -> str | None:
    """The load id in a landed file's name (`LANDED_FILE`); None for a file that no pull landed."""
    match = LANDED_FILE.match(landed.name)
    return match["load_id"] if match else None


def landed_snapshot(landing: Path, table: str, recorded: Mapping | None) -> tuple[Rows | None, str | None]:
    """(The rows of `table` as the last pull landed them, None), or (None, why the landed files are no merge base).

    `recorded` is what the last pull noted in the source state (`LANDED_KEY`): its load id and row count. Every
    file of the table's folder must be a landed file, the newest load must be the recorded one, and its files
    must read and hold the recorded number of rows."""
    if not recorded:
        return None, "no record of the last landed load (the last pull was made by an older version of the connector)"
    folder = source_dir(SOURCE, landing) / table
    loads = {f: _load_id(f) for f in sorted(folder.glob("*.parquet"))}
    foreign = [f.name for f, load in loads.items() if load is None]
    if foreign:
        return None, f"{folder} holds files that no pull landed ({', '.join(foreign)})"
    if not loads:
        return None, f"the files of load {recorded['load_id']} are missing from {folder}"
    newest = max(loads.values(), key=float)
    if newest != recorded["load_id"]:
        return None, f"the newest load in {folder} is {newest}, but the last pull landed load {recorded['load_id']}"
    columns = list(text_columns(table))
    rows: Rows = []
    for f, load in loads.items():
        if load == newest:
            try:
                rows += pq.read_table(f, columns=columns).to_pylist()
            except (OSError, pa.ArrowException) as error:
                return None, f"{f} cannot be read ({type(error).__name__})"
    if len(rows) != recorded["rows"]:
        return None, f"load {newest} in {folder} holds {len(rows)} rows, but the last pull landed {recorded['rows']}"
    return rows, None


@dataclass
class Changes:
    """What the events since a cursor say about a table's objects (`read_changes`)."""

    newest: dict[str, tuple[Any, Any, Mapping]] = field(default_factory=dict)
    """Per object id, its newest event's (`created`, `type`, `data.object`)."""
    same_second: set[str] = field(default_factory=set)
    """The ids with two or more events in their newest second: which of them is the object's last is unknown."""
    newest_created: int | None = None
    """The newest event's `created`: the next cursor."""
    read: int = 0
    unmatched: int = 0
    """Events whose object has no id: they cannot be applied."""


def _later(a: Any, b: Any) -> bool:
    """Whether event time `a` is a later second than `b` (False when either is not a whole second)."""
    return _is_int(a) and _is_int(b) and a > b


def read_changes(events: Iterable[dict]) -> Changes:
    """Each object's newest event among `events`, and the objects whose newest second holds several of theirs.

    Newest is the greatest `created`, in whatever order the events come: another event of the object in the
    same second as its newest so far (or one whose `created` is not a second) makes its newest version unknown."""
    changes = Changes()
    for event in events:
        changes.read += 1
        created = event.get("created")
        if _is_int(created) and (changes.newest_created is None or created > changes.newest_created):
            changes.newest_created = created
        obj = _dig(event, "data", "object")
        oid = _dig(obj, "id")
        known = changes.newest.get(oid)
        if oid is None:
            changes.unmatched += 1
        elif known is None or _later(created, known[0]):
            changes.newest[oid] = (created, event.get("type"), obj)
            changes.same_second.discard(oid)
        elif not _later(known[0], created):
            changes.same_second.add(oid)
    return changes


def apply_changes(snapshot: Rows, changes: Changes, reread: Mapping[str, Mapping | None], table: StripeTable) -> Rows:
    """`snapshot` with each changed object's newest version: the object as read again when it was (`reread`;
    None: gone), else its newest event's object, or no row after a removing event (`table.removing_events`).
    Rows without an id (a malformed object) are kept as they are."""
    by_id = {row["id"]: row for row in snapshot if row["id"] is not None}
    for oid, (_, event_type, obj) in changes.newest.items():
        current = reread.get(oid, None if event_type in table.removing_events else obj)
        if current is None:
            by_id.pop(oid, None)
        else:
            by_id[oid] = table.to_row(current)
    return [row for row in snapshot if row["id"] is None] + list(by_id.values())


def cursor_expired(cursor: int, now: datetime) -> bool:
    """Whether events since `cursor` may already be gone (older than `CURSOR_MAX_AGE`)."""
    return now - datetime.fromtimestamp(cursor, UTC) > CURSOR_MAX_AGE


def _full_listing_reason(cursor: int | None, now: datetime) -> str | None:
    """Why this pull must list every object whatever landed (None: the events since the cursor may do)."""
    if cursor is None:
        return "first pull (no events cursor)"
    if cursor_expired(cursor, now):
        at = datetime.fromtimestamp(cursor, UTC).isoformat()
        return f"the events cursor ({at}) is older than {CURSOR_MAX_AGE.days} days and Stripe keeps events 30 days"
    return None


def _rereads_cost_more(changes: Changes, snapshot: Rows, page_size: int) -> str | None:
    """Why listing the table takes fewer requests than reading the `same_second` objects again (None: it does not).
    A listing takes a page per `page_size` objects (about as many as landed) and one request for its cursor."""
    listing = max(1, math.ceil(len(snapshot) / page_size)) + 1
    if len(changes.same_second) <= listing:
        return None
    return f"{len(changes.same_second)} changed objects to read again, more requests than listing the table ({listing})"


def _merge_input(
    api: StripeApi, table: StripeTable, cursor: int, landing: Path, recorded: Mapping | None
) -> tuple[Rows, Changes] | str:
    """The landed snapshot and the changes since `cursor` to apply to it, or why the table must be listed in full
    (the landed files are no merge base, said as a warning, or re-reading would cost more than a listing)."""
    snapshot, problem = landed_snapshot(landing, table.name, recorded)
    if snapshot is None:
        log.warning("stripe: %s: the landed snapshot is not what the last pull landed: %s", table.name, problem)
        return "the landed snapshot is not what the last pull landed"
    changes = read_changes(api.events_since(cursor, table.event_types))
    return _rereads_cost_more(changes, snapshot, api.config.page_size) or (snapshot, changes)


def _listed_rows(api: StripeApi, table: StripeTable) -> Generator[Rows, None, tuple[int | None, int]]:
    """Every object of the table, a page of rows at a time; returns the events cursor to keep (the newest event's
    time, read before the listing so that changes made during it are read next time) and the rows yielded."""
    cursor, listed = api.newest_event_time(table.event_types), 0
    for page in api.list_all(table.path, table.list_params):
        listed += len(page)
        yield [table.to_row(obj) for obj in page]
    if cursor is None:
        log.info("stripe: %s: Stripe kept no event of this table; the next pull lists everything again", table.name)
    return cursor, listed


def _merged_rows(
    api: StripeApi, table: StripeTable, cursor: int, snapshot: Rows, changes: Changes
) -> Generator[Rows, None, tuple[int, int]]:
    """The landed snapshot with the changes since `cursor` applied (`apply_changes`), the objects with several
    events in their newest second read again first; returns the new cursor and the rows yielded."""
    reread = {oid: api.retrieve(table.path, oid) for oid in sorted(changes.same_second)}
    if changes.unmatched:
        log.warning("stripe: %s: %d events without an object id were not applied", table.name, changes.unmatched)
    rows = apply_changes(snapshot, changes, reread, table)
    log.info(
        "stripe: %s: %d events since %d applied to %d landed rows; %d changed objects re-read (several events in "
        "their newest second)",
        table.name,
        changes.read,
        cursor,
        len(snapshot),
        len(reread),
    )
    yield rows
    return (cursor if changes.newest_created is None else changes.newest_created), len(rows)


def table_rows(table: StripeTable, config: StripeConfig, landing: Path) -> Iterator[Rows]:
    """The whole current snapshot of `table`, by the events since its cursor applied to the landed snapshot or by
    a full listing (module docstring). Once every row is yielded, notes in the source state the table's new
    cursor and what this pull lands (its load id and row count: the next pull's check of its merge base)."""
    api = StripeApi(config, secret(config.api_key_env, SOURCE))
    state = dlt.current.source_state()
    cursors, landed = state.setdefault(STATE_KEY, {}), state.setdefault(LANDED_KEY, {})
    cursor = cursors.get(table.name)
    merge = _full_listing_reason(cursor, datetime.now(UTC)) or _merge_input(
        api, table, cursor, landing, landed.get(table.name)
    )
    if isinstance(merge, str):
        log.info("stripe: %s: listing every object (%s)", table.name, merge)
        pages = _listed_rows(api, table)
    else:
        pages = _merged_rows(api, table, cursor, *merge)
    cursors[table.name], rows = yield from pages
    landed[table.name] = {"load_id": dlt.current.load_package_state()["load_id"], "rows": rows}


@dlt.source(name=SOURCE)
def stripe_source(config: StripeConfig, landing: Path):
    """Stripe's billing customers, subscriptions and invoices, one `replace` resource per contract table.

    `landing` is where `pull` lands this source: a later pull reads the previous snapshot back from there.
    The key is read when a resource is iterated, never here."""
    return [
        dlt.resource(
            table_rows(table, config, landing),
            name=table.name,
            write_disposition="replace",
            columns=text_columns(table.name),
        )
        for table in TABLES
    ]
