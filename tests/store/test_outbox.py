"""The outbox on a real DuckDB file: insert-if-absent by key, dry runs promoted by a real plan, due rows,
delivery outcomes (sent, retried with backoff, dead, blocked by a missing credential), status counts."""

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta

import duckdb
import polars as pl
import pytest

from beton_pipeline.core.playbooks import DestinationSettings
from beton_pipeline.destinations.http import DeliveryResult, RetryPolicy
from beton_pipeline.store import outbox

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def planned(
    keys: list[str], status: str = "pending", destination_type: str = "slack", payload: str = '{"text": "hi"}'
) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "idempotency_key": keys,
            "playbook": ["hot"] * len(keys),
            "day": [date(2026, 3, 10)] * len(keys),
            "account_id": [f"acc_{k}" for k in keys],
            "signal_id": [None] * len(keys),
            "destination": [f"{destination_type}:x"] * len(keys),
            "destination_type": [destination_type] * len(keys),
            "held_out": [status == "held_out"] * len(keys),
            "status": [status] * len(keys),
            "max_attempts": [3] * len(keys),
            "payload": [payload] * len(keys),
        },
        schema=outbox.OUTBOX_PLAN_SCHEMA,
    )


class ScriptedSender:
    """A destination that answers with the given outcomes in turn (then keeps the last)."""

    def __init__(self, *outcomes: DeliveryResult):
        self.outcomes = list(outcomes)
        self.calls: list[tuple[Mapping, str]] = []

    def send(self, payload: Mapping, idempotency_key: str) -> DeliveryResult:
        self.calls.append((payload, idempotency_key))
        return self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]


@pytest.fixture
def con(tmp_path):
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        outbox.ensure_tables(con)
        yield con


def rows(con) -> dict[str, dict]:
    return {
        r["idempotency_key"]: r for r in con.sql(f"select * from {outbox.ACTIONS_TABLE}").pl().iter_rows(named=True)
    }


def test_enqueue_inserts_only_absent_keys_and_promotes_dry_runs(con):
    assert outbox.enqueue(con, planned(["a", "b"], status="dry_run"), NOW) == outbox.EnqueueResult(2, 0, 0)
    assert outbox.enqueue(con, planned(["a", "b", "c"]), NOW, run_id="r2") == outbox.EnqueueResult(1, 2, 0)
    assert outbox.enqueue(con, planned(["a", "c"], status="dry_run"), NOW) == outbox.EnqueueResult(0, 0, 2)
    assert {k: r["status"] for k, r in rows(con).items()} == {"a": "pending", "b": "pending", "c": "pending"}
    assert rows(con)["a"]["last_run_id"] == "r2"
    assert outbox.enqueue(con, planned([]), NOW) == outbox.EnqueueResult(0, 0, 0)


def test_due_actions_and_next_due_at(con):
    outbox.enqueue(con, planned(["a", "b"]), NOW)
    outbox.enqueue(con, planned(["h"], status="held_out"), NOW)
    assert sorted(outbox.due_actions(con, NOW)["idempotency_key"]) == ["a", "b"]
    assert outbox.due_actions(con, NOW, playbooks=[]).is_empty() and outbox.due_actions(con, NOW, ["other"]).is_empty()
    due_at, n = outbox.next_due_at(con, ["hot"])
    assert n == 2 and due_at == NOW.replace(tzinfo=None)


def test_deliver_sends_retries_with_backoff_and_records_attempts(con):
    outbox.enqueue(con, planned(["a"]), NOW)
    sender = ScriptedSender(DeliveryResult("retry", 503, error="down"), DeliveryResult("sent", 200, response_id="ts1"))
    slept: list[float] = []
    stats = outbox.deliver(
        con, {"slack": sender}, RetryPolicy(base_seconds=2), now=lambda: NOW, sleep=slept.append, run_id="r"
    )
    assert (stats.attempts, stats.sent, stats.dead, slept) == (2, 1, 0, [2.0])
    row = rows(con)["a"]
    assert (row["status"], row["attempts"], row["response_id"], row["last_error"]) == ("sent", 2, "ts1", None)
    attempts = con.sql(
        f"select outcome, status_after, wait_seconds from {outbox.ATTEMPTS_TABLE} order by attempt"
    ).fetchall()
    assert attempts == [("retry", "retrying", 2.0), ("sent", "sent", None)]
    assert sender.calls[0] == ({"text": "hi"}, "a")
    assert (
        outbox.deliver(con, {"slack": sender}, RetryPolicy(), now=lambda: NOW, sleep=slept.append).attempts == 0
    )  # nothing twice


def test_deliver_long_wait_defers_and_permanent_failure_is_dead(con):
    outbox.enqueue(con, planned(["a"]), NOW)
    outbox.enqueue(con, planned(["w"], destination_type="webhook"), NOW)
    senders = {
        "slack": ScriptedSender(DeliveryResult("retry", 429, retry_after=600, error="slow")),
        "webhook": ScriptedSender(DeliveryResult("fail", 401, error="webhook x: HTTP 401 secret-123")),
    }
    stats = outbox.deliver(
        con,
        senders,
        RetryPolicy(max_inline_wait_seconds=30),
        now=lambda: NOW,
        sleep=lambda s: None,
        secrets=["secret-123"],
    )
    assert (stats.retrying, stats.dead) == (1, 1)
    a, w = rows(con)["a"], rows(con)["w"]
    assert a["status"] == "retrying" and a["next_attempt_at"] == (NOW + timedelta(seconds=600)).replace(tzinfo=None)
    assert w["status"] == "dead" and "secret-123" not in w["last_error"] and "[redacted]" in w["last_error"]


def test_missing_credentials_leave_rows_untouched(con):
    outbox.enqueue(con, planned(["a", "b"]), NOW)
    stats = outbox.deliver(
        con, {"slack": outbox.MissingCredentials("BETON_SLACK_TOKEN")}, RetryPolicy(), now=lambda: NOW
    )
    assert stats.blocked == {"BETON_SLACK_TOKEN": 2} and stats.attempts == 0
    assert {r["status"] for r in rows(con).values()} == {"pending"}
    counts = outbox.status_counts(con)
    assert counts.rows() == [("hot", "slack:x", "pending", 2)]


def test_reads_on_a_warehouse_without_the_outbox(tmp_path):
    with duckdb.connect(str(tmp_path / "empty.duckdb")) as con:
        assert outbox.due_actions(con, NOW).is_empty() and outbox.next_due_at(con) == (None, 0)
        assert outbox.status_counts(con).is_empty()


def test_retry_policy_from_destinations():
    policy = outbox.retry_policy(
        DestinationSettings(backoff_base_seconds=5, backoff_max_seconds=60, max_inline_wait_seconds=0)
    )
    assert (policy.base_seconds, policy.max_seconds, policy.max_inline_wait_seconds) == (5, 60, 0)
    assert policy.wait_seconds(3) == 20
