"""Jobs for playbooks: delivery (the outbox) and readouts."""

import dagster as dg

playbook_delivery_job = dg.define_asset_job(
    "playbook_delivery_job",
    selection=dg.AssetSelection.assets("playbook_actions"),
    description=(
        "Plan one playbook-day's actions into beton.playbook_actions and send what is due. Requested by the "
        "playbook sensors with run_key = playbook:day; safe to re-run (the outbox never sends a key twice)."
    ),
)

playbook_readouts_job = dg.define_asset_job(
    "playbook_readouts_job",
    selection=dg.AssetSelection.assets("playbook_readouts", "experiment_readouts"),
    description="Recompute the playbook holdout readouts and the experiment readouts.",
)
