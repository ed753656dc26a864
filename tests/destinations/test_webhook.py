"""Webhooks: Stripe-style HMAC signatures (checked by a receiver with its own code), URL rules, secrets."""

import hashlib
import hmac
from datetime import date

from beton_pipeline.core.playbooks import AccountMatchedEvent, HealthChange, HealthChangedEvent, MatchedAccount
from beton_pipeline.destinations.webhook import (
    WebhookSender,
    account_matched_payload,
    canonical_body,
    health_changed_payload,
    secret_env_var,
    sign,
    verify_signature,
)
from tests.fakes import FakeWebhookReceiver

SECRET = "whsec-0123456789abcdef"


def test_signature_is_hmac_sha256_over_timestamp_dot_body():
    body = b'{"a":1}'
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1700000000, body) == f"t=1700000000,v1={expected}"
    header = sign(SECRET, 1700000000, body)
    assert verify_signature(SECRET, header, body, now=1700000100)
    assert not verify_signature(SECRET, header, body + b" ", now=1700000100)  # body changed
    assert not verify_signature("other", header, body, now=1700000100)  # wrong secret
    assert not verify_signature(SECRET, header, body, now=1700000000 + 301)  # replayed too late
    assert not verify_signature(SECRET, None, body) and not verify_signature(SECRET, "v1=abc", body)


def test_receiver_accepts_signed_posts_and_rejects_wrong_secret():
    event = {"type": "playbook.matched", "account": {"account_id": "rec_1", "company_name": "Ünïcode GmbH"}}
    with FakeWebhookReceiver(SECRET) as receiver:
        ok = WebhookSender({"crm-sync": SECRET}).send(
            {"webhook": "crm-sync", "url": receiver.url + "/hooks/beton", "event": event}, "key-1"
        )
        bad = WebhookSender({"crm-sync": "not-the-secret"}).send(
            {"webhook": "crm-sync", "url": receiver.url + "/hooks/beton", "event": event}, "key-2"
        )
        assert ok.outcome == "sent"
        assert (bad.outcome, bad.status_code) == ("fail", 400) and receiver.rejected == 1
        assert receiver.events == [event] and receiver.idempotency_keys == ["key-1"]
        assert receiver.successes()[0].body == canonical_body(event)
        assert "not-the-secret" not in (bad.error or "")


def test_event_payloads():
    account = MatchedAccount(
        "rec_1", "Acme", "Acme", "acme.io", True, None, 0.5, 2, ({"signal_id": "s"},), ({"signal_id": "s"},)
    )
    payload = account_matched_payload(
        AccountMatchedEvent("crm", "https://h.example/x", "k1", "hot", date(2026, 1, 5), account)
    )
    assert payload == {
        "webhook": "crm",
        "url": "https://h.example/x",
        "event": {
            "type": "playbook.matched",
            "idempotency_key": "k1",
            "playbook": "hot",
            "day": "2026-01-05",
            "account": {
                "account_id": "rec_1",
                "company_name": "Acme",
                "domain": "acme.io",
                "is_crm_company": True,
                "crm_url": None,
                "app_url": None,
            },
            "score": 0.5,
            "score_rank": 2,
            "top_contributions": [{"signal_id": "s"}],
        },
    }
    change = HealthChange("sig_1", None, "broken", "healthy", 0.9, None, None, 2.0)
    health = health_changed_payload(
        HealthChangedEvent("ops", "https://h.example/y", "k2", "health", date(2026, 1, 6), change)
    )["event"]
    assert health["type"] == "signal.health_changed" and health["day"] == "2026-01-06"
    assert health["signal"] == {
        "signal_id": "sig_1",
        "definition": None,
        "health": "broken",
        "previous_health": "healthy",
        "lift": 0.9,
        "lift_ci_low": None,
        "lift_ci_high": None,
        "backtest_lift": 2.0,
        "app_url": None,
    }


def test_disallowed_host_is_refused_at_send_time():
    with FakeWebhookReceiver(SECRET) as receiver:
        sender = WebhookSender({"h": SECRET}, allowed_hosts=("hooks.example.com",))
        result = sender.send({"webhook": "h", "url": receiver.url, "event": {}}, "k")
        assert result.outcome == "fail" and "allowed" in result.error and not receiver.requests


def test_secret_env_var_names_and_missing_secret():
    assert secret_env_var("crm-sync") == "BETON_WEBHOOK_SECRET_CRM_SYNC"
    assert secret_env_var("zapier_2") == "BETON_WEBHOOK_SECRET_ZAPIER_2"
    sender = WebhookSender({})
    assert sender.blocked_reason({"webhook": "crm-sync"}) == "BETON_WEBHOOK_SECRET_CRM_SYNC"
    assert WebhookSender({"crm-sync": "s"}).blocked_reason({"webhook": "crm-sync"}) is None


def test_receiver_down_is_retryable():
    with FakeWebhookReceiver(SECRET) as receiver:
        url = receiver.url
    assert (
        WebhookSender({"h": SECRET}, timeout_seconds=2).send({"webhook": "h", "url": url, "event": {}}, "k").outcome
        == "retry"
    )
