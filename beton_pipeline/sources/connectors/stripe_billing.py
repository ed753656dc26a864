"""The Stripe connector: `billing_customers`, `billing_subscriptions` and `billing_invoices` from Stripe's API.

Each table lands as a full snapshot (`replace`): the ingest keeps the first row of a repeated `id`, so landing a
changed object next to its old version would keep the old one. The snapshot is kept current cheaply through
Stripe's events, whose `data.object` is the object as it was right after the change:

* The first pull (no cursor) notes the `created` second of the newest event of the table's event types, then
  lists every object (`GET /v1/customers`, `/v1/subscriptions?status=all`, `/v1/invoices`) page by page. A
  change made while the listing runs has an event at or after that second, so the next pull sees it.
* A later pull reads only `GET /v1/events?created[gte]=<cursor>&types[]=…`, keeps the newest event per object
  id, and applies it to the previous snapshot read back from the table's landed Parquet: the event's object
  replaces the row, or removes it (`customer.deleted`, `invoice.deleted`: such objects no longer list). The
  whole merged snapshot is landed again and the cursor moves to the newest event read.

`created[gte]`, not `[gt]`: event times are whole seconds, and an event in the cursor's second that Stripe wrote
after the cursor was read would be missed by `gt`. Reading the cursor's second again is harmless: an older
version it brings back is replaced by the newer event of the same object, which is read too (newest wins).

Stripe keeps events 30 days. A cursor older than `CURSOR_MAX_AGE` (30 days less a margin for clock skew and a
long pull), or a table with no landed snapshot, means a full listing again, said in the log. The cursors live in
the dlt source state (`events_cursors`), committed with the load: a pull that fails lands nothing and moves no
cursor. (Not resource state: dlt clears a `replace` resource's state at every run.)

Requests go through the official SDK (`stripe.StripeClient`, its own retries off) and each page through our
bounded retry loop (`StripeApi.call`): the SDK does not retry 429 and ignores `Retry-After`. Objects are read from
the JSON of each response, not from the SDK's typed objects. Events come rendered in the API version of their
time, listings in the SDK's pinned version, so every mapping reads the old and the new place of a field.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar

import dlt
import pyarrow.parquet as pq
import stripe

from beton_pipeline.sources.connectors.common import ConnectorError, contract_row, secret, source_dir, text_columns

SOURCE = "stripe"

CURSOR_MAX_AGE = timedelta(days=28)
"""How old an events cursor may be and still be read from: Stripe keeps events 30 days; 2 days of margin."""

STATE_KEY = "events_cursors"
"""The source-state key of the per-table events cursors (`created` seconds of the newest event read)."""

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
    """Stripe's list endpoints through the SDK, one page per call, each call retried by `call`."""

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
        """Every object of a list endpoint, one page (list) at a time, paging with `starting_after`."""
        after: str | None = None
        while True:
            page_params = {**params, "limit": self.config.page_size}
            if after is not None:
                page_params["starting_after"] = after
            body = self._list_page(path, page_params)
            objects = body["data"]
            yield objects
            if not body.get("has_more") or not objects:
                return
            after = objects[-1].get("id")

    def newest_event_time(self, types: tuple[str, ...]) -> int | None:
        """`created` of the newest event of these types, None when Stripe kept none."""
        events = self._list_page("/v1/events", {"limit": 1, "types": list(types)})["data"]
        return events[0].get("created") if events else None

    def events_since(self, cursor: int, types: tuple[str, ...]) -> Iterator[dict]:
        """The events of these types created at or after `cursor`, newest first."""
        for page in self.list_all("/v1/events", {"created": {"gte": cursor}, "types": list(types)}):
            yield from page


# --- Snapshots --------------------------------------------------------------------------------------------------


def _load_id(landed: Path) -> float:
    """The load id of a landed file (`<load id>.<file id>.parquet`, the load id being dlt's `<seconds>.<fraction>`)."""
    return float(landed.name.rsplit(".", 2)[0])


def landed_snapshot(landing: Path, table: str) -> Rows | None:
    """The rows of `table` as the newest load landed them (its files only), or None when none landed."""
    files = sorted(source_dir(SOURCE, landing).joinpath(table).glob("*.parquet"))
    if not files:
        return None
    newest_load = max(_load_id(f) for f in files)
    columns = list(text_columns(table))
    rows: Rows = []
    for f in files:
        if _load_id(f) == newest_load:
            rows += pq.read_table(f, columns=columns).to_pylist()
    return rows


def merge_events(snapshot: Rows, events: Iterator[dict], table: StripeTable) -> tuple[Rows, int | None, int]:
    """(`snapshot` with the newest event per object applied, the newest event's `created`, events read).

    Events come newest first, so the first one seen per object id is its newest version: its `data.object`
    replaces the row, or a removing event (`table.removing_events`) takes the row out. Rows without an id (a
    malformed object) are kept as they are; an event whose object has no id cannot be matched and is logged."""
    newest: dict[str, tuple[str, Mapping]] = {}
    newest_created, read, unmatched = None, 0, 0
    for event in events:
        read += 1
        created = event.get("created")
        if _is_int(created) and (newest_created is None or created > newest_created):
            newest_created = created
        obj = _dig(event, "data", "object")
        oid = _dig(obj, "id")
        if oid is None:
            unmatched += 1
        elif oid not in newest:
            newest[oid] = (event.get("type"), obj)
    if unmatched:
        log.warning("stripe: %s: %d events without an object id were not applied", table.name, unmatched)
    by_id = {row["id"]: row for row in snapshot if row["id"] is not None}
    for oid, (event_type, obj) in newest.items():
        if event_type in table.removing_events:
            by_id.pop(oid, None)
        else:
            by_id[oid] = table.to_row(obj)
    return [row for row in snapshot if row["id"] is None] + list(by_id.values()), newest_created, read


def cursor_expired(cursor: int, now: datetime) -> bool:
    """Whether events since `cursor` may already be gone (older than `CURSOR_MAX_AGE`)."""
    return now - datetime.fromtimestamp(cursor, UTC) > CURSOR_MAX_AGE


def _full_listing_reason(cursor: int | None, snapshot: Rows | None, now: datetime) -> str | None:
    """Why this pull must list every object (None: the events since the cursor are enough)."""
    if cursor is None:
        return "first pull (no events cursor)"
    if snapshot is None:
        return "no landed snapshot to apply the events to"
    if cursor_expired(cursor, now):
        at = datetime.fromtimestamp(cursor, UTC).isoformat()
        return f"the events cursor ({at}) is older than {CURSOR_MAX_AGE.days} days and Stripe keeps events 30 days"
    return None


def _listed_rows(api: StripeApi, table: StripeTable) -> Iterator[Rows]:
    """Every object of the table, a page of rows at a time; returns the events cursor to keep (the newest
    event's time, read before the listing so that changes made during it are read next time)."""
    cursor = api.newest_event_time(table.event_types)
    for page in api.list_all(table.path, table.list_params):
        yield [table.to_row(obj) for obj in page]
    if cursor is None:
        log.info("stripe: %s: Stripe kept no event of this table; the next pull lists everything again", table.name)
    return cursor


def _merged_rows(api: StripeApi, table: StripeTable, cursor: int, snapshot: Rows) -> Iterator[Rows]:
    """The landed snapshot with the events since `cursor` applied (`merge_events`); returns the new cursor."""
    rows, newest, read = merge_events(snapshot, api.events_since(cursor, table.event_types), table)
    log.info("stripe: %s: %d events since %d applied to %d landed rows", table.name, read, cursor, len(snapshot))
    yield rows
    return cursor if newest is None else newest


def table_rows(table: StripeTable, config: StripeConfig, landing: Path) -> Iterator[Rows]:
    """The whole current snapshot of `table`, by a full listing or by the events since the cursor (module
    docstring); moves the table's cursor in the source state once every row is yielded."""
    api = StripeApi(config, secret(config.api_key_env, SOURCE))
    cursors = dlt.current.source_state().setdefault(STATE_KEY, {})
    cursor = cursors.get(table.name)
    snapshot = landed_snapshot(landing, table.name) if cursor is not None else None
    reason = _full_listing_reason(cursor, snapshot, datetime.now(UTC))
    if reason is None:
        cursors[table.name] = yield from _merged_rows(api, table, cursor, snapshot)
    else:
        log.info("stripe: %s: listing every object (%s)", table.name, reason)
        cursors[table.name] = yield from _listed_rows(api, table)


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
