"""Playbook assets: the outbox (`playbook_actions`), the holdout readouts and the experiment readouts."""

import dataclasses
from datetime import date

import dagster as dg

from beton_pipeline.core.formatting import fmt, fmt_estimate, markdown_table
from beton_pipeline.core.playbooks import PlaybookConfig, PlaybookConfigError
from beton_pipeline.defs.playbooks.resources import (
    AttioResource,
    DeliveryClockResource,
    SlackResource,
    WebhookResource,
    delivery_senders,
)
from beton_pipeline.defs.resources import WAREHOUSE_POOL, SettingsResource, WarehouseResource
from beton_pipeline.store import experiments, playbooks, readouts


class PlaybookRunConfig(dg.Config):
    """Which playbooks and days a delivery run plans, and whether it sends."""

    playbooks: list[str] = []
    """Playbook names; empty = every enabled playbook."""
    days: list[str] = []
    """Days (YYYY-MM-DD) to plan; empty = the latest scored day (and the latest health day)."""
    plan: bool = True
    """False: only send what is due (the retry sensor's runs)."""
    send: bool = True
    """False: plan into the outbox without sending."""
    dry_run: bool = False
    """Record the planned rows as dry_run and send nothing (also `destinations.dry_run` in beton.yaml)."""


def load_playbook_config(settings: SettingsResource) -> PlaybookConfig:
    """The playbook configuration, or a run failure naming the bad beton.yaml field."""
    try:
        return settings.load().playbook_config()
    except PlaybookConfigError as exc:
        raise dg.Failure(description=f"beton.yaml: {exc}") from None


@dg.asset(
    group_name="playbooks",
    kinds={"python", "duckdb", "slack"},
    pool=WAREHOUSE_POOL,
    deps=["account_scores", "signal_health"],
    description=(
        "The playbook outbox, beton.playbook_actions: one row per (playbook, account or signal, day, destination), "
        "inserted only if its idempotency key is absent, then sent to Slack / Attio / webhooks with retries "
        "(exponential backoff, Retry-After honoured on 429) until sent or dead. Randomized holdout accounts are "
        "recorded as held_out and never acted on; a dry run records dry_run rows. Every attempt is logged in "
        "beton.playbook_action_attempts. Re-runs and backfills never send a key twice."
    ),
    check_specs=[
        dg.AssetCheckSpec(
            "no_dead_actions",
            asset="playbook_actions",
            description="no action of this run ended dead (a destination rejected it or stayed down)",
        ),
    ],
)
def playbook_actions(
    context: dg.AssetExecutionContext,
    config: PlaybookRunConfig,
    warehouse: WarehouseResource,
    settings: SettingsResource,
    slack: SlackResource,
    attio: AttioResource,
    webhooks: WebhookResource,
    delivery_clock: DeliveryClockResource,
) -> dg.MaterializeResult:
    pcfg = load_playbook_config(settings)
    try:
        selected = pcfg.selected(config.playbooks)
        days = [date.fromisoformat(d) for d in config.days]
    except PlaybookConfigError as exc:
        raise dg.Failure(description=str(exc)) from None
    except ValueError as exc:
        raise dg.Failure(description=f"run config days: {exc} (expected YYYY-MM-DD)") from None
    senders, secrets = delivery_senders(slack, attio, webhooks, pcfg.destinations)
    with warehouse.connect() as con:
        run = playbooks.run_playbooks(
            con,
            pcfg,
            selected,
            days,
            senders,
            plan=config.plan,
            send=config.send,
            dry_run=config.dry_run,
            now=delivery_clock.now,
            sleep=delivery_clock.sleep,
            run_id=context.run.run_id,
            secrets=secrets,
            log=context.log,
        )
    metadata = {
        "playbooks": dg.MetadataValue.json(run.playbooks),
        "days_planned": dg.MetadataValue.json(sorted({d.isoformat() for ds in run.days_planned.values() for d in ds})),
        "dry_run": run.dry_run,
        "inserted": run.enqueued.inserted,
        "promoted_from_dry_run": run.enqueued.promoted_from_dry_run,
        "already_present": run.enqueued.already_present,
        **{f"delivery_{k}": v for k, v in run.delivery.as_metadata().items()},
        "outbox": dg.MetadataValue.md(
            markdown_table(
                ["playbook", "destination", "status", "actions"],
                run.status_counts.iter_rows(),
                empty="The outbox is empty.",
            )
        ),
    }
    if run.delivery.blocked:
        missing = ", ".join(f"{env} ({n} action(s))" for env, n in sorted(run.delivery.blocked.items()))
        raise dg.Failure(
            description=f"not set: {missing}. Those actions stay pending and are sent once the variable is set and the delivery re-runs",
            metadata=metadata,
        )
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name="no_dead_actions",
                passed=run.delivery.dead == 0,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "dead_this_run": run.delivery.dead,
                    "last_errors": dg.MetadataValue.json(run.delivery.errors[-5:]),
                },
            )
        ],
    )


@dg.asset(
    group_name="playbooks",
    kinds={"python", "duckdb"},
    pool=WAREHOUSE_POOL,
    deps=[playbook_actions, "account_outcomes"],
    automation_condition=dg.AutomationCondition.eager(),
    description=(
        "beton.playbook_readouts: per account playbook, treated vs randomized held-out accounts (intention to treat, "
        "first action day per account, conversion within the readout window, outcome known): rates, difference "
        "(Newcombe CI), lift (Katz log CI), two-sided p (pooled z-test; Fisher exact below expected count 5), "
        "sample-ratio-mismatch chi-square (p < 0.001 flags) and small-sample warnings."
    ),
)
def playbook_readouts(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings: SettingsResource
) -> dg.MaterializeResult:
    cfg = settings.load()
    pcfg = load_playbook_config(settings)
    with warehouse.connect() as con:
        rows = readouts.write_playbook_readouts(
            con, pcfg, cfg.windows.conversion_window_days, cfg.thresholds.confidence_level
        )
    table = markdown_table(
        ["playbook", "treated", "held out", "lift (CI)", "p", "SRM p", "warnings"],
        [
            [
                r["playbook"],
                f"{r['conversions_treated']}/{r['n_treated']}",
                f"{r['conversions_held_out']}/{r['n_held_out']}",
                fmt_estimate(r["lift"], r["lift_ci_low"], r["lift_ci_high"]),
                fmt(r["p_value"], ".4f"),
                fmt(r["srm_pvalue"], ".4f"),
                r["warnings"] or "—",
            ]
            for r in rows
        ],
        empty="No account playbook configured.",
    )
    return dg.MaterializeResult(metadata={"playbooks": len(rows), "readouts": dg.MetadataValue.md(table)})


@dg.asset(
    group_name="playbooks",
    kinds={"python", "duckdb"},
    pool=WAREHOUSE_POOL,
    deps=["int_experiment_exposures", "int_events_resolved"],
    automation_condition=dg.AutomationCondition.eager(),
    description=(
        "beton.experiment_readouts: per experiment and variant — beton.yaml's experiments and those defined in "
        "`beton serve` that have started (beton.experiments: Running, Readout, Shipped or Killed) — from PostHog $feature_flag_called exposures "
        "(first exposure per user) and the experiment's goal event after it: exposures, conversions, rate (Wilson CI), "
        "difference (Newcombe CI) and lift (Katz log CI) vs control, p-value (pooled z-test; Fisher exact below "
        "expected count 5), Holm-adjusted p across the variants, sample-ratio mismatch, small-sample warnings and a "
        "plain-text summary."
    ),
)
def experiment_readouts(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings: SettingsResource
) -> dg.MaterializeResult:
    cfg = settings.load()
    pcfg = load_playbook_config(settings)
    with warehouse.connect() as con:
        started = experiments.started_app_experiments(con, pcfg)
        every = dataclasses.replace(pcfg, experiments=pcfg.experiments + started)
        results, failed = readouts.write_experiment_readouts(con, every, cfg.thresholds.confidence_level)
    for readout in results:
        context.log.info(readout.summary)
    for name, reason in failed.items():
        context.log.warning(f"experiment {name} could not be read out and is left out: {reason}")
    summary = "\n\n".join(r.summary for r in results) or (
        "No experiment configured (experiments: in beton.yaml) or started in beton serve."
    )
    return dg.MaterializeResult(
        metadata={
            "experiments": len(results),
            "app_experiments": len(started),
            "not_read_out": dg.MetadataValue.json(failed),
            "summary": dg.MetadataValue.text(summary),
        }
    )
