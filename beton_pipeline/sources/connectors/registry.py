"""Which config class and dlt source each connector name has (the only place that maps names to modules).

The modules are imported here when asked for: dlt and the Stripe SDK load only for an enabled connector."""

from __future__ import annotations

import importlib
from pathlib import Path

MODULES: dict[str, tuple[str, str, str]] = {
    "posthog": ("beton_pipeline.sources.connectors.posthog", "PostHogConfig", "posthog_source"),
    "attio": ("beton_pipeline.sources.connectors.attio", "AttioConfig", "attio_source"),
    "stripe": ("beton_pipeline.sources.connectors.stripe_billing", "StripeConfig", "stripe_source"),
}
"""Connector name → (module, its config dataclass, its dlt source function)."""

NEEDS_LANDING = frozenset({"attio", "stripe"})
"""The connectors whose source reads back what it landed before (their snapshots), so it is given the landing."""


def _member(name: str, index: int):
    if name not in MODULES:
        raise ValueError(f"unknown connector {name!r}")
    module, *members = MODULES[name]
    return getattr(importlib.import_module(module), members[index])


def config_class(name: str) -> type:
    """The config dataclass of connector `name`; its fields include every setting of `sources.<name>`."""
    return _member(name, 0)


def connector_source(name: str, config, landing: Path):
    """The dlt source of connector `name` with its config (`Settings.connector_config(name)`)."""
    source = _member(name, 1)
    return source(config, landing) if name in NEEDS_LANDING else source(config)
