"""The outbox, `beton.playbook_actions`, and the warehouse reads playbooks and readouts need.

One row per (playbook, account or signal, day, destination), keyed by its idempotency key
(`core.playbooks.idempotency_key`). Lifecycle::

    pending ──send──▶ sent
       │  └─transient failure─▶ retrying ──(due again)──▶ sent | retrying | dead
       └─permanent failure or max_attempts reached──▶ dead
    held_out   matched but randomized out of the playbook: recorded, never sent
    dry_run    what would have been sent; a later real run turns it into pending/held_out

Guarantees:

* **Nothing twice.** Rows are inserted only if their key is absent (`on conflict do nothing`), and
  only `pending`/`retrying` rows are ever sent: re-running a day or backfilling days inserts nothing
  new for keys that exist, whatever their status.
* **Nothing lost.** A row is written before any attempt and never deleted; every attempt is first
  *claimed* (attempts + 1, status `retrying`, `next_attempt_at` = now + lease) and then its outcome
  recorded, each in its own committed statement. A destination that is down leaves `retrying` or
  `dead` rows with the redacted error, never a missing one. If the process dies between the HTTP call
  and the write of its outcome (a window of milliseconds), the row is retried after the lease:
  at-least-once in that one case, which webhook receivers can dedupe with the `Idempotency-Key` header.
* Every attempt is also appended to `beton.playbook_action_attempts` (status code, wait, error).

Writes need the warehouse writer (assets run in the `duckdb_warehouse` pool of size 1, so two
deliveries never overlap); sensors only read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Protocol

import duckdb
import polars as pl

from beton_pipeline.core.playbooks import (
    OUTBOX_PLAN_SCHEMA,
    Playbook,
    PlaybookConfig,
    health_changes,
    is_stale,
    match_accounts,
    plan_account_actions,
    plan_health_actions,
)
from beton_pipeline.destinations.http import DeliveryResult, RetryPolicy, redact
from beton_pipeline.warehouse import table_exists

ACTIONS_TABLE = "beton.playbook_actions"
ATTEMPTS_TABLE = "beton.playbook_action_attempts"
SCORES_TABLE = "beton.account_scores"
HEALTH_TABLE = "beton.signal_health"
CLAIM_LEASE = timedelta(minutes=10)
"""A claimed attempt whose outcome was never recorded (the process died) is retried after this."""
IN_FLIGHT_ERROR = "attempt in flight: its outcome was not recorded (the run stopped during the attempt)"

ACTIONS_DDL = f"""
create table if not exists {ACTIONS_TABLE} (
    idempotency_key varchar primary key,   -- sha256(playbook, account or signal, day, destination)[:32]
    playbook varchar not null,
    day date not null,
    account_id varchar,                    -- account playbooks
    signal_id varchar,                     -- health playbooks
    destination varchar not null,          -- slack:#channel, attio:companies.beton_score, webhook:<name>
    destination_type varchar not null,     -- slack | attio | webhook
    held_out boolean not null,             -- randomized out of the playbook (never sent)
    status varchar not null,               -- pending | sent | retrying | dead | held_out | dry_run
    attempts integer not null default 0,
    max_attempts integer not null,
    next_attempt_at timestamp,             -- UTC; when a retrying row is due
    last_error varchar,                    -- redacted, short
    last_status_code integer,
    response_id varchar,                   -- e.g. Slack message ts
    payload varchar not null,              -- JSON: exactly what is (or would be) sent
    created_at timestamp not null,
    updated_at timestamp not null,
    sent_at timestamp,
    created_run_id varchar,
    last_run_id varchar
)
"""

ATTEMPTS_DDL = f"""
create table if not exists {ATTEMPTS_TABLE} (
    idempotency_key varchar not null,
    attempt integer not null,
    attempted_at timestamp not null,
    outcome varchar not null,              -- sent | retry | fail
    status_after varchar not null,
    status_code integer,
    retry_after_seconds double,
    wait_seconds double,
    error varchar,
    duration_ms double,
    run_id varchar
)
"""


class Sender(Protocol):
    """One attempt per call; optionally ``blocked_reason(payload)`` names a missing credential (env var)."""

    def send(self, payload: Mapping, idempotency_key: str) -> DeliveryResult: ...


class MissingCredentials:
    """Stands in for a sender whose credentials are not configured: its rows are left untouched."""

    def __init__(self, env_var: str):
        self.env_var = env_var

    def blocked_reason(self, payload: Mapping) -> str:
        return self.env_var

    def send(self, payload: Mapping, idempotency_key: str) -> DeliveryResult:  # pragma: no cover - never called
        raise RuntimeError(f"{self.env_var} is not set")


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def _naive_utc(ts: datetime) -> datetime:
    """DuckDB TIMESTAMP columns hold naive UTC."""
    return ts.astimezone(timezone.utc).replace(tzinfo=None) if ts.tzinfo else ts


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create the outbox and the attempts log if missing."""
    con.execute("create schema if not exists beton")
    con.execute(ACTIONS_DDL)
    con.execute(ATTEMPTS_DDL)


@dataclass(frozen=True)
class EnqueueResult:
    """What an enqueue did: new rows, dry-run rows turned real, and keys that were already there."""

    inserted: int
    promoted_from_dry_run: int
    already_present: int


def enqueue(con: duckdb.DuckDBPyConnection, planned: pl.DataFrame, now: datetime, run_id: str | None = None) -> EnqueueResult:
    """Insert planned rows whose key is absent, in one transaction (insert-if-absent by key).

    A key already present is left alone — except a ``dry_run`` row meeting a real plan, which takes
    the real status (``pending``/``held_out``) and payload, so a dry run never blocks the real send.
    """
    ensure_tables(con)
    if planned.is_empty():
        return EnqueueResult(0, 0, 0)
    frame = planned.select(list(OUTBOX_PLAN_SCHEMA)).with_columns(
        pl.lit(_naive_utc(now)).alias("created_at"),
        pl.lit(_naive_utc(now)).alias("updated_at"),
        pl.lit(run_id, dtype=pl.String).alias("created_run_id"),
        pl.lit(run_id, dtype=pl.String).alias("last_run_id"),
    ).unique("idempotency_key", keep="first", maintain_order=True)
    con.register("_planned_actions", frame.to_arrow())
    try:
        con.execute("begin transaction")
        try:
            before = con.sql(
                f"select count(*) filter (where a.idempotency_key is null), "
                f"count(*) filter (where a.status = 'dry_run' and p.status <> 'dry_run') "
                f"from _planned_actions p left join {ACTIONS_TABLE} a using (idempotency_key)"
            ).fetchall()[0]
            con.execute(
                f"""
                insert into {ACTIONS_TABLE} by name select * from _planned_actions
                on conflict (idempotency_key) do update set
                    status = excluded.status, payload = excluded.payload, held_out = excluded.held_out,
                    max_attempts = excluded.max_attempts, updated_at = excluded.updated_at, last_run_id = excluded.last_run_id
                where {ACTIONS_TABLE}.status = 'dry_run' and excluded.status <> 'dry_run'
                """
            )
            con.execute("commit")
        except Exception:
            con.execute("rollback")
            raise
    finally:
        con.unregister("_planned_actions")
    inserted, promoted = int(before[0]), int(before[1])
    return EnqueueResult(inserted, promoted, frame.height - inserted - promoted)


def due_actions(con: duckdb.DuckDBPyConnection, now: datetime, playbooks: Sequence[str] | None = None) -> pl.DataFrame:
    """``pending`` and ``retrying`` rows whose ``next_attempt_at`` has passed (oldest first)."""
    if not table_exists(con, "beton", "playbook_actions"):
        return pl.DataFrame()
    params: list = [_naive_utc(now)]
    where = "status in ('pending', 'retrying') and (next_attempt_at is null or next_attempt_at <= ?)"
    if playbooks is not None:
        if not playbooks:
            return pl.DataFrame()
        where += f" and playbook in ({', '.join('?' for _ in playbooks)})"
        params += list(playbooks)
    return con.sql(
        f"select idempotency_key, playbook, day, account_id, signal_id, destination, destination_type, attempts, max_attempts, payload "
        f"from {ACTIONS_TABLE} where {where} order by created_at, day, idempotency_key",
        params=params,
    ).pl()


def next_due_at(con: duckdb.DuckDBPyConnection, playbooks: Sequence[str] | None = None) -> tuple[datetime | None, int]:
    """The earliest ``next_attempt_at`` of the rows still to send, and how many there are."""
    if not table_exists(con, "beton", "playbook_actions"):
        return None, 0
    params: list = []
    where = "status in ('pending', 'retrying')"
    if playbooks is not None:
        if not playbooks:
            return None, 0
        where += f" and playbook in ({', '.join('?' for _ in playbooks)})"
        params += list(playbooks)
    row = con.sql(f"select min(coalesce(next_attempt_at, created_at)), count(*) from {ACTIONS_TABLE} where {where}", params=params).fetchall()[0]
    return row[0], int(row[1])


def _claim(con: duckdb.DuckDBPyConnection, key: str, attempts: int, now: datetime, run_id: str | None) -> bool:
    """Mark attempt ``attempts + 1`` as in flight; False if another writer changed the row meanwhile."""
    changed = con.execute(
        f"""
        update {ACTIONS_TABLE} set attempts = attempts + 1, status = 'retrying', next_attempt_at = ?, last_error = ?,
            updated_at = ?, last_run_id = ?
        where idempotency_key = ? and attempts = ? and status in ('pending', 'retrying')
        """,
        [_naive_utc(now + CLAIM_LEASE), IN_FLIGHT_ERROR, _naive_utc(now), run_id, key, attempts],
    ).fetchall()
    return bool(changed and changed[0][0] == 1)


def _record(
    con: duckdb.DuckDBPyConnection,
    key: str,
    attempt: int,
    result: DeliveryResult,
    status: str,
    next_attempt_at: datetime | None,
    wait: float | None,
    started: datetime,
    finished: datetime,
    run_id: str | None,
) -> None:
    con.execute(
        f"""
        update {ACTIONS_TABLE} set status = ?, next_attempt_at = ?, last_error = ?, last_status_code = ?,
            response_id = coalesce(?, response_id), sent_at = ?, updated_at = ?, last_run_id = ?
        where idempotency_key = ?
        """,
        [
            status,
            _naive_utc(next_attempt_at) if next_attempt_at else None,
            result.error if status != "sent" else None,
            result.status_code,
            result.response_id,
            _naive_utc(finished) if status == "sent" else None,
            _naive_utc(finished),
            run_id,
            key,
        ],
    )
    con.execute(
        f"insert into {ATTEMPTS_TABLE} values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            key, attempt, _naive_utc(started), result.outcome, status, result.status_code, result.retry_after, wait,
            result.error, (finished - started).total_seconds() * 1000.0, run_id,
        ],
    )


@dataclass
class DeliveryStats:
    """What one delivery pass did (counts of actions, not attempts, except ``attempts``)."""

    attempts: int = 0
    sent: int = 0
    retrying: int = 0
    dead: int = 0
    deferred: int = 0
    """Left untouched because their destination failed earlier in this pass (circuit open)."""
    blocked: dict[str, int] = field(default_factory=dict)
    """Left untouched (still pending/retrying), per missing credential (the env var to set)."""
    slept_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def as_metadata(self) -> dict:
        return {
            "attempts": self.attempts, "sent": self.sent, "retrying": self.retrying, "dead": self.dead,
            "deferred": self.deferred, "blocked": sum(self.blocked.values()), "slept_seconds": round(self.slept_seconds, 3),
        }


def deliver(
    con: duckdb.DuckDBPyConnection,
    senders: Mapping[str, Sender],
    policy: RetryPolicy,
    *,
    playbooks: Sequence[str] | None = None,
    now: Callable[[], datetime] = utc_now,
    sleep: Callable[[float], None] | None = None,
    run_id: str | None = None,
    secrets: Sequence[str] = (),
    log: Callable[[str], None] | None = None,
) -> DeliveryStats:
    """Send every due ``pending``/``retrying`` row once, with retries, recording each attempt.

    Per row: claim, send, record. A transient failure waits ``policy.wait_seconds(attempts,
    Retry-After)``: slept in place when ≤ ``policy.max_inline_wait_seconds``, else the row stays
    ``retrying`` with ``next_attempt_at`` and its destination is skipped for the rest of this pass
    (a simple circuit breaker, so a destination that is down costs one row's retries, not every
    row's). A permanent failure, or the row's ``max_attempts`` reached, makes it ``dead``.
    A sender whose ``blocked_reason(payload)`` names a missing credential (see
    :class:`MissingCredentials`) gets no attempt: the row is left as it is and counted in
    ``blocked`` under that name. Errors are redacted with ``secrets`` before storage.
    """
    import time as _time

    sleep = sleep or _time.sleep
    stats = DeliveryStats()
    tripped: set[str] = set()
    due = due_actions(con, now(), playbooks)
    for row in due.iter_rows(named=True):
        destination, kind, key = row["destination"], row["destination_type"], row["idempotency_key"]
        if destination in tripped:
            stats.deferred += 1
            continue
        sender = senders.get(kind)
        payload = json.loads(row["payload"])
        reason = f"no sender for {kind}" if sender is None else (getattr(sender, "blocked_reason", None) or (lambda _p: None))(payload)
        if reason:
            stats.blocked[reason] = stats.blocked.get(reason, 0) + 1
            continue
        attempts = int(row["attempts"])
        max_attempts = int(row["max_attempts"])
        while True:
            started = now()
            if not _claim(con, key, attempts, started, run_id):
                break  # changed under us: leave it to its new owner
            attempts += 1
            stats.attempts += 1
            try:
                result = sender.send(payload, key)
            except Exception as exc:  # a sender bug must not lose the row: record it as transient
                result = DeliveryResult("retry", None, error=f"{kind}: {type(exc).__name__}")
            result = DeliveryResult(result.outcome, result.status_code, result.retry_after, redact(result.error, secrets), result.response_id)
            finished = now()
            if result.outcome == "sent":
                _record(con, key, attempts, result, "sent", None, None, started, finished, run_id)
                stats.sent += 1
                break
            if result.outcome == "fail" or attempts >= max_attempts:
                _record(con, key, attempts, result, "dead", None, None, started, finished, run_id)
                stats.dead += 1
                stats.errors.append(result.error or "")
                if result.outcome == "retry":
                    tripped.add(destination)
                if log:
                    log(f"{row['playbook']} → {destination}: dead after {attempts} attempt(s): {result.error}")
                break
            wait = policy.wait_seconds(attempts, result.retry_after)
            due_at = finished + timedelta(seconds=wait)
            _record(con, key, attempts, result, "retrying", due_at, wait, started, finished, run_id)
            if wait <= policy.max_inline_wait_seconds:
                sleep(wait)
                stats.slept_seconds += wait
                continue
            stats.retrying += 1
            tripped.add(destination)
            if log:
                log(f"{row['playbook']} → {destination}: retrying at {due_at:%Y-%m-%d %H:%M:%S} UTC ({result.error})")
            break
    return stats


def status_counts(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Rows per playbook, destination and status."""
    if not table_exists(con, "beton", "playbook_actions"):
        return pl.DataFrame(schema={"playbook": pl.String, "destination": pl.String, "status": pl.String, "n": pl.Int64})
    return con.sql(
        f"select playbook, destination, status, count(*) as n from {ACTIONS_TABLE} group by all order by playbook, destination, status"
    ).pl()


# ------------------------------------------------------------------------------------------------
# Reads for the sensors, the delivery and the readouts
# ------------------------------------------------------------------------------------------------
SCORE_COLUMNS = ("account_id", "score", "score_rank", "signals_fired", "top_contributions", "domain", "company_name", "is_crm_company")


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


def read_scores(con: duckdb.DuckDBPyConnection, day: date, columns: Sequence[str] = SCORE_COLUMNS, with_signal_ids: bool = False) -> pl.DataFrame:
    """One day of ``beton.account_scores``; ``with_signal_ids`` adds the fired signal ids, decoded by DuckDB."""
    cols = ", ".join(columns)
    if with_signal_ids:
        cols += ", cast(json_extract_string(signals_fired, '$[*].signal_id') as varchar[]) as signal_ids"
    return con.sql(f"select {cols} from {SCORES_TABLE} where day = ?", params=[day]).pl()


def read_signal_health(con: duckdb.DuckDBPyConnection, since: date | None = None) -> pl.DataFrame:
    """``beton.signal_health`` (every day, or from the day before ``since`` on so changes on ``since`` are visible)."""
    cols = "day, signal_id, definition, health, lift, lift_ci_low, lift_ci_high, backtest_lift"
    if not table_exists(con, "beton", "signal_health"):
        return pl.DataFrame(
            schema={"day": pl.Date, "signal_id": pl.String, "definition": pl.String, "health": pl.String, "lift": pl.Float64,
                    "lift_ci_low": pl.Float64, "lift_ci_high": pl.Float64, "backtest_lift": pl.Float64}
        )
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


def read_assignments(con: duckdb.DuckDBPyConnection, playbook: str) -> tuple[pl.DataFrame, datetime | None]:
    """Per account assigned to ``playbook`` (dry runs excluded): arm, first day, conversion; and as-of."""
    if not table_exists(con, "beton", "playbook_actions"):
        return pl.DataFrame(), None
    frame = con.sql(
        f"""
        with assigned as (
            select account_id, bool_or(held_out) as held_out, min(day) as first_day
            from {ACTIONS_TABLE}
            where playbook = ? and account_id is not null and status <> 'dry_run'
            group by account_id
        )
        select a.account_id, a.held_out, a.first_day, cast(o.converted_at as timestamp) as converted_at,
               o.account_id is not null as known_account
        from assigned a left join marts.account_outcomes o on o.account_id = a.account_id
        order by a.account_id
        """,
        params=[playbook],
    ).pl()
    as_of = con.sql("select cast(max(as_of_at) as timestamp) from marts.account_outcomes").fetchall()[0][0]
    return frame, as_of


def experiment_counts(
    con: duckdb.DuckDBPyConnection,
    flag: str,
    goal_event: str,
    conversion_window_days: int | None = None,
    start: date | None = None,
    end: date | None = None,
) -> tuple[pl.DataFrame, dict]:
    """Exposures and conversions per variant of one feature flag, from ``int_events_resolved``.

    Exposure = a user's first ``$feature_flag_called`` for ``flag`` (within [start, end) when given);
    variant = its ``feature_flag_response``. Conversion = ``goal_event`` by the same ``distinct_id``
    strictly after that first exposure (and within ``conversion_window_days`` when given, counting
    only users exposed at least that long before the last event). Returns the counts per variant
    and diagnostics: users who saw more than one variant, users still inside their window.
    """
    events = "intermediate.int_events_resolved"
    window_filter = ""
    params: list = [flag]
    period = ""
    if start is not None:
        period += " and occurred_at >= ?"
        params.append(start)
    if end is not None:
        period += " and occurred_at < ?"
        params.append(end)
    params.append(goal_event)
    if conversion_window_days is not None:
        window_filter = f" and g.occurred_at < f.exposed_at + interval {int(conversion_window_days)} day"
    frame = con.sql(
        f"""
        with exposures as (
            select distinct_id, feature_flag_response as variant, occurred_at, event_id
            from {events}
            where event_name = '$feature_flag_called' and feature_flag = ? and feature_flag_response is not null
              and distinct_id is not null {period}
        ),
        ranked as (
            select *, row_number() over (partition by distinct_id order by occurred_at, event_id) as exposure_rank
            from exposures
        ),
        variants_seen as (
            select distinct_id, count(distinct variant) as n_variants from exposures group by distinct_id
        ),
        first_exposure as (
            select r.distinct_id, r.variant, r.occurred_at as exposed_at, v.n_variants > 1 as saw_several
            from ranked r join variants_seen v using (distinct_id)
            where r.exposure_rank = 1
        ),
        horizon as (select max(occurred_at) as last_event_at from {events}),
        converted as (
            select distinct f.distinct_id
            from first_exposure f
            join {events} g on g.distinct_id = f.distinct_id and g.event_name = ? and g.occurred_at > f.exposed_at {window_filter}
        )
        select f.variant,
               count(*) filter (where in_window) as exposures,
               count(c.distinct_id) filter (where in_window) as conversions,
               count(*) filter (where f.saw_several) as saw_several,
               count(*) filter (where not in_window) as awaiting
        from (
            select f.*, {"f.exposed_at + interval " + str(int(conversion_window_days)) + " day <= h.last_event_at" if conversion_window_days else "true"} as in_window
            from first_exposure f cross join horizon h
        ) f
        left join converted c using (distinct_id)
        group by f.variant
        order by f.variant
        """,
        params=params,
    ).pl()
    diagnostics = {
        "saw_several_variants": int(frame.get_column("saw_several").sum()) if frame.height else 0,
        "awaiting_window": int(frame.get_column("awaiting").sum()) if frame.height else 0,
    }
    return frame.select("variant", "exposures", "conversions"), diagnostics


# ------------------------------------------------------------------------------------------------
# Planning: which rows a playbook-day adds to the outbox
# ------------------------------------------------------------------------------------------------
def recently_planned(con: duckdb.DuckDBPyConnection, playbook: str, day: date, cooldown_days: int) -> set[str]:
    """Accounts with a (non dry-run) row for ``playbook`` in the ``cooldown_days`` days before ``day``."""
    if not table_exists(con, "beton", "playbook_actions"):
        return set()
    rows = con.sql(
        f"select distinct account_id from {ACTIONS_TABLE} where playbook = ? and account_id is not null and status <> 'dry_run' "
        "and day < ? and day >= ?",
        params=[playbook, day, day - timedelta(days=cooldown_days)],
    ).fetchall()
    return {r[0] for r in rows}


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
    planned: list[pl.DataFrame] = []
    account_pbs = [p for p in playbooks if p.kind == "account"]
    health_pbs = [p for p in playbooks if p.kind == "health"]
    days_planned: dict[str, list[date]] = {"account": [], "health": []}
    if account_pbs:
        available = score_days(con)
        wanted = list(days) if days else available[-1:]
        max_age = config.destinations.max_action_age_days
        in_batch: dict[str, dict[str, date]] = {pb.name: {} for pb in account_pbs}  # playbook → account → last day planned
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
                plan = plan_account_actions(pb, matched, day, config.destinations, dry)
                in_batch[pb.name].update(dict.fromkeys(plan["account_id"].unique().to_list(), day))
                planned.append(plan)
            days_planned["account"].append(day)
    if health_pbs:
        health = read_signal_health(con, since=min(days) if days else None)
        if not health.is_empty():
            health_days = sorted(set(health.get_column("day").to_list()))
            wanted = list(days) if days else health_days[-1:]
            for pb in health_pbs:
                changes = health_changes(health, pb.when.health_changed_to, pb.when.health_of)
                for day in wanted:
                    dry = dry_run or is_stale(day, health_days[-1], config.destinations.max_action_age_days)
                    planned.append(plan_health_actions(pb, changes, day, config.destinations, dry))
            days_planned["health"] = [d for d in wanted if d in health_days]
    frames = [f for f in planned if not f.is_empty()]
    return (pl.concat(frames) if frames else pl.DataFrame(schema=OUTBOX_PLAN_SCHEMA)), days_planned
