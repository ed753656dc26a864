"""The input data contract as code: every source table, its columns, their types and rules.

One `TableSpec` per table of the source directory (`TABLES`; README, "Data contract"), and one for the
experiment events `beton serve` records itself (`TRACKED_EVENTS`, read from the tracking spool's export beside
the warehouse; `INGESTED_TABLES` has both). The ingest step reads a table's files as text, checks every row
against its spec in SQL, loads the valid rows typed into `raw.raw_<table>` and writes every rejected row, with
its reason, to `beton.quarantine`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ColumnKind = Literal["string", "timestamp", "integer", "number", "json", "currency"]


@dataclass(frozen=True)
class Column:
    """One contract column.

    `required`: the column must be present in the file (a missing required column is an error that
    names the file and the column). `not_null`: a row with an empty value is quarantined.
    `allowed`: the only accepted values (compared lower-case). `min_value`: numeric lower bound.
    """

    name: str
    kind: ColumnKind = "string"
    required: bool = True
    not_null: bool = False
    allowed: tuple[str, ...] | None = None
    min_value: float | None = None
    lower: bool = False
    minor_units: bool = False
    """An amount in the currency's minor units (cents). A table whose values are written in major units
    ("79.00", "79.50") is refused with the column and examples, never loaded 100x off."""
    may_be_future: bool = False
    """A timestamp that may lie ahead of the clock (a scheduled time, such as the end of a running trial): not
    quarantined as "in the future" like a time something happened."""
    references: tuple[str, str] | None = None
    """(table, column) this column refers to. A non-empty value missing from that table's loaded rows is
    a dangling reference: the row is quarantined with the value and the table named (checked when the
    referenced table is loaded first, as the ingest assets order it)."""


TableRole = Literal["activity", "entity"]
"""What a table's newest row says about the export.

* `activity`: rows of something that keeps happening while the product is used (events, invoices,
  deal stage changes, intent signals). When the newest one trails the as-of by weeks, the export has
  most likely stopped: the lag is a staleness signal and has a default limit.
* `entity`: rows of created things (customers, companies, people, subscriptions, deals), dated by
  their creation. A few quiet weeks without a new one is normal (a holiday, a sales-led quarter), not
  a stale export: no lag limit by default (one can be set per table in `freshness.max_lag_days`).
"""

ACTIVITY_MAX_LAG_DAYS = 35.0
"""How many days the newest row of an activity table may trail the as-of time before the table counts
as stale. A month and a few days: a Stripe invoice export has at least one invoice a month."""

EVENTS_MAX_LAG_DAYS = 3.0
"""The events may trail `windows.as_of` (when it is set) by this much: a weekend of export delay."""


@dataclass(frozen=True)
class TableSpec:
    """One source table: its name (the file stem), whether the directory must have it, its columns and key.

    `freshness_column` is the timestamp whose newest value says how current the table is; `role` what
    that says (`TableRole`). `max_lag_days` is the default for how far that may trail the as-of time (the
    latest event, or `windows.as_of`) before the table is stale: `activity_max_lag_days` for an activity
    table, None (no lag check) for an entity table. `freshness.max_lag_days` in beton.yaml overrides it.
    """

    name: str
    columns: tuple[Column, ...]
    required: bool
    key: tuple[str, ...] | None = None
    freshness_column: str | None = None
    role: TableRole = field(kw_only=True)  # stated for every table: no silent default
    activity_max_lag_days: float = field(default=ACTIVITY_MAX_LAG_DAYS, kw_only=True)

    @property
    def max_lag_days(self) -> float | None:
        """The default lag limit in days (None: no lag check), by role."""
        return self.activity_max_lag_days if self.role == "activity" else None

    @property
    def raw_table(self) -> str:
        return f"raw.raw_{self.name}"

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


STRIPE_SUBSCRIPTION_STATUSES = (
    "trialing",
    "active",
    "past_due",
    "canceled",
    "unpaid",
    "incomplete",
    "incomplete_expired",
    "paused",
)
STRIPE_INVOICE_STATUSES = ("draft", "open", "paid", "uncollectible", "void")

EVENT_COLUMNS: tuple[Column, ...] = (
    Column("uuid", not_null=True),
    Column("event", not_null=True),
    Column("timestamp", "timestamp", not_null=True),
    Column("distinct_id", not_null=True),
    Column("properties", "json", required=False),
    Column("person_properties", "json", required=False),
)
"""The columns of a product event (PostHog's export shape): the exported `events` and the `tracked_events`."""

TRACKED_EVENTS = "tracked_events"
"""The table of the experiment exposures and conversions `beton serve` records (`sources.tracking`): not a file
of the source directory but the spool's export beside the warehouse, read through the events' rules."""

TABLES: tuple[TableSpec, ...] = (
    TableSpec(
        "events",
        EVENT_COLUMNS,
        required=True,
        key=("uuid",),
        freshness_column="timestamp",
        role="activity",
        activity_max_lag_days=EVENTS_MAX_LAG_DAYS,
    ),
    TableSpec(
        "crm_companies",
        (
            Column("record_id", not_null=True),
            Column("name"),
            Column("domain", lower=True),
            Column("employee_count", "integer", required=False, min_value=0),
            Column("industry", required=False),
            Column("created_at", "timestamp"),
        ),
        required=True,
        key=("record_id",),
        freshness_column="created_at",
        role="entity",
    ),
    TableSpec(
        "crm_people",
        (
            Column("record_id", not_null=True),
            Column("email", lower=True),
            Column("company_record_id", references=("crm_companies", "record_id")),
            Column("created_at", "timestamp"),
        ),
        required=True,
        key=("record_id",),
        freshness_column="created_at",
        role="entity",
    ),
    TableSpec(
        "crm_deals",
        (
            Column("record_id", not_null=True),
            Column("company_record_id", references=("crm_companies", "record_id")),
            Column("name", required=False),
            Column("stage"),
            Column("value", "number", min_value=0),
            Column("currency", "currency"),
            Column("owner", required=False),
            Column("created_at", "timestamp"),
            Column("closed_at", "timestamp"),
            Column("status", not_null=True, allowed=("open", "won", "lost"), lower=True),
        ),
        required=False,
        key=("record_id",),
        freshness_column="created_at",
        role="entity",
    ),
    TableSpec(
        "crm_deal_stage_changes",
        (
            Column("deal_record_id", not_null=True),
            Column("stage", not_null=True),
            Column("changed_at", "timestamp", not_null=True),
            Column("reason", required=False),
        ),
        required=False,
        freshness_column="changed_at",
        role="activity",
    ),
    TableSpec(
        "billing_customers",
        (
            Column("id", not_null=True),
            Column("email", lower=True),
            Column("created", "timestamp"),
            Column("metadata", "json", required=False),
        ),
        required=True,
        key=("id",),
        freshness_column="created",
        role="entity",
    ),
    TableSpec(
        "billing_subscriptions",
        (
            Column("id", not_null=True),
            Column("customer", not_null=True, references=("billing_customers", "id")),
            Column("status", not_null=True, allowed=STRIPE_SUBSCRIPTION_STATUSES, lower=True),
            Column("created", "timestamp", not_null=True),
            Column("trial_end", "timestamp", may_be_future=True),  # a running trial ends after today
            Column("canceled_at", "timestamp"),
            Column("plan_amount", "integer", not_null=True, min_value=0, minor_units=True),
            Column("plan_interval", not_null=True, allowed=("day", "week", "month", "year"), lower=True),
            # Stripe's plan.interval_count: a quarterly plan is interval month, interval_count 3; absent = 1.
            Column("plan_interval_count", "integer", required=False, min_value=1),
            Column("currency", "currency", not_null=True),
        ),
        required=True,
        key=("id",),
        freshness_column="created",
        role="entity",
    ),
    TableSpec(
        "billing_invoices",
        (
            Column("id", not_null=True),
            Column("customer", not_null=True, references=("billing_customers", "id")),
            Column("subscription"),
            Column("status", not_null=True, allowed=STRIPE_INVOICE_STATUSES, lower=True),
            Column("amount_paid", "integer", not_null=True, min_value=0, minor_units=True),
            Column("currency", "currency", not_null=True),
            Column("created", "timestamp", not_null=True),
            Column("paid_at", "timestamp"),
        ),
        required=True,
        key=("id",),
        freshness_column="created",
        role="activity",
    ),
    TableSpec(
        "intent_signals",
        (
            Column("company_domain", not_null=True, lower=True),
            Column("signal_type", not_null=True, lower=True),
            Column("occurred_at", "timestamp", not_null=True),
            Column("source", required=False),
            Column("payload", "json", required=False),
        ),
        required=False,
        freshness_column="occurred_at",
        role="activity",
    ),
)
"""The tables of a source directory (what an export holds, and `beton check` profiles)."""

INGESTED_TABLES: tuple[TableSpec, ...] = (
    *TABLES,
    TableSpec(
        TRACKED_EVENTS,
        EVENT_COLUMNS,
        required=False,
        key=("uuid",),
        freshness_column="timestamp",
        # No lag limit by default: exposures and conversions arrive only while an experiment runs, so a quiet
        # month says nothing about the export (the events' own check covers the product's activity).
        role="entity",
    ),
)
"""Every table the ingest loads: the source directory's, and the experiment events `beton serve` records."""

TABLES_BY_NAME: dict[str, TableSpec] = {t.name: t for t in INGESTED_TABLES}

MIN_TIMESTAMP = "1990-01-01"
"""Timestamps before this are quarantined: they are sentinel values (0, 1970) or typos."""
