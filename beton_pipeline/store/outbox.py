"""The outbox, `beton.playbook_actions`: its tables, enqueueing planned rows, delivery with retries, status.

What a playbook-day adds is planned in `store/playbooks.py`; the readouts that read the outbox live
in `store/readouts.py`.

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
from datetime import UTC, datetime, timedelta
from typing import Protocol

import duckdb
import polars as pl

from beton_pipeline.core.playbooks import DestinationSettings
from beton_pipeline.destinations.http import DeliveryResult, RetryPolicy, redact
from beton_pipeline.warehouse import table_exists, transaction

ACTIONS_TABLE = "beton.playbook_actions"
ATTEMPTS_TABLE = "beton.playbook_action_attempts"
CLAIM_LEASE = timedelta(minutes=10)
"""A claimed attempt whose outcome was never recorded (the process died) is retried after this."""
IN_FLIGHT_ERROR = "attempt in flight: its outcome was not recorded (the run stopped during the attempt)"

OUTBOX_PLAN_SCHEMA = {
    "idempotency_key": pl.String,
    "playbook": pl.String,
    "day": pl.Date,
    "account_id": pl.String,
    "signal_id": pl.String,
    "destination": pl.String,
    "destination_type": pl.String,
    "held_out": pl.Boolean,
    "status": pl.String,
    "max_attempts": pl.Int32,
    "payload": pl.String,
}
"""Columns of a planned action (one outbox row before any attempt)."""

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
    return datetime.now(UTC)


def _naive_utc(ts: datetime) -> datetime:
    """DuckDB TIMESTAMP columns hold naive UTC."""
    return ts.astimezone(UTC).replace(tzinfo=None) if ts.tzinfo else ts


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


def enqueue(
    con: duckdb.DuckDBPyConnection, planned: pl.DataFrame, now: datetime, run_id: str | None = None
) -> EnqueueResult:
    """Insert planned rows whose key is absent, in one transaction (insert-if-absent by key).

    A key already present is left alone — except a ``dry_run`` row meeting a real plan, which takes
    the real status (``pending``/``held_out``) and payload, so a dry run never blocks the real send.
    """
    ensure_tables(con)
    if planned.is_empty():
        return EnqueueResult(0, 0, 0)
    frame = (
        planned.select(list(OUTBOX_PLAN_SCHEMA))
        .with_columns(
            pl.lit(_naive_utc(now)).alias("created_at"),
            pl.lit(_naive_utc(now)).alias("updated_at"),
            pl.lit(run_id, dtype=pl.String).alias("created_run_id"),
            pl.lit(run_id, dtype=pl.String).alias("last_run_id"),
        )
        .unique("idempotency_key", keep="first", maintain_order=True)
    )
    con.register("_planned_actions", frame.to_arrow())
    try:
        with transaction(con):
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
    row = con.sql(
        f"select min(coalesce(next_attempt_at, created_at)), count(*) from {ACTIONS_TABLE} where {where}", params=params
    ).fetchall()[0]
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
            key,
            attempt,
            _naive_utc(started),
            result.outcome,
            status,
            result.status_code,
            result.retry_after,
            wait,
            result.error,
            (finished - started).total_seconds() * 1000.0,
            run_id,
        ],
    )


def retry_policy(destinations: DestinationSettings) -> RetryPolicy:
    """The backoff of ``destinations:`` in beton.yaml (max_attempts comes with each row: its playbook's)."""
    return RetryPolicy(
        base_seconds=destinations.backoff_base_seconds,
        max_seconds=destinations.backoff_max_seconds,
        max_inline_wait_seconds=destinations.max_inline_wait_seconds,
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
            "attempts": self.attempts,
            "sent": self.sent,
            "retrying": self.retrying,
            "dead": self.dead,
            "deferred": self.deferred,
            "blocked": sum(self.blocked.values()),
            "slept_seconds": round(self.slept_seconds, 3),
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
        reason = (
            f"no sender for {kind}"
            if sender is None
            else (getattr(sender, "blocked_reason", None) or (lambda _p: None))(payload)
        )
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
            result = DeliveryResult(
                result.outcome,
                result.status_code,
                result.retry_after,
                redact(result.error, secrets),
                result.response_id,
            )
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
        return pl.DataFrame(
            schema={"playbook": pl.String, "destination": pl.String, "status": pl.String, "n": pl.Int64}
        )
    return con.sql(
        f"select playbook, destination, status, count(*) as n from {ACTIONS_TABLE} group by all order by playbook, destination, status"
    ).pl()


def _actions_by(con: duckdb.DuckDBPyConnection, keys: dict[str, pl.DataType]) -> pl.DataFrame:
    """How many actions each combination of the outbox columns `keys` has, with its first and last day, in key
    order; empty (with the same columns) before the first delivery."""
    schema = {**keys, "actions": pl.Int64, "first_day": pl.Date, "last_day": pl.Date}
    if not table_exists(con, "beton", "playbook_actions"):
        return pl.DataFrame(schema=schema)
    columns = ", ".join(keys)
    return con.sql(
        f"select {columns}, count(*)::bigint as actions, min(day) as first_day, max(day) as last_day "
        f"from {ACTIONS_TABLE} group by all order by {columns}"
    ).pl()


def action_counts(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """How many actions each playbook has per status (playbook, status, actions, first_day, last_day), for the
    pages."""
    return _actions_by(con, {"playbook": pl.String, "status": pl.String})


def destination_counts(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """How many actions each destination has per status (destination_type, destination, status, actions,
    first_day, last_day), for the destinations page."""
    return _actions_by(con, {"destination_type": pl.String, "destination": pl.String, "status": pl.String})
