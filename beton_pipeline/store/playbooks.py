"""Playbooks, warehouse side: which rows a playbook-day adds to the outbox, and one delivery run.

Reads what the rules need (`beton.account_scores` for account playbooks, `beton.signal_health` for
health playbooks, recent outbox rows for the cooldown), lets `core.playbooks` decide which actions
to take and what each says, has each destination render its message into the stored payload
(Slack Block Kit, an Attio record update, a webhook event), and hands the rows to the outbox
(`store/outbox.py`), which sends them. The sensors' cheap reads live here too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Protocol

import duckdb
import polars as pl

from beton_pipeline.core.playbooks import (
    AccountMatchedEvent,
    AttioRecordUpdate,
    HealthChangedEvent,
    Message,
    PlannedAction,
    Playbook,
    PlaybookConfig,
    SlackAccountMessage,
    SlackHealthMessage,
    health_changes,
    is_stale,
    match_accounts,
    plan_account_actions,
    plan_health_actions,
)
from beton_pipeline.core.playbooks import with_signal_ids as decode_signal_ids
from beton_pipeline.destinations import attio, slack, webhook
from beton_pipeline.store import outbox
from beton_pipeline.store.signal_detail import signal_names
from beton_pipeline.warehouse import table_exists

SCORES_TABLE = "beton.account_scores"
HEALTH_TABLE = "beton.signal_health"
SCORE_COLUMNS = (
    "account_id",
    "score",
    "score_rank",
    "signals_fired",
    "top_contributions",
    "domain",
    "company_name",
    "is_crm_company",
)
HEALTH_SCHEMA = {
    "day": pl.Date,
    "signal_id": pl.String,
    "definition": pl.String,
    "health": pl.String,
    "lift": pl.Float64,
    "lift_ci_low": pl.Float64,
    "lift_ci_high": pl.Float64,
    "backtest_lift": pl.Float64,
}


# ------------------------------------------------------------------------------------------------
# Reads: scores and health
# ------------------------------------------------------------------------------------------------
def score_days(con: duckdb.DuckDBPyConnection) -> list[date]:
    """Days present in ``beton.account_scores`` (ascending); [] when the table does not exist."""
    if not table_exists(con, "beton", "account_scores"):
        return []
    return [r[0] for r in con.sql(f"select distinct day from {SCORES_TABLE} order by 1").fetchall()]


def latest_score_day(con: duckdb.DuckDBPyConnection) -> date | None:
    """The latest day in ``beton.account_scores`` (None when empty or missing)."""
    if not table_exists(con, "beton", "account_scores"):
        return None
    return con.sql(f"select max(day) from {SCORES_TABLE}").fetchall()[0][0]


def read_scores(
    con: duckdb.DuckDBPyConnection, day: date, columns: Sequence[str] = SCORE_COLUMNS, with_signal_ids: bool = False
) -> pl.DataFrame:
    """One day of ``beton.account_scores`` (``signals_fired`` and ``top_contributions`` as lists of structs);
    ``with_signal_ids`` adds the ids of the fired signals an account qualifies through (not broken that day:
    ``core.playbooks.with_signal_ids``)."""
    wanted = list(columns)
    if with_signal_ids and "signals_fired" not in wanted:
        wanted.append("signals_fired")
    scores = con.sql(f"select {', '.join(wanted)} from {SCORES_TABLE} where day = ?", params=[day]).pl()
    if not with_signal_ids:
        return scores
    return decode_signal_ids(scores).select(*columns, "signal_ids")


def read_signal_health(con: duckdb.DuckDBPyConnection, since: date | None = None) -> pl.DataFrame:
    """``beton.signal_health`` (every day, or from the day before ``since`` on so changes on ``since`` are visible)."""
    if not table_exists(con, "beton", "signal_health"):
        return pl.DataFrame(schema=HEALTH_SCHEMA)
    cols = ", ".join(HEALTH_SCHEMA)
    if since is None:
        return con.sql(f"select {cols} from {HEALTH_TABLE} order by signal_id, day").pl()
    # The latest earlier observation per signal is the baseline of the first day read.
    return con.sql(
        f"""
        select {cols} from {HEALTH_TABLE} h
        where day >= (select coalesce(max(day), ?) from {HEALTH_TABLE} p where p.signal_id = h.signal_id and p.day < ?)
        order by signal_id, day
        """,
        params=[since, since],
    ).pl()


def recently_planned(con: duckdb.DuckDBPyConnection, playbook: str, day: date, cooldown_days: int) -> set[str]:
    """Accounts with a (non dry-run) row for ``playbook`` in the ``cooldown_days`` days before ``day``."""
    if not table_exists(con, "beton", "playbook_actions"):
        return set()
    rows = con.sql(
        f"select distinct account_id from {outbox.ACTIONS_TABLE} where playbook = ? and account_id is not null and status <> 'dry_run' "
        "and day < ? and day >= ?",
        params=[playbook, day, day - timedelta(days=cooldown_days)],
    ).fetchall()
    return {r[0] for r in rows}


# ------------------------------------------------------------------------------------------------
# Planning: which rows a playbook-day adds to the outbox
# ------------------------------------------------------------------------------------------------
PAYLOAD_RENDERERS: Mapping[type, Callable[..., dict]] = {
    SlackAccountMessage: slack.account_payload,
    SlackHealthMessage: slack.health_payload,
    AttioRecordUpdate: attio.update_payload,
    AccountMatchedEvent: webhook.account_matched_payload,
    HealthChangedEvent: webhook.health_changed_payload,
}
"""Each message kind and the destination function that renders its stored payload."""


def payload_json(message: Message) -> str:
    """The stored payload of one message: its destination's rendering as canonical JSON text."""
    return json.dumps(PAYLOAD_RENDERERS[type(message)](message), sort_keys=True, ensure_ascii=False, default=str)


def outbox_rows(actions: Sequence[PlannedAction]) -> pl.DataFrame:
    """Planned actions as outbox rows (``outbox.OUTBOX_PLAN_SCHEMA``), each message rendered to its payload."""
    rows = [
        {
            "idempotency_key": a.idempotency_key,
            "playbook": a.playbook,
            "day": a.day,
            "account_id": a.account_id,
            "signal_id": a.signal_id,
            "destination": a.destination,
            "destination_type": a.destination_type,
            "held_out": a.held_out,
            "status": a.status,
            "max_attempts": a.max_attempts,
            "payload": payload_json(a.message),
        }
        for a in actions
    ]
    return (
        pl.DataFrame(rows, schema=outbox.OUTBOX_PLAN_SCHEMA) if rows else pl.DataFrame(schema=outbox.OUTBOX_PLAN_SCHEMA)
    )


def plan_actions(
    con: duckdb.DuckDBPyConnection,
    config: PlaybookConfig,
    playbooks: Sequence[Playbook],
    days: Sequence[date] | None = None,
    dry_run: bool = False,
) -> tuple[pl.DataFrame, dict[str, list[date]]]:
    """Planned outbox rows for ``playbooks`` on ``days`` (None: each kind's latest day in the warehouse).

    A day older than the latest day by more than ``destinations.max_action_age_days`` is planned as
    ``dry_run`` (recorded, never sent), so backfilling history pages nobody. An account planned for
    the playbook in its ``cooldown_days`` before a day (in the outbox or earlier in this batch) is
    not planned again that day.

    Account playbooks read ``beton.account_scores`` for each day (once per day, shared by the
    playbooks); health playbooks read ``beton.signal_health`` and plan the changes of each day.
    Returns the rows and the days planned per playbook kind (a missing table plans nothing).
    """
    planned: list[PlannedAction] = []
    account_pbs = [p for p in playbooks if p.kind == "account"]
    health_pbs = [p for p in playbooks if p.kind == "health"]
    days_planned: dict[str, list[date]] = {"account": [], "health": []}
    max_age = config.destinations.max_action_age_days
    names = signal_names(con) if playbooks else {}  # plain-language names for what a sales rep reads
    if account_pbs:
        available = score_days(con)
        wanted = list(days) if days else available[-1:]
        in_batch: dict[str, dict[str, date]] = {
            pb.name: {} for pb in account_pbs
        }  # playbook → account → last day planned
        for day in sorted(set(wanted)):
            if day not in available:
                continue
            scores = read_scores(con, day, with_signal_ids=True)
            dry = dry_run or is_stale(day, available[-1], max_age)
            for pb in account_pbs:
                matched = match_accounts(scores, pb.when)
                if pb.cooldown_days and not matched.is_empty():
                    cooling = recently_planned(con, pb.name, day, pb.cooldown_days)
                    cooling |= {a for a, d in in_batch[pb.name].items() if 0 < (day - d).days <= pb.cooldown_days}
                    matched = matched.filter(~pl.col("account_id").is_in(sorted(cooling)))
                actions = plan_account_actions(
                    pb, matched, day, config.destinations, dry, signal_names=names, app_base_url=config.app_base_url
                )
                in_batch[pb.name].update(dict.fromkeys((a.account_id for a in actions), day))
                planned += actions
            days_planned["account"].append(day)
    if health_pbs:
        health = read_signal_health(con, since=min(days) if days else None)
        if not health.is_empty():
            health_days = sorted(set(health.get_column("day").to_list()))
            wanted = list(days) if days else health_days[-1:]
            for pb in health_pbs:
                changes = health_changes(health, pb.when.health_changed_to, pb.when.health_of)
                for day in wanted:
                    dry = dry_run or is_stale(day, health_days[-1], max_age)
                    planned += plan_health_actions(
                        pb, changes, day, config.destinations, dry, signal_names=names, app_base_url=config.app_base_url
                    )
            days_planned["health"] = [d for d in wanted if d in health_days]
    return outbox_rows(planned), days_planned


# ------------------------------------------------------------------------------------------------
# One delivery run: plan, enqueue, send
# ------------------------------------------------------------------------------------------------
class RunLog(Protocol):
    """Where a delivery run reports (a `logging.Logger` or Dagster's `context.log`)."""

    def info(self, msg: str) -> None: ...

    def warning(self, msg: str) -> None: ...


@dataclass(frozen=True)
class PlaybookRun:
    """What one delivery run did: the playbooks and days planned, the enqueue, the delivery, the outbox after it."""

    playbooks: list[str]
    days_planned: dict[str, list[date]]
    dry_run: bool
    enqueued: outbox.EnqueueResult
    delivery: outbox.DeliveryStats
    status_counts: pl.DataFrame


def run_playbooks(
    con: duckdb.DuckDBPyConnection,
    config: PlaybookConfig,
    playbooks: Sequence[Playbook],
    days: Sequence[date] | None,
    senders: Mapping[str, outbox.Sender],
    *,
    plan: bool = True,
    send: bool = True,
    dry_run: bool = False,
    now: Callable[[], datetime] = outbox.utc_now,
    sleep: Callable[[float], None] | None = None,
    run_id: str | None = None,
    secrets: Sequence[str] = (),
    log: RunLog | None = None,
) -> PlaybookRun:
    """Plan ``playbooks`` on ``days`` into the outbox (unless ``plan`` is False) and send what is due.

    Nothing is sent in a dry run (``dry_run`` or ``destinations.dry_run``) or with ``send`` False.
    """
    dry = dry_run or config.destinations.dry_run
    stats = outbox.DeliveryStats()
    enqueued = outbox.EnqueueResult(0, 0, 0)
    days_planned: dict[str, list[date]] = {"account": [], "health": []}
    outbox.ensure_tables(con)
    if plan and playbooks:
        planned, days_planned = plan_actions(con, config, playbooks, days or None, dry_run=dry)
        enqueued = outbox.enqueue(con, planned, now(), run_id)
        if log and not days_planned["account"] and any(p.kind == "account" for p in playbooks):
            log.info("No beton.account_scores rows for the requested day(s): no account playbook planned")
    if send and not dry:
        stats = outbox.deliver(
            con,
            senders,
            outbox.retry_policy(config.destinations),
            playbooks=[p.name for p in playbooks],
            now=now,
            sleep=sleep,
            run_id=run_id,
            secrets=secrets,
            log=log.warning if log else None,
        )
    return PlaybookRun([p.name for p in playbooks], days_planned, dry, enqueued, stats, outbox.status_counts(con))


# ------------------------------------------------------------------------------------------------
# The sensors' reads
# ------------------------------------------------------------------------------------------------
def account_matches(
    con: duckdb.DuckDBPyConnection, config: PlaybookConfig, days: Sequence[date]
) -> list[tuple[str, date, int]]:
    """(playbook, day, accounts matched) for every enabled account playbook with matches on ``days``.

    Reads only the columns the rules need (signal ids decoded by DuckDB); this is the sensor's cost.
    """
    playbooks = config.account_playbooks
    if not playbooks:
        return []
    needs_signals = any(p.when.any_signals or p.when.all_signals for p in playbooks)
    out = []
    for day in days:
        scores = read_scores(con, day, columns=("account_id", "score", "score_rank"), with_signal_ids=needs_signals)
        for pb in playbooks:
            n = match_accounts(scores, pb.when).height
            if n:
                out.append((pb.name, day, n))
    return out


def health_requests(
    con: duckdb.DuckDBPyConnection, config: PlaybookConfig, through_day: date | None
) -> tuple[list[tuple[str, date, list[str]]], dict[str, str], date | None]:
    """(playbook, day, changed signal ids) after ``through_day``; the latest health per signal; the last day.

    Without ``through_day`` (a sensor's first tick) only the latest day is considered, so deploying
    beton does not replay months of past health changes into Slack.
    """
    health = read_signal_health(con, since=through_day)
    if health.is_empty():
        return [], {}, through_day
    last_day = max(health.get_column("day").to_list())
    latest = {r["signal_id"]: r["health"] for r in health.sort("day").iter_rows(named=True)}
    requests = []
    for pb in config.health_playbooks:
        changes = health_changes(health, pb.when.health_changed_to, pb.when.health_of)
        days = sorted(set(changes.get_column("day").to_list()))
        days = [d for d in days if (d > through_day if through_day else d == last_day)]
        for day in days:
            ids = sorted(changes.filter(changes["day"] == day).get_column("signal_id").to_list())
            requests.append((pb.name, day, ids))
    return requests, latest, last_day
