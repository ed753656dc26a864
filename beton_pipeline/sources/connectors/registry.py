"""Which dlt source each connector name builds (the only place that maps the two)."""

from __future__ import annotations

from pathlib import Path


def connector_source(name: str, config, landing: Path):
    """The dlt source of connector `name` with its config (`Settings.connector_config(name)`)."""
    if name == "posthog":
        from beton_pipeline.sources.connectors.posthog import posthog_source

        return posthog_source(config)
    if name == "attio":
        from beton_pipeline.sources.connectors.attio import attio_source

        return attio_source(config, landing)
    if name == "stripe":
        from beton_pipeline.sources.connectors.stripe_billing import stripe_source

        return stripe_source(config, landing)
    raise ValueError(f"unknown connector {name!r}")
