"""A signal's plain-language name, for people who sell rather than query: Slack, `beton signals`, web pages.

One function, :func:`signal_name`, turns a `beton.signals` row (or a candidate row: `kind`, `event`,
`property`, `value`, `window_days`, `threshold`, `definition`, `candidate_key` or `key`) into a short
sentence fragment:

| kind             | example name                                                        |
|------------------|---------------------------------------------------------------------|
| `event_count`    | Invited teammate 3+ times in their first 14 days                    |
| `event_property` | Viewed a page (current URL: /pricing) 2+ times in their first 7 days |
| `attribute`      | Industry: Fintech · Company size: 51-200 employees · Billed yearly  |
| `intent`         | Funding round in the 90 days before they started                    |
| `pair`           | the two parts' names joined by "and" (pass the parts' rows)         |
| `condition`/`sql`| the name the signal file gives (custom signals)                     |

Event and property names are shown as words (`api_key_created` → "API key created", `$pageview` →
"Viewed a page"); values are shown as they are. A kind this module does not know falls back to the
row's `definition`, never to an error, so a new kind shows its technical text until it gets a phrase.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from beton_pipeline.core.conditions import describe, parse_condition_json

POSTHOG_EVENTS = {
    "$pageview": "Viewed a page",
    "$pageleave": "Left a page",
    "$screen": "Viewed a screen",
    "$autocapture": "Clicked in the app",
    "$identify": "Identified",
    "$feature_flag_called": "Saw a feature flag",
    "$rageclick": "Rage-clicked",
    "$exception": "Hit an error",
}
"""PostHog's built-in events, as a person would say them."""

POSTHOG_PROPERTIES = {"$current_url": "current URL", "$pathname": "page", "$host": "host", "$browser": "browser"}

ATTRIBUTE_LABELS = {"industry": "Industry", "employee_band": "Company size", "plan_interval": "Billed"}
PLAN_INTERVALS = {"month": "monthly", "year": "yearly", "week": "weekly", "day": "daily", "quarter": "quarterly"}
ACRONYMS = frozenset({"api", "crm", "sso", "saml", "url", "csv", "pdf", "ai", "id", "ui", "sdk", "cli", "sql", "arr"})
CUSTOM_KINDS = ("condition", "sql")
CONDITION_PREFIX = "custom:condition:"


def words(name: str) -> str:
    """An event or property name as lower-case words: `api_key_created` → "API key created", `SignedUp` → "signed up"."""
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name.strip().lstrip("$"))
    parts = [p for p in re.split(r"[\s_.\-:/]+", text) if p]
    return " ".join(p.upper() if p.lower() in ACRONYMS else p.lower() for p in parts) or name


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def _event(name: str) -> str:
    return POSTHOG_EVENTS.get(name) or _sentence(words(name))


def _times(threshold: object) -> str:
    n = int(threshold) if threshold is not None else 1
    return "" if n <= 1 else (" twice" if n == 2 else f" {n}+ times")


def _window(days: object) -> str:
    return "" if days is None else f" in their first {int(days)} day{'s' if int(days) != 1 else ''}"


def _attribute(attribute: str, value: str) -> str:
    if attribute == "plan_interval":
        return f"Billed {PLAN_INTERVALS.get(value.lower(), 'per ' + value)}"
    if attribute == "employee_band":
        return f"Company size: {value} employees"
    return f"{ATTRIBUTE_LABELS.get(attribute) or _sentence(words(attribute))}: {value}"


def _intent(signal_type: str, lookback: object, until_window_end: bool, observation_days: int | None) -> str:
    subject = _sentence(words(signal_type))
    days = "" if lookback is None else f" {int(lookback)}"
    if not until_window_end:
        return f"{subject} in the{days} days before they started"
    end = f"the end of their first {observation_days} days" if observation_days else "the end of their first weeks"
    return f"{subject} between{days} days before they started and {end}"


def _joined(a: str, b: str) -> str:
    second = b[:1].lower() + b[1:] if b[1:2].islower() else b  # "API …" keeps its capitals
    return f"{a}, and {second}"


def _custom_label(signal: Mapping) -> str:
    """The name a custom signal's file gives: `definition` is "NAME: TEXT" with TEXT what it tests."""
    definition = str(signal.get("definition") or "")
    key = str(signal.get("candidate_key") or signal.get("key") or "")
    texts: list[str] = []
    if signal.get("kind") == "sql":
        texts = [definition[definition.rfind(": SQL ") + 2 :]] if ": SQL " in definition else []
    elif key.startswith(CONDITION_PREFIX):
        try:
            condition = parse_condition_json(key[len(CONDITION_PREFIX) :])
        except ValueError:
            condition = None
        if condition is not None:  # the text says "(observation window)" after the window that is the observation one
            windows = {int(w) for w in re.findall(r'"within_days":\s*(\d+)', key)}
            texts = [describe(condition, None), *(describe(condition, w) for w in sorted(windows))]
    # TEXT lists an `all`/`any`'s parts in the file's order, the key in canonical order: compare words as multisets
    wanted = {tuple(sorted(t.split())) for t in texts if t}
    for match in re.finditer(": ", definition):
        if tuple(sorted(definition[match.end() :].split())) in wanted:
            return definition[: match.start()]
    return definition.split(": ", 1)[0] if ": " in definition else definition


def signal_name(signal: Mapping, parts: Sequence[Mapping] = (), observation_days: int | None = None) -> str:
    """The plain-language name of one signal (see the module docstring for each kind).

    `signal` is a `beton.signals` row as a mapping; `parts` the rows of a pair's two parts (without them a
    pair shows its definition); `observation_days` names the end of the window of intent signals that run
    to it.
    """
    kind = signal.get("kind")
    event, prop, value = signal.get("event"), signal.get("property"), signal.get("value")
    if kind == "event_count" and event:
        return f"{_event(str(event))}{_times(signal.get('threshold'))}{_window(signal.get('window_days'))}"
    if kind == "event_property" and event and prop:
        label = POSTHOG_PROPERTIES.get(str(prop)) or words(str(prop))
        return (
            f"{_event(str(event))} ({label}: {value}){_times(signal.get('threshold'))}"
            f"{_window(signal.get('window_days'))}"
        )
    if kind == "attribute" and prop and value is not None:
        return _attribute(str(prop), str(value))
    if kind == "intent" and value:
        key = str(signal.get("candidate_key") or signal.get("key") or "")
        return _intent(str(value), signal.get("window_days"), key.endswith("before_window_end"), observation_days)
    if kind == "pair" and len(parts) == 2:
        a, b = (signal_name(p, observation_days=observation_days) for p in parts)
        return _joined(a, b)
    if kind in CUSTOM_KINDS:
        return _custom_label(signal)
    return str(signal.get("definition") or signal.get("signal_id") or "")
