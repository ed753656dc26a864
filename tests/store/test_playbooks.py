"""Playbook planning on a real DuckDB file: the rows a playbook-day adds (payloads rendered by the
destinations), stale days as dry runs, the cooldown, health changes, the sensors' reads, one delivery run."""

import json
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta

import duckdb
import polars as pl
import pytest

from beton_pipeline.core.playbooks import parse_playbook_config
from beton_pipeline.destinations.http import DeliveryResult
from beton_pipeline.store import outbox, playbooks
from beton_pipeline.store.daily import write_days
from beton_pipeline.store.scoring import SCORE_ENTRY, SCORES_TABLE
from tests.store.score_entries import write_old_table

DAYS = [date(2026, 3, 1) + timedelta(days=i) for i in range(6)]
NOW = datetime(2026, 3, 7, tzinfo=UTC)
HOOK = {"type": "webhook", "name": "crm", "url": "https://hooks.example.com/b"}


SIG_A = {
    "signal_id": "sig_a",
    "definition": "invites <@U1>",
    "fired_at": datetime(2026, 2, 27, 9, 30, 15, 250_000),
    "contribution": 0.3,
    "health": "healthy",
    "weight_factor": 1.0,
    "weight_note": None,
}
SIG_B = {
    **SIG_A,
    "signal_id": "sig_b",
    "definition": "Pricing ünï page",
    "contribution": 0.1234,
    "health": "degrading",
    "weight_factor": 0.5,
    "weight_note": "weight halved: degrading since 2026-02-28",
}


def scores_frame() -> pl.DataFrame:
    """Four accounts scored on six days (acc_0 always first; acc_0 and acc_1 with signals fired)."""
    rows = []
    for d in DAYS:
        for i in range(4):
            fired = [SIG_A, SIG_B] if i == 0 else [SIG_A] if i == 1 else []
            rows.append(
                {
                    "day": d,
                    "account_id": f"acc_{i}",
                    "score": 0.9 - 0.2 * i,
                    "score_rank": i + 1,
                    "signals_fired": fired,
                    "top_contributions": fired[:1],
                    "domain": f"acc{i}.io",
                    "company_name": "<!channel> Co" if i == 0 else f"Co {i}",
                    "is_crm_company": i != 3,
                }
            )
    entries = pl.List(SCORE_ENTRY)
    return pl.DataFrame(rows, schema_overrides={"signals_fired": entries, "top_contributions": entries})


def warehouse(path, shape: str) -> duckdb.DuckDBPyConnection:
    """A warehouse with `scores_frame` as beton writes it (`typed`) or as an older beton did (`json` text), and
    two signals' health (sig_b breaks on the last day)."""
    health = [
        (d, s, s.upper(), "broken" if (s == "sig_b" and d == DAYS[-1]) else "healthy", 1.5, 1.1, 2.0, 1.8)
        for d in DAYS
        for s in ("sig_a", "sig_b")
    ]
    con = duckdb.connect(str(path))
    if shape == "typed":
        write_days(con, SCORES_TABLE, scores_frame(), DAYS)
    else:
        write_old_table(con, scores_frame())
    con.execute(
        "create table beton.signal_health (day date, signal_id varchar, definition varchar, health varchar, lift double, "
        "lift_ci_low double, lift_ci_high double, backtest_lift double)"
    )
    con.executemany("insert into beton.signal_health values (?, ?, ?, ?, ?, ?, ?, ?)", health)
    outbox.ensure_tables(con)
    return con


@pytest.fixture(params=["typed", "json"])
def con(tmp_path, request):
    """The warehouse of `warehouse`, in both shapes of beton.account_scores: every reader reads both."""
    with warehouse(tmp_path / "warehouse.duckdb", request.param) as con:
        yield con


def test_payloads_from_typed_entries_are_byte_for_byte_those_from_json_text(tmp_path):
    """Slack, Attio and webhook payloads planned from the typed lists are the bytes an older beton's JSON text
    gave (`fired_at` as `YYYY-MM-DDTHH:MM:SSZ`, every field in its entries), day by day."""
    cfg = config(
        when={"any_signals": ["sig_a"]},
        then=[
            {"type": "slack", "channel": "#rev"},
            {"type": "attio", "attribute": "beton_signals", "value": "$signals", "value_type": "text"},
            HOOK,
        ],
    )
    plans = {}
    for shape in ("typed", "json"):
        with warehouse(tmp_path / f"{shape}.duckdb", shape) as con:
            plans[shape], _ = playbooks.plan_actions(con, cfg, cfg.account_playbooks, DAYS)
    assert plans["typed"].height == len(DAYS) * 6  # acc_0 and acc_1 (both in the CRM): slack, attio, webhook
    assert plans["typed"]["payload"].to_list() == plans["json"]["payload"].to_list()
    hook = json.loads(plans["typed"].filter(pl.col("destination_type") == "webhook")["payload"][0])["event"]
    assert hook["top_contributions"] == [{**SIG_A, "fired_at": "2026-02-27T09:30:15Z"}]


def config(**over):
    pb = {
        "name": "hot",
        "when": {"min_score": 0.6},
        "holdout_fraction": 0,
        "cooldown_days": 0,
        "then": [{"type": "slack", "channel": "#rev"}, {"type": "attio", "attribute": "beton_score"}, HOOK],
    }
    pb.update(over)
    health = {
        "name": "health",
        "when": {"health_changed_to": ["broken"]},
        "then": [{"type": "slack", "channel": "#alerts"}],
    }
    return parse_playbook_config(
        [pb, health], destinations={"crm_record_url": "https://crm.example/$record_id", "max_action_age_days": 2}
    )


def test_reads(con):
    assert playbooks.score_days(con) == DAYS and playbooks.latest_score_day(con) == DAYS[-1]
    scores = playbooks.read_scores(con, DAYS[0], columns=("account_id",), with_signal_ids=True).sort("account_id")
    assert scores["signal_ids"].to_list() == [["sig_a", "sig_b"], ["sig_a"], [], []]
    since = playbooks.read_signal_health(con, since=DAYS[3])
    assert sorted(set(since["day"])) == DAYS[2:]  # the day before is the baseline of the first day read
    assert playbooks.read_signal_health(con).height == 12


def test_plan_renders_each_destination_and_plans_the_latest_day_by_default(con):
    cfg = config()
    plan, days = playbooks.plan_actions(con, cfg, cfg.playbooks)
    assert days == {"account": [DAYS[-1]], "health": [DAYS[-1]]}
    assert plan.schema == pl.Schema(outbox.OUTBOX_PLAN_SCHEMA)
    by_dest = {
        (r["account_id"] or r["signal_id"], r["destination_type"]): json.loads(r["payload"])
        for r in plan.iter_rows(named=True)
    }
    # acc_0, acc_1 match (0.9, 0.7); the CRM companies get an attio row; sig_b broke on the last day
    assert sorted(by_dest) == [
        ("acc_0", "attio"),
        ("acc_0", "slack"),
        ("acc_0", "webhook"),
        ("acc_1", "attio"),
        ("acc_1", "slack"),
        ("acc_1", "webhook"),
        ("sig_b", "slack"),
    ]
    slack = by_dest[("acc_0", "slack")]
    assert slack["channel"] == "#rev" and slack["text"].startswith(
        "*&lt;!channel&gt; Co* matched *hot*: score 90% (rank 1)"
    )
    assert slack["blocks"][-1]["elements"][0]["url"] == "https://crm.example/acc_0"
    assert by_dest[("acc_1", "attio")] == {"object": "companies", "record_id": "acc_1", "values": {"beton_score": 0.7}}
    event = by_dest[("acc_0", "webhook")]["event"]
    assert (
        event["type"] == "playbook.matched" and event["account"]["company_name"] == "<!channel> Co"
    )  # webhooks get raw data
    assert (
        by_dest[("sig_b", "slack")]["text"] == "Signal `sig_b` (SIG_B) changed from healthy to *broken* on 2026-03-06."
    )
    assert set(plan["status"]) == {"pending"}


def test_stale_days_are_dry_runs_and_the_cooldown_skips_recent_accounts(con):
    cfg = config(cooldown_days=2, then=[{"type": "slack", "channel": "#rev"}])
    plan, _ = playbooks.plan_actions(con, cfg, cfg.account_playbooks, DAYS)
    status = {(r["day"], r["account_id"]): r["status"] for r in plan.iter_rows(named=True)}
    # planned on day 0, cooled down on days 1-2, planned again on day 3; days more than 2 before the latest are dry runs
    assert sorted(d for d, a in status if a == "acc_0") == [DAYS[0], DAYS[3]]
    assert status[(DAYS[0], "acc_0")] == "dry_run" and status[(DAYS[3], "acc_0")] == "pending"
    outbox.enqueue(con, plan.filter(pl.col("day") == DAYS[3]), NOW)
    assert playbooks.recently_planned(con, "hot", DAYS[5], 2) == {"acc_0", "acc_1"}
    again, _ = playbooks.plan_actions(con, cfg, cfg.account_playbooks, [DAYS[5]])
    assert again.is_empty()  # both were planned on day 3, within the 2-day cooldown of day 5


def test_sensor_reads(con):
    cfg = config()
    assert playbooks.account_matches(con, cfg, DAYS[:2]) == [("hot", DAYS[0], 2), ("hot", DAYS[1], 2)]
    requests, latest, last_day = playbooks.health_requests(con, cfg, None)
    assert (
        requests == [("health", DAYS[-1], ["sig_b"])]
        and latest == {"sig_a": "healthy", "sig_b": "broken"}
        and last_day == DAYS[-1]
    )
    assert playbooks.health_requests(con, cfg, DAYS[-1])[0] == []


class OkSender:
    def __init__(self):
        self.sent: list[str] = []

    def send(self, payload: Mapping, idempotency_key: str) -> DeliveryResult:
        self.sent.append(idempotency_key)
        return DeliveryResult("sent", 200)


def test_run_playbooks_dry_run_then_real(con):
    cfg = config(then=[{"type": "slack", "channel": "#rev"}])
    sender = OkSender()
    dry = playbooks.run_playbooks(
        con, cfg, cfg.selected(), [DAYS[-1]], {"slack": sender}, dry_run=True, now=lambda: NOW
    )
    assert dry.dry_run and dry.enqueued.inserted == 3 and dry.delivery.attempts == 0 and sender.sent == []
    real = playbooks.run_playbooks(
        con, cfg, cfg.selected(), [DAYS[-1]], {"slack": sender}, now=lambda: NOW, sleep=lambda s: None
    )
    assert real.enqueued.promoted_from_dry_run == 3 and real.delivery.sent == 3 and len(sender.sent) == 3
    assert real.status_counts.rows() == [("health", "slack:#alerts", "sent", 1), ("hot", "slack:#rev", "sent", 2)]
    send_only = playbooks.run_playbooks(con, cfg, cfg.selected(), None, {"slack": sender}, plan=False, now=lambda: NOW)
    assert send_only.enqueued.inserted == 0 and send_only.delivery.attempts == 0
