"""Connectors: pull PostHog, Attio and Stripe with dlt into a landing folder the ingest reads like files.

This package's root imports nothing heavy (no dlt): settings and the Dagster definitions use `TABLES_BY_SOURCE`
to know which contract tables each connector fills; the connectors themselves live in their modules
(`posthog`, `attio`, `stripe_billing`), and what they share in `common`.
"""

TABLES_BY_SOURCE: dict[str, tuple[str, ...]] = {
    "posthog": ("events",),
    "attio": ("crm_companies", "crm_people", "crm_deals", "crm_deal_stage_changes"),
    "stripe": ("billing_customers", "billing_subscriptions", "billing_invoices"),
}
"""The contract tables each connector lands (one dlt resource each, named as the table)."""

SOURCES: tuple[str, ...] = tuple(TABLES_BY_SOURCE)
