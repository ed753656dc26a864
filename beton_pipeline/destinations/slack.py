"""Slack: Block Kit messages for playbooks and signal-health alerts, sent with slack-sdk's WebClient.

Every value that comes from data (an account's name or domain, a signal's definition) is escaped
with :func:`escape_mrkdwn` before it enters ``mrkdwn`` text, so an account named ``<!channel>``
shows as text instead of notifying the channel. Message *templates* come from beton.yaml (trusted
configuration) and are not escaped: an admin may write ``<!here>`` in a template on purpose.

Account messages are written for a sales rep: the company's name, each signal's plain-language name
(``core.signal_names``) with when it fired ("2 days ago") and, when its health lowered its weight, since
when ("signal weakening: half weight since 2026-05-02"), and a button to the CRM record when
``destinations.crm_record_url`` is set; no internal ids and no score arithmetic.

The builders are pure (:func:`account_payload` and :func:`health_payload` turn a playbook's
message values into the stored payload); :class:`SlackSender` makes one ``chat.postMessage`` call per attempt (its
own retries are switched off so the outbox records and paces every attempt).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import date
from urllib.parse import urlsplit

from beton_pipeline.core.formatting import MISSING, fmt_ago
from beton_pipeline.core.playbooks import SlackAccountMessage, SlackHealthMessage, render, weight_note_for_rep
from beton_pipeline.destinations.http import DeliveryResult, classify_status, parse_retry_after, redact

DEFAULT_BASE_URL = "https://slack.com/api/"
TOKEN_ENV = "BETON_SLACK_TOKEN"
"""The environment variable holding the bot token (`chat:write`)."""
HEADER_MAX_CHARS = 150
SECTION_MAX_CHARS = 3000
TEXT_MAX_CHARS = 3000

_QUIET = logging.getLogger("beton.destinations.slack_sdk")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False  # slack-sdk logs failed requests itself; the outbox records them instead
_QUIET.setLevel(logging.CRITICAL + 1)

RETRYABLE_ERRORS = frozenset(
    {"ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
"""``ok: false`` error codes (HTTP 200) that are worth another attempt; every other code is permanent."""


def escape_mrkdwn(text: object) -> str:
    """Slack's control-character escaping: ``&`` → ``&amp;``, ``<`` → ``&lt;``, ``>`` → ``&gt;``.

    This is exactly what Slack documents for user text ("Escaping text"): with ``<`` and ``>``
    escaped, nothing in the value can form a link, a mention or a ``<!channel>`` broadcast.
    """
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_http_url(url: str | None) -> bool:
    if not url:
        return False
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _score_text(score: float | None, rank: int | None) -> str:
    if score is None:
        return "—"
    text = f"{100 * score:.0f}%"
    return f"{text} (rank {rank})" if rank is not None else text


def signals_mrkdwn(signals: Sequence[Mapping], today: date, limit: int = 5) -> str:
    """A bulleted list of signals by plain-language name (escaped), each with when it fired before `today`
    and, when the signal's health lowered its weight, why ("(signal weakening: half weight since …)")."""
    lines = []
    for sig in list(signals)[:limit]:
        name = escape_mrkdwn(sig.get("name") or sig.get("definition") or "a signal")
        ago = fmt_ago(sig.get("fired_at"), today)
        note = weight_note_for_rep(sig)
        lines.append(
            f"• {name}" + (f" · _{ago}_" if ago != MISSING else "") + (f" · _({escape_mrkdwn(note)})_" if note else "")
        )
    if len(signals) > limit:
        lines.append(f"… and {len(signals) - limit} more")
    return "\n".join(lines) if lines else "—"


def account_message(
    channel: str,
    headline_mrkdwn: str,
    *,
    title: str,
    domain: str | None,
    score: float | None,
    score_rank: int | None,
    signals: Sequence[Mapping],
    playbook: str,
    day: date,
    crm_url: str | None,
    app_url: str | None = None,
) -> dict:
    """The ``chat.postMessage`` arguments for one account: channel, fallback text and Block Kit blocks.

    ``headline_mrkdwn`` must already be rendered with escaped values; ``title``, ``domain`` and the
    signal names are escaped here. The CRM button and the beton page's button (``app_url``) are added only for
    an http(s) URL.
    """
    blocks: list[dict] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _cut(title or "Account", HEADER_MAX_CHARS), "emoji": False},
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": _cut(headline_mrkdwn, SECTION_MAX_CHARS)}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*Likely to convert*\n{_score_text(score, score_rank)}"},
                {"type": "mrkdwn", "text": f"*Website*\n{escape_mrkdwn(domain) if domain else '—'}"},
                {"type": "mrkdwn", "text": f"*Playbook*\n{escape_mrkdwn(playbook)} · {day.isoformat()}"},
            ],
        },
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": _cut("*Why this account*\n" + signals_mrkdwn(signals, day), SECTION_MAX_CHARS),
            },
        },
    ]
    buttons = _buttons((("Open in CRM", crm_url, "open_crm"), ("Open in beton", app_url, "open_beton")))
    return {"channel": channel, "text": _cut(headline_mrkdwn, TEXT_MAX_CHARS), "blocks": blocks + buttons}


def _buttons(links: Sequence[tuple[str, str | None, str]]) -> list[dict]:
    """An actions block of link buttons (label, URL, action id) for the http(s) URLs among `links`; none: no block."""
    elements = [
        {"type": "button", "text": {"type": "plain_text", "text": label}, "url": url, "action_id": action}
        for label, url, action in links
        if _is_http_url(url)
    ]
    return [{"type": "actions", "elements": elements}] if elements else []


def health_message(
    channel: str,
    headline_mrkdwn: str,
    *,
    signal_id: str,
    name: str | None,
    definition: str | None,
    previous_health: str | None,
    health: str,
    lift: float | None,
    lift_ci_low: float | None,
    lift_ci_high: float | None,
    backtest_lift: float | None,
    day: str,
    app_url: str | None = None,
) -> dict:
    """The ``chat.postMessage`` arguments for a signal whose health changed (with a button to the signal's page in
    beton when ``app_url`` is an http(s) URL)."""

    def num(x: float | None) -> str:
        return "—" if x is None else f"{x:.2f}"

    ci = f" ({num(lift_ci_low)}–{num(lift_ci_high)})" if lift_ci_low is not None and lift_ci_high is not None else ""
    blocks = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _cut(f"Signal health: {health}", HEADER_MAX_CHARS), "emoji": False},
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": _cut(headline_mrkdwn, SECTION_MAX_CHARS)}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*Signal*\n{escape_mrkdwn(name or definition or signal_id)}"},
                {
                    "type": "mrkdwn",
                    "text": f"*Health*\n{escape_mrkdwn(previous_health or '—')} → *{escape_mrkdwn(health)}*",
                },
                {"type": "mrkdwn", "text": f"*Live lift*\n{num(lift)}{ci}"},
                {"type": "mrkdwn", "text": f"*Backtest lift*\n{num(backtest_lift)}"},
            ],
        },
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": _cut(
                        f"`{escape_mrkdwn(signal_id)}` · {escape_mrkdwn(definition or signal_id)} · {day}",
                        SECTION_MAX_CHARS,
                    ),
                }
            ],
        },
        *_buttons((("Open in beton", app_url, "open_beton"),)),
    ]
    return {"channel": channel, "text": _cut(headline_mrkdwn, TEXT_MAX_CHARS), "blocks": blocks}


def _headline(template: str, values: Mapping[str, object]) -> str:
    """The headline: ``template`` (trusted, from beton.yaml) with every value escaped first."""
    return render(template, {k: escape_mrkdwn(v) for k, v in values.items()})


def account_payload(message: SlackAccountMessage) -> dict:
    """The stored ``chat.postMessage`` arguments of an account playbook's Slack action."""
    account = message.account
    return account_message(
        message.channel,
        _headline(message.headline_template, message.values),
        title=str(account.company),
        domain=account.domain,
        score=account.score,
        score_rank=account.score_rank,
        signals=account.top_signals,
        playbook=message.playbook,
        day=message.day,
        crm_url=account.crm_url or None,
        app_url=account.app_url,
    )


def health_payload(message: SlackHealthMessage) -> dict:
    """The stored ``chat.postMessage`` arguments of a health playbook's Slack action."""
    change = message.change
    return health_message(
        message.channel,
        _headline(message.headline_template, message.values),
        signal_id=change.signal_id,
        name=str(message.values.get("signal_name") or "") or None,
        definition=change.definition,
        previous_health=change.previous_health,
        health=change.health,
        lift=change.lift,
        lift_ci_low=change.lift_ci_low,
        lift_ci_high=change.lift_ci_high,
        backtest_lift=change.backtest_lift,
        day=message.day.isoformat(),
        app_url=change.app_url,
    )


class SlackSender:
    """Posts prepared messages with ``chat.postMessage`` (one attempt per call, no built-in retries)."""

    def __init__(self, token: str, base_url: str = DEFAULT_BASE_URL, timeout_seconds: float = 10.0):
        if not token:
            raise ValueError("the Slack token is empty (BETON_SLACK_TOKEN)")
        self._token = token
        self._base_url = base_url
        self._timeout = timeout_seconds

    def _client(self):
        from slack_sdk import WebClient

        return WebClient(
            token=self._token, base_url=self._base_url, timeout=self._timeout, retry_handlers=[], logger=_QUIET
        )

    def send(self, payload: Mapping, idempotency_key: str) -> DeliveryResult:
        """One ``chat.postMessage``; 429/5xx/transient ``ok: false`` codes → retry, other errors → fail."""
        from slack_sdk.errors import SlackApiError

        try:
            response = self._client().chat_postMessage(
                channel=payload["channel"],
                text=payload["text"],
                blocks=payload.get("blocks"),
                unfurl_links=False,
                unfurl_media=False,
            )
        except SlackApiError as exc:
            status = exc.response.status_code
            data = exc.response.data if isinstance(exc.response.data, dict) else {}
            code = str(data.get("error") or "")
            outcome = classify_status(status)
            if status == 200:
                outcome = "retry" if code in RETRYABLE_ERRORS else "fail"
            elif outcome == "sent":  # a 2xx that was not ok
                outcome = "fail"
            headers = exc.response.headers or {}
            retry_after = parse_retry_after(headers.get("Retry-After") or headers.get("retry-after"))
            label = (
                code
                if code and not code.startswith("Received a response in a non-JSON format")
                else "non-JSON response"
            )
            error = f"slack chat.postMessage: HTTP {status}" + (f" ({label})" if label else "")
            return DeliveryResult(outcome, status, retry_after=retry_after, error=redact(error, [self._token]))
        except Exception as exc:  # network: URLError, timeouts, connection resets
            reason = getattr(exc, "reason", exc)
            return DeliveryResult(
                "retry",
                None,
                error=redact(f"slack chat.postMessage: connection failed: {type(reason).__name__}", [self._token]),
            )
        return DeliveryResult("sent", response.status_code, response_id=str(response.get("ts") or "") or None)
