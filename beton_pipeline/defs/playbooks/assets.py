"""Playbook assets: the outbox (`playbook_actions`), the holdout readouts and the experiment readouts."""

from datetime import date

import dagster as dg
import polars as pl

from beton_pipeline.core.playbooks import PlaybookConfig, PlaybookConfigError
from beton_pipeline.core.readouts import assignment_counts, experiment_readout, treatment_readout
from beton_pipeline.defs.playbooks.resources import (
    ATTIO_KEY_ENV,
    SLACK_TOKEN_ENV,
    AttioResource,
    DeliveryClockResource,
    SlackResource,
    WebhookResource,
)
from beton_pipeline.defs.resources import WAREHOUSE_POOL, SettingsResource, WarehouseResource
from beton_pipeline.destinations.http import RetryPolicy
from beton_pipeline.store import outbox
from beton_pipeline.warehouse import table_exists

PLAYBOOK_READOUTS_TABLE = "beton.playbook_readouts"
EXPERIMENT_READOUTS_TABLE = "beton.experiment_readouts"


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


def _status_markdown(counts: pl.DataFrame) -> str:
    if counts.is_empty():
        return "The outbox is empty."
    lines = ["| playbook | destination | status | actions |", "|---|---|---|---|"]
    lines += [f"| {r['playbook']} | {r['destination']} | {r['status']} | {r['n']} |" for r in counts.iter_rows(named=True)]
    return "\n".join(lines)


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
        dg.AssetCheckSpec("no_dead_actions", asset="playbook_actions", description="no action of this run ended dead (a destination rejected it or stayed down)"),
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
    enabled = [p for p in pcfg.playbooks if p.enabled]
    if config.playbooks:
        unknown = sorted(set(config.playbooks) - {p.name for p in pcfg.playbooks})
        if unknown:
            raise dg.Failure(description=f"unknown playbook(s) {', '.join(unknown)}: not in beton.yaml")
        enabled = [p for p in enabled if p.name in config.playbooks]
    try:
        days = [date.fromisoformat(d) for d in config.days]
    except ValueError as exc:
        raise dg.Failure(description=f"run config days: {exc} (expected YYYY-MM-DD)") from None
    dry = config.dry_run or pcfg.destinations.dry_run
    dest = pcfg.destinations
    senders = {
        "slack": slack.sender(dest.timeout_seconds) or outbox.MissingCredentials(SLACK_TOKEN_ENV),
        "attio": attio.sender(dest.timeout_seconds) or outbox.MissingCredentials(ATTIO_KEY_ENV),
        "webhook": webhooks.sender(dest.webhook_allowed_hosts, dest.timeout_seconds),
    }
    secrets = slack.secrets() + attio.secrets() + webhooks.secrets()
    policy = RetryPolicy(  # max_attempts comes with each row (its playbook's)
        base_seconds=dest.backoff_base_seconds,
        max_seconds=dest.backoff_max_seconds,
        max_inline_wait_seconds=dest.max_inline_wait_seconds,
    )
    run_id = context.run.run_id
    stats = outbox.DeliveryStats()
    enqueued = outbox.EnqueueResult(0, 0, 0)
    days_planned: dict[str, list[date]] = {"account": [], "health": []}
    with warehouse.connect() as con:
        outbox.ensure_tables(con)
        if config.plan and enabled:
            planned, days_planned = outbox.plan_actions(con, pcfg, enabled, days or None, dry_run=dry)
            enqueued = outbox.enqueue(con, planned, delivery_clock.now(), run_id)
            if not days_planned["account"] and any(p.kind == "account" for p in enabled):
                context.log.info("No beton.account_scores rows for the requested day(s): no account playbook planned")
        if config.send and not dry:
            stats = outbox.deliver(
                con, senders, policy, playbooks=[p.name for p in enabled], now=delivery_clock.now,
                sleep=delivery_clock.sleep, run_id=run_id, secrets=secrets, log=context.log.warning,
            )
        counts = outbox.status_counts(con)
    metadata = {
        "playbooks": dg.MetadataValue.json([p.name for p in enabled]),
        "days_planned": dg.MetadataValue.json(sorted({d.isoformat() for ds in days_planned.values() for d in ds})),
        "dry_run": dry,
        "inserted": enqueued.inserted,
        "promoted_from_dry_run": enqueued.promoted_from_dry_run,
        "already_present": enqueued.already_present,
        **{f"delivery_{k}": v for k, v in stats.as_metadata().items()},
        "outbox": dg.MetadataValue.md(_status_markdown(counts)),
    }
    if stats.blocked:
        missing = ", ".join(f"{env} ({n} action(s))" for env, n in sorted(stats.blocked.items()))
        raise dg.Failure(
            description=f"not set: {missing}. Those actions stay pending and are sent once the variable is set and the delivery re-runs",
            metadata=metadata,
        )
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name="no_dead_actions",
                passed=stats.dead == 0,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"dead_this_run": stats.dead, "last_errors": dg.MetadataValue.json(stats.errors[-5:])},
            )
        ],
    )


def replace_table(con, table: str, frame: pl.DataFrame | None) -> None:
    """Replace a fully recomputed table with ``frame`` in one statement; None empties it (if it exists)."""
    schema, name = table.split(".")
    if frame is None:
        if table_exists(con, schema, name):
            con.execute(f"delete from {table}")
        return
    con.execute(f"create schema if not exists {schema}")
    con.register("_beton_readout", frame.to_arrow())
    try:
        con.execute(f"create or replace table {table} as select * from _beton_readout")
    finally:
        con.unregister("_beton_readout")


def _fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None or x != x else f"{x:.{digits}f}"


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
def playbook_readouts(context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings: SettingsResource) -> dg.MaterializeResult:
    cfg = settings.load()
    pcfg = load_playbook_config(settings)
    rows = []
    with warehouse.connect() as con:
        for pb in pcfg.playbooks:
            if pb.kind != "account":
                continue
            window = pb.readout_window_days or cfg.windows.conversion_window_days
            assigned, as_of = outbox.read_assignments(con, pb.name)
            counts = assignment_counts(assigned, as_of, window)
            r = treatment_readout(
                counts.conversions_treated, counts.n_treated, counts.conversions_held_out, counts.n_held_out,
                pb.effective_holdout_fraction, cfg.thresholds.confidence_level,
            )
            rows.append(
                {
                    "playbook": pb.name, "as_of": as_of, "holdout_fraction": pb.effective_holdout_fraction, "readout_window_days": window,
                    "n_treated": r.n_treated, "conversions_treated": r.conversions_treated, "rate_treated": r.rate_treated,
                    "n_held_out": r.n_held_out, "conversions_held_out": r.conversions_held_out, "rate_held_out": r.rate_held_out,
                    "rate_diff": r.rate_diff, "diff_ci_low": r.diff_ci_low, "diff_ci_high": r.diff_ci_high,
                    "lift": r.lift, "lift_ci_low": r.lift_ci_low, "lift_ci_high": r.lift_ci_high,
                    "p_value": r.p_value, "method": r.method, "significant": r.significant, "confidence_level": r.confidence_level,
                    "observed_holdout_fraction": r.observed_holdout_fraction, "srm_pvalue": r.srm_pvalue, "srm_flag": r.srm_flag,
                    "small_sample": r.small_sample, "warnings": "; ".join(r.warnings),
                    "n_awaiting_outcome": counts.n_awaiting_outcome, "n_converted_before": counts.n_converted_before,
                    "n_unknown_account": counts.n_unknown_account,
                }
            )
        replace_table(con, PLAYBOOK_READOUTS_TABLE, pl.DataFrame(rows, infer_schema_length=None) if rows else None)
    lines = ["| playbook | treated | held out | lift (CI) | p | SRM p | warnings |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['playbook']} | {r['conversions_treated']}/{r['n_treated']} | {r['conversions_held_out']}/{r['n_held_out']} "
            f"| {_fmt(r['lift'])} ({_fmt(r['lift_ci_low'])}–{_fmt(r['lift_ci_high'])}) | {_fmt(r['p_value'], 4)} | {_fmt(r['srm_pvalue'], 4)} | {r['warnings'] or '—'} |"
        )
    return dg.MaterializeResult(
        metadata={
            "playbooks": len(rows),
            "readouts": dg.MetadataValue.md("\n".join(lines) if rows else "No account playbook configured."),
        }
    )


@dg.asset(
    group_name="playbooks",
    kinds={"python", "duckdb"},
    pool=WAREHOUSE_POOL,
    deps=["int_events_resolved"],
    automation_condition=dg.AutomationCondition.eager(),
    description=(
        "beton.experiment_readouts: per experiment in beton.yaml and variant, from PostHog $feature_flag_called exposures "
        "(first exposure per user) and the experiment's goal event after it: exposures, conversions, rate (Wilson CI), "
        "difference (Newcombe CI) and lift (Katz log CI) vs control, p-value (pooled z-test; Fisher exact below "
        "expected count 5), Holm-adjusted p across the variants, sample-ratio mismatch, small-sample warnings and a "
        "plain-text summary."
    ),
)
def experiment_readouts(context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings: SettingsResource) -> dg.MaterializeResult:
    cfg = settings.load()
    pcfg = load_playbook_config(settings)
    tables, summaries = [], []
    with warehouse.connect() as con:
        for exp in pcfg.experiments:
            counts, diag = outbox.experiment_counts(con, exp.flag, exp.goal_event, exp.conversion_window_days, exp.start, exp.end)
            notes = []
            if diag["saw_several_variants"]:
                notes.append(f"{diag['saw_several_variants']} user(s) saw more than one variant (counted in their first)")
            if diag["awaiting_window"]:
                notes.append(f"{diag['awaiting_window']} user(s) exposed too recently to count (inside the conversion window)")
            expected = list(exp.variants) or sorted(set(counts.get_column("variant").to_list()) | {exp.control})
            unexpected = counts.filter(~pl.col("variant").is_in(expected))
            if unexpected.height:
                notes.append(
                    "unexpected variant(s) left out: "
                    + ", ".join(f"{v} ({n})" for v, n in unexpected.select("variant", "exposures").iter_rows())
                )
            by_variant = {v: (e, c) for v, e, c in counts.iter_rows()}
            readout = experiment_readout(
                exp.name, exp.goal_event, expected,
                [by_variant.get(v, (0, 0))[0] for v in expected], [by_variant.get(v, (0, 0))[1] for v in expected],
                control=exp.control, expected_shares=list(exp.weights) or None,
                confidence_level=cfg.thresholds.confidence_level, notes=notes,
            )
            tables.append(readout.table)
            summaries.append(readout.summary)
            context.log.info(readout.summary)
        replace_table(con, EXPERIMENT_READOUTS_TABLE, pl.concat(tables, how="vertical_relaxed") if tables else None)
    return dg.MaterializeResult(
        metadata={
            "experiments": len(tables),
            "summary": dg.MetadataValue.text("\n\n".join(summaries) if summaries else "No experiment configured (experiments: in beton.yaml)."),
        }
    )
