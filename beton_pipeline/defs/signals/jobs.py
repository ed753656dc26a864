"""The discovery job: aggregate the cohort counts into beton.signals, then train and backtest the lead-score model."""

import dagster as dg

discovery_job = dg.define_asset_job(
    "discovery_job",
    selection=dg.AssetSelection.assets("signals", "lead_score_model"),
    description=(
        "Aggregate the per-cohort counts into beton.signals (run after the cohort partitions are fresh), "
        "then train and backtest the lead-score model."
    ),
)
