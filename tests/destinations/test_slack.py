"""Slack: escaping of user-controlled text, Block Kit shape, and chat.postMessage against a local Slack."""

import json
from datetime import date

from beton_pipeline.core.playbooks import HealthChange, MatchedAccount, SlackAccountMessage, SlackHealthMessage
from beton_pipeline.destinations.slack import (
    SlackSender,
    account_message,
    account_payload,
    escape_mrkdwn,
    health_message,
    health_payload,
)
from tests.fakes import FakeSlack

TOKEN = "xoxb-test-0123456789"


def _message(title="Acme <!channel>", crm_url="https://app.attio.com/acme/company/rec_1/overview", app_url=None):
    return account_message(
        "#revenue",
        f"*{escape_mrkdwn(title)}* matched",
        title=title,
        domain="acme.io&<x>",
        score=0.634,
        score_rank=3,
        signals=[
            {
                "signal_id": "sig_1",
                "name": "Invited teammate 3+ times <@U123>",
                "definition": "`invited_teammate` >= 3",
                "fired_at": "2026-01-03T10:00:00Z",
                "contribution": 0.4,
            }
        ],
        playbook="hot-accounts",
        day=date(2026, 1, 5),
        crm_url=crm_url,
        app_url=app_url,
    )


def _mrkdwn_texts(payload: dict) -> list[str]:
    texts = [payload["text"]]
    for block in payload["blocks"]:
        if block.get("text", {}).get("type") == "mrkdwn":
            texts.append(block["text"]["text"])
        texts += [f["text"] for f in block.get("fields", [])]
        texts += [e["text"] for e in block.get("elements", []) if e.get("type") == "mrkdwn"]
    return texts


def test_escape_mrkdwn():
    assert escape_mrkdwn("<!channel> & <@U1> > x") == "&lt;!channel&gt; &amp; &lt;@U1&gt; &gt; x"
    assert escape_mrkdwn("&amp;") == "&amp;amp;"  # escaping is not idempotent by design: values are escaped once


def test_account_message_cannot_mention_from_data():
    payload = _message()
    for text in _mrkdwn_texts(payload):
        assert "<!channel>" not in text and "<@U123>" not in text and "<x>" not in text
    assert "&lt;!channel&gt;" in payload["text"]
    # the header is plain_text: Slack never parses mentions there
    assert payload["blocks"][0]["text"] == {"type": "plain_text", "text": "Acme <!channel>", "emoji": False}
    assert payload["blocks"][-1]["elements"][0]["url"].startswith("https://app.attio.com/")
    assert "63% (rank 3)" in json.dumps(payload)


def test_account_message_reads_for_a_sales_rep():
    payload = _message(title="Acme")
    button = payload["blocks"].pop()
    assert button["elements"][0]["text"]["text"] == "Open in CRM"  # the record's link (it holds the record id)
    body = json.dumps(payload, ensure_ascii=False)
    assert "Invited teammate 3+ times" in body and "2 days ago" in body  # plain name, when it fired
    assert "invited_teammate" not in body and ">= 3" not in body  # not the technical definition
    assert "sig_1" not in body and "rec_1" not in body  # no internal ids
    assert "0.4" not in body and "+0." not in body  # no log contributions


def test_signals_fall_back_to_the_definition_and_skip_an_unknown_time():
    from beton_pipeline.destinations.slack import signals_mrkdwn

    text = signals_mrkdwn(
        [{"signal_id": "s", "definition": "a <b>"}, {"name": "x", "fired_at": "2026-01-05"}], date(2026, 1, 5)
    )
    assert text == "• a &lt;b&gt;\n• x · _today_"
    many = signals_mrkdwn([{"name": str(i)} for i in range(7)], date(2026, 1, 5), limit=5)
    assert many.splitlines()[-1] == "… and 2 more"


def test_crm_button_only_for_http_urls():
    assert _message(crm_url="javascript:alert(1)")["blocks"][-1]["type"] != "actions"
    assert _message(crm_url=None)["blocks"][-1]["type"] != "actions"


def test_the_beton_page_button_beside_the_crm_button_only_for_http_urls():
    page = "https://beton.example.com/accounts/rec_1"
    buttons = _message(app_url=page)["blocks"][-1]["elements"]
    assert [(b["text"]["text"], b["url"]) for b in buttons] == [
        ("Open in CRM", "https://app.attio.com/acme/company/rec_1/overview"),
        ("Open in beton", page),
    ]
    only = _message(crm_url=None, app_url=page)["blocks"][-1]["elements"]
    assert [b["action_id"] for b in only] == ["open_beton"]
    assert [b["action_id"] for b in _message(app_url="javascript:x")["blocks"][-1]["elements"]] == ["open_crm"]


def test_health_message_fields():
    payload = health_message(
        "#alerts",
        "changed",
        signal_id="sig_1",
        name="Invited teammate <x>",
        definition="<b>",
        previous_health="healthy",
        health="broken",
        lift=0.9,
        lift_ci_low=0.7,
        lift_ci_high=1.1,
        backtest_lift=2.5,
        day="2026-01-05",
    )
    body = json.dumps(payload, ensure_ascii=False)
    assert "healthy → *broken*" in body and "0.90 (0.70–1.10)" in body and "&lt;b&gt;" in body and "<b>" not in body
    assert "*Signal*\\nInvited teammate &lt;x&gt;" in body
    assert payload["blocks"][-1]["type"] != "actions"  # no app address: no button


def test_a_health_message_links_the_signals_page_when_the_app_has_an_address():
    fields = {
        "signal_id": "sig_1", "name": "n", "definition": "d", "previous_health": "healthy", "health": "broken",
        "lift": 0.9, "lift_ci_low": 0.7, "lift_ci_high": 1.1, "backtest_lift": 2.5, "day": "2026-01-05",
    }  # fmt: skip
    page = "https://beton.example.com/signals/sig_1"
    (button,) = health_message("#alerts", "changed", **fields, app_url=page)["blocks"][-1]["elements"]
    assert (button["text"]["text"], button["url"], button["action_id"]) == ("Open in beton", page, "open_beton")
    assert health_message("#alerts", "changed", **fields, app_url="ftp://x")["blocks"][-1]["type"] != "actions"


ACCOUNT = MatchedAccount(
    account_id="rec_1",
    company="Acme <!channel>",
    company_name="Acme <!channel>",
    domain="acme.io",
    is_crm_company=True,
    crm_url="https://app.attio.com/acme/company/rec_1/overview",
    score=0.634,
    score_rank=3,
    top_contributions=(),
    top_signals=(
        {"signal_id": "sig_1", "name": "Invited a teammate <@U1>", "definition": "invites", "contribution": 0.4},
    ),
)


def test_account_payload_escapes_values_not_the_template():
    message = SlackAccountMessage(
        "#revenue",
        "<!here> *$company* matched: $score",
        {"company": "Acme <!channel>", "score": "63%"},
        ACCOUNT,
        "hot",
        date(2026, 1, 5),
    )
    payload = account_payload(message)
    assert (
        payload["text"] == "<!here> *Acme &lt;!channel&gt;* matched: 63%"
    )  # the admin's <!here> stays, data is escaped
    assert payload == account_message(
        "#revenue",
        payload["text"],
        title="Acme <!channel>",
        domain="acme.io",
        score=0.634,
        score_rank=3,
        signals=ACCOUNT.top_signals,
        playbook="hot",
        day=date(2026, 1, 5),
        crm_url=ACCOUNT.crm_url,
    )


def test_health_payload():
    change = HealthChange("sig_1", "<b>", "broken", "healthy", 0.9, 0.7, 1.1, 2.5)
    payload = health_payload(
        SlackHealthMessage(
            "#alerts",
            "`$signal_id` is $health ($definition)",
            {"signal_id": "sig_1", "health": "broken", "definition": "<b>", "signal_name": "Invites"},
            change,
            date(2026, 1, 5),
        )
    )
    body = json.dumps(payload, ensure_ascii=False)
    assert payload["text"] == "`sig_1` is broken (&lt;b&gt;)"
    assert "healthy → *broken*" in body and "0.90 (0.70–1.10)" in body and "2026-01-05" in body and "<b>" not in body
    assert "*Signal*\\nInvites" in body


def test_send_ok_then_429_with_retry_after_then_500():
    with FakeSlack(TOKEN) as slack:
        sender = SlackSender(TOKEN, slack.base_url, timeout_seconds=5)
        ok = sender.send(_message(), "k1")
        assert ok.outcome == "sent" and ok.response_id
        slack.fail_next(429, retry_after=7)
        limited = sender.send(_message(), "k1")
        assert (limited.outcome, limited.status_code, limited.retry_after) == ("retry", 429, 7.0)
        slack.fail_next(500)
        broken = sender.send(_message(), "k1")
        assert (broken.outcome, broken.status_code) == ("retry", 500)
        assert len(slack.messages) == 1
        sent = slack.messages[0]
        assert sent["channel"] == "#revenue" and sent["blocks"][0]["type"] == "header"
        assert sent["unfurl_links"] is False


def test_bad_token_fails_without_leaking_it():
    with FakeSlack(TOKEN) as slack:
        result = SlackSender("xoxb-wrong-secret", slack.base_url, timeout_seconds=5).send(_message(), "k")
    assert result.outcome == "fail" and "invalid_auth" in result.error
    assert "xoxb-wrong-secret" not in result.error


def test_slack_down_is_retryable():
    with FakeSlack(TOKEN) as slack:
        base = slack.base_url
    result = SlackSender(TOKEN, base, timeout_seconds=2).send(_message(), "k")
    assert result.outcome == "retry" and result.status_code is None and TOKEN not in result.error


def test_a_down_weighted_signal_says_so_in_a_sales_reps_words():
    from beton_pipeline.core.playbooks import weight_note_for_rep

    degrading = {
        "signal_id": "sig_1",
        "name": "Invited teammate 3+ times",
        "fired_at": "2026-05-04T10:00:00Z",
        "health": "degrading",
        "weight_factor": 0.5,
        "weight_note": "weight halved: degrading since 2026-05-02",
    }
    full = {"signal_id": "sig_2", "name": "Raised money", "fired_at": "2026-05-06T10:00:00Z", "weight_factor": 1.0}
    assert weight_note_for_rep(degrading) == "signal weakening: half weight since 2026-05-02"
    assert weight_note_for_rep({**degrading, "weight_factor": 0.4}) == "signal weakening: 40% weight since 2026-05-02"
    assert (
        weight_note_for_rep({**degrading, "weight_factor": 0.0})
        == "signal not working lately: not counted since 2026-05-02"
    )
    assert weight_note_for_rep(full) is None and weight_note_for_rep({"name": "before health fed the scores"}) is None
    message = account_message(
        "#revenue",
        "*Acme* matched",
        title="Acme",
        domain="acme.io",
        score=0.31,
        score_rank=1,
        signals=[degrading, full],
        playbook="hot-accounts",
        day=date(2026, 5, 6),
        crm_url=None,
    )
    with FakeSlack(TOKEN) as slack:
        assert SlackSender(TOKEN, slack.base_url, timeout_seconds=5).send(message, "k").outcome == "sent"
        [sent] = slack.messages
    why = next(b["text"]["text"] for b in sent["blocks"] if b.get("text", {}).get("text", "").startswith("*Why"))
    assert why.splitlines()[1:] == [
        "• Invited teammate 3+ times · _2 days ago_ · _(signal weakening: half weight since 2026-05-02)_",
        "• Raised money · _today_",
    ]
    assert "degrading" not in json.dumps(sent) and "0.5" not in json.dumps(sent)  # no internal wording or factors
