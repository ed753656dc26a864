"""Playbooks, pure: configuration, rule evaluation, message templates, idempotency keys, holdouts.

A *playbook* (beton.yaml, ``playbooks:``) says **when** to act and **what** to do:

* account playbooks fire per scored account and day (``beton.account_scores``): any/all of named
  signals fired, a minimum score, the top N by rank — every condition given must hold. An account
  qualifies through a signal only if that signal is not ``broken`` on that day (its entry in
  ``signals_fired`` says ``"health": "broken"``; :func:`with_signal_ids` leaves it out); a
  ``degrading`` signal still qualifies it, and counts at its reduced weight in the score that
  ``min_score`` and ``top_n`` read (``core.scoring``);
* health playbooks fire per signal and day when its health in ``beton.signal_health`` changes to
  one of the listed states.

Each (playbook, subject, day, destination) becomes at most one row of the outbox,
``beton.playbook_actions``, keyed by :func:`idempotency_key`; the outbox sends it (see
``beton_pipeline/store/outbox.py``). An account acted on (or held out) in a playbook's ``cooldown_days``
is not planned again, and a day more than ``destinations.max_action_age_days`` behind the latest
is planned as ``dry_run`` (recorded, never sent). This module computes *which* rows and *what* they
say — each action's message as plain values (:class:`PlannedAction`, :data:`Message`) — and nothing
else: no I/O, no Dagster, no wire format. Rules decide; the senders in ``beton_pipeline/destinations``
render the messages (Block Kit, Attio record bodies, webhook JSON), called from
``beton_pipeline/store/playbooks.py``, which plans and writes the outbox rows.

Randomized holdout: account ``a`` is held out of playbook ``p`` when
``U(p, a) < holdout_fraction``, with ``U(p, a)`` = the first 8 bytes of
``SHA-256(p + "\\x1f" + a)`` read as a big-endian unsigned integer, divided by 2^64
(:func:`holdout_draw`). The draw is uniform, independent of everything about the account, fixed
over time (an account stays in its arm every day), different per playbook, and reproducible in
any language or in SQL (DuckDB: ``('0x' || left(sha256(p || chr(31) || a), 16))::ubigint / 2^64``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Annotated, Literal
from urllib.parse import quote, urlsplit

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from beton_pipeline.core.crm_fields import CRM_FIELDS, FIELDS_BY_NAME
from beton_pipeline.core.formatting import fmt
from beton_pipeline.core.links import page_url

HEALTH_STATES = ("healthy", "degrading", "broken", "insufficient_data")
STATUSES = ("pending", "sent", "retrying", "dead", "held_out", "dry_run")
"""Outbox statuses. Only ``pending`` and ``retrying`` rows are ever sent."""

SLUG = r"^[a-z0-9][a-z0-9_-]{0,62}$"

ACCOUNT_TEMPLATE_FIELDS = (
    "account_id",
    "company",
    "company_name",
    "domain",
    "score",
    "score_raw",
    "score_rank",
    "signals",
    "signal_ids",
    "why",
    "playbook",
    "day",
    "crm_url",
    "app_url",
)
"""Placeholders an account playbook's templates may use (``$company``, ``${score}``, …)."""

HEALTH_TEMPLATE_FIELDS = (
    "signal_id",
    "signal_name",
    "definition",
    "health",
    "previous_health",
    "lift",
    "lift_ci_low",
    "lift_ci_high",
    "backtest_lift",
    "playbook",
    "day",
    "app_url",
)
"""Placeholders a health playbook's templates may use."""

DEFAULT_ACCOUNT_SLACK_TEMPLATE = "*$company* matched *$playbook*: score $score (rank $score_rank)."
DEFAULT_HEALTH_SLACK_TEMPLATE = "Signal `$signal_id` ($definition) changed from $previous_health to *$health* on $day."


class PlaybookConfigError(ValueError):
    """A playbook, experiment or destinations entry in beton.yaml is invalid; the message names it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _template_fields(template: str) -> set[str]:
    """Placeholders in a ``string.Template``; a malformed ``$`` raises ValueError."""
    tpl = string.Template(template)
    if not tpl.is_valid():
        raise ValueError(f"invalid template {template!r}: write $name or ${{name}}, and $$ for a literal $")
    return set(tpl.get_identifiers())


class WebhookURLError(ValueError):
    """A webhook URL that is not http(s) or whose host is not on the allowlist."""


def host_allowed(host: str, allowed_hosts: Iterable[str]) -> bool:
    """Whether ``host`` matches an entry: an exact host name, or ``*.example.com`` for its sub-domains."""
    host = host.lower().rstrip(".")
    for entry in allowed_hosts:
        entry = entry.lower().strip().rstrip(".")
        if entry.startswith("*."):
            if host.endswith(entry[1:]) and host != entry[2:]:
                return True
        elif host == entry:
            return True
    return False


def check_url(url: str, allowed_hosts: Iterable[str] = ()) -> str:
    """``url`` if it is http(s) with a host (and, when an allowlist is given, an allowed host); else WebhookURLError.

    The webhook URL policy: checked when beton.yaml is read and again by the sender before every POST.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookURLError(f"webhook URL must be http(s)://host/…, got scheme {parts.scheme or 'none'!r}")
    if parts.username or parts.password:
        raise WebhookURLError("webhook URL must not carry credentials (user:password@); use the signing secret")
    allowed = [h for h in allowed_hosts if h.strip()]
    if allowed and not host_allowed(parts.hostname, allowed):
        raise WebhookURLError(f"webhook host {parts.hostname!r} is not in destinations.webhook_allowed_hosts")
    return url


def render(template: str, values: Mapping[str, object]) -> str:
    """``template`` with ``$name`` / ``${name}`` replaced by ``str(values[name])`` (``$$`` → ``$``).

    ``string.Template`` does substitution only: no attribute access, indexing, expressions or code,
    so a value (or a template) can never execute anything. Unknown names were rejected when the
    configuration was read.
    """
    return string.Template(template).substitute({k: "" if v is None else str(v) for k, v in values.items()})


# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------
class PlaybookWhen(_Strict):
    """When a playbook fires. Every condition given must hold (AND); give at least one.

    Account conditions: ``any_signals`` (at least one fired), ``all_signals`` (every one fired),
    ``min_score`` (calibrated probability, 0–1), ``top_n`` (``score_rank <= top_n`` that day).
    Health condition: ``health_changed_to`` (a signal's health changed to one of these states),
    optionally only for the signals in ``health_of``.
    """

    any_signals: tuple[str, ...] = ()
    all_signals: tuple[str, ...] = ()
    min_score: float | None = Field(None, ge=0, le=1)
    top_n: int | None = Field(None, ge=1)
    health_changed_to: tuple[Literal["healthy", "degrading", "broken", "insufficient_data"], ...] = ()
    health_of: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _one_kind(self) -> PlaybookWhen:
        account = bool(self.any_signals or self.all_signals or self.min_score is not None or self.top_n is not None)
        health = bool(self.health_changed_to)
        if account and health:
            raise ValueError(
                "a playbook reacts to accounts (any_signals/all_signals/min_score/top_n) or to health_changed_to, not both"
            )
        if not account and not health:
            raise ValueError(
                "give at least one condition: any_signals, all_signals, min_score, top_n or health_changed_to"
            )
        if self.health_of and not health:
            raise ValueError("health_of needs health_changed_to")
        return self

    @property
    def kind(self) -> Literal["account", "health"]:
        return "health" if self.health_changed_to else "account"


class SlackAction(_Strict):
    """Post a Block Kit message to a channel (``#name`` or a channel id)."""

    type: Literal["slack"]
    channel: str = Field(min_length=1)
    template: str | None = Field(None, description="mrkdwn headline; data values are escaped before substitution")

    @property
    def destination(self) -> str:
        return f"slack:{self.channel}"


CrmFieldName = Literal["score", "rank", "top_signals", "why"]


class AttioAction(_Strict):
    """Set an attribute on the account's Attio record (CRM companies only: the account id is the record id).

    Either ``attribute`` (a slug or id) with ``value`` and ``value_type``, or ``field`` (one of
    ``core.crm_fields.CRM_FIELDS``): the attribute ``destinations.attio.fields`` maps it to, written with the
    field's own value and type (``beton destinations attio fields --apply`` records the mapping).
    """

    type: Literal["attio"]
    object: str = "companies"
    attribute: str | None = Field(None, min_length=1, description="attribute slug or id, e.g. beton_score")
    field: CrmFieldName | None = Field(None, description="a mapped field: score, rank, top_signals or why")
    value: str = "$score_raw"
    value_type: Literal["text", "number"] = "number"

    @model_validator(mode="after")
    def _one_target(self) -> AttioAction:
        if (self.attribute is None) == (self.field is None):
            raise ValueError("give exactly one of attribute: SLUG or field: score|rank|top_signals|why")
        if self.field is not None and {"value", "value_type"} & self.model_fields_set:
            raise ValueError(f"field: {self.field} brings its own value and type; remove value/value_type")
        return self

    @property
    def destination(self) -> str:
        """``attio:{object}.{attribute}``; for a field action ``attio:{object}.field:{field}`` (planned actions carry
        the mapped attribute instead: :func:`attio_target`)."""
        return f"attio:{self.object}.{self.attribute or 'field:' + str(self.field)}"


class WebhookAction(_Strict):
    """POST a signed JSON event; the secret comes from ``BETON_WEBHOOK_SECRET_<NAME>``."""

    type: Literal["webhook"]
    name: str = Field(pattern=SLUG)
    url: str

    @property
    def destination(self) -> str:
        return f"webhook:{self.name}"

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        return check_url(url)


Action = Annotated[SlackAction | AttioAction | WebhookAction, Field(discriminator="type")]


class Playbook(_Strict):
    """One playbook from beton.yaml (see the module docstring and the README example)."""

    name: str = Field(pattern=SLUG)
    description: str = ""
    enabled: bool = True
    when: PlaybookWhen
    then: tuple[Action, ...] = Field(min_length=1)
    holdout_fraction: float | None = Field(
        None, ge=0, lt=1, description="share of matched accounts held out; default 0.1 (account playbooks), 0 (health)"
    )
    dry_run: bool = False
    max_attempts: int = Field(6, ge=1, le=50)
    cooldown_days: int = Field(
        7,
        ge=0,
        description="an account planned (sent or held out) in the previous N days is not planned again; 0 = every day it matches",
    )
    readout_window_days: int | None = Field(
        None,
        ge=1,
        description="conversion counted within N days of the first action; default windows.conversion_window_days",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Playbook:
        destinations = [a.destination for a in self.then]
        if len(set(destinations)) != len(destinations):
            raise ValueError(f"two actions share a destination ({', '.join(sorted(destinations))}); each must differ")
        allowed = set(HEALTH_TEMPLATE_FIELDS if self.kind == "health" else ACCOUNT_TEMPLATE_FIELDS)
        for i, action in enumerate(self.then):
            if isinstance(action, AttioAction) and self.kind == "health":
                raise ValueError(
                    f"then[{i}]: an attio action needs an account playbook (health playbooks have no account)"
                )
            templates = {
                SlackAction: lambda a: [a.template or ""],
                AttioAction: lambda a: [a.value] if a.field is None else [],  # a field's template is ours
                WebhookAction: lambda a: [],
            }[type(action)](action)
            for template in templates:
                unknown = _template_fields(template) - allowed
                if unknown:
                    raise ValueError(
                        f"then[{i}]: unknown placeholder(s) {', '.join('$' + u for u in sorted(unknown))}; "
                        f"available: {', '.join('$' + f for f in sorted(allowed))}"
                    )
        if self.kind == "health" and self.holdout_fraction:
            raise ValueError("holdout_fraction applies to account playbooks only")
        return self

    @property
    def kind(self) -> Literal["account", "health"]:
        return self.when.kind

    @property
    def effective_holdout_fraction(self) -> float:
        if self.kind == "health":
            return 0.0
        return 0.1 if self.holdout_fraction is None else self.holdout_fraction


class AttioFieldMapping(_Strict):
    """``destinations.attio.fields``: the attribute slug (or id) each field is written to; a field left out is unmapped."""

    score: str | None = Field(None, pattern=SLUG, description="the number attribute the score (0-1) is written to")
    rank: str | None = Field(None, pattern=SLUG, description="the number attribute the day's rank is written to")
    top_signals: str | None = Field(None, pattern=SLUG, description="the text attribute the top signals go to")
    why: str | None = Field(None, pattern=SLUG, description="the text attribute the one-line reason ($why) goes to")

    def mapped(self) -> dict[str, str]:
        """Field → attribute slug, for the mapped fields only, in ``CRM_FIELDS`` order."""
        return {f.name: getattr(self, f.name) for f in CRM_FIELDS if getattr(self, f.name)}


class AttioDestination(_Strict):
    """``destinations.attio``: the Attio object playbooks write to and the field → attribute mapping."""

    object: str = Field("companies", pattern=SLUG, description="the Attio object whose records playbooks update")
    fields: AttioFieldMapping = AttioFieldMapping()


class DestinationSettings(_Strict):
    """``destinations:`` in beton.yaml: how actions are delivered (no secrets here)."""

    attio: AttioDestination = Field(
        AttioDestination(), description="where `field:` Attio actions write (`beton destinations attio fields`)"
    )

    dry_run: bool = Field(False, description="record what would be sent (status dry_run) and send nothing")
    webhook_allowed_hosts: tuple[str, ...] = Field(
        (), description="when non-empty, webhooks may only go to these hosts (`*.example.com` allowed)"
    )
    crm_record_url: str | None = Field(
        None,
        description="link to an account's CRM record: $record_id, $domain, e.g. https://app.attio.com/acme/company/$record_id/overview",
    )
    max_action_age_days: int | None = Field(
        3,
        ge=0,
        description="a day older than the latest scored (or health) day by more than this is planned as dry_run, never sent: "
        "a backfill of old days records what would have fired without paging anyone; null = send every day",
    )
    backoff_base_seconds: float = Field(
        10.0, ge=0, description="the first wait before a failed delivery is retried; it doubles with each attempt"
    )
    backoff_max_seconds: float = Field(3600.0, ge=0, description="the longest wait between two delivery attempts")
    max_inline_wait_seconds: float = Field(
        30.0, ge=0, description="longer waits are left to the retry sensor instead of sleeping in the run"
    )
    timeout_seconds: float = Field(10.0, gt=0, description="seconds one delivery (Slack, Attio, webhook) may take")

    @field_validator("crm_record_url")
    @classmethod
    def _template(cls, url: str | None) -> str | None:
        if url is None:
            return None
        unknown = _template_fields(url) - {"record_id", "domain"}
        if unknown:
            raise ValueError(
                f"unknown placeholder(s) {', '.join('$' + u for u in sorted(unknown))}; use $record_id and $domain"
            )
        if not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url


EXPOSURE_EVENT = "$feature_flag_called"
"""PostHog's event for a feature flag shown to a user: an experiment's exposure."""
MAX_KEY_CHARS = 256
"""The longest flag, variant or goal event (what the tracking spool accepts: a flag key, an e-mail, a UUID)."""
MAX_VARIANTS = 20
"""The most variants an experiment may have (control included)."""
MAX_WINDOW_DAYS = 3650
"""The longest conversion window (ten years): longer ones are mistakes, and overflow date arithmetic."""
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
"""Text without control characters (line breaks, tabs, NUL)."""


class Experiment(_Strict):
    """One experiment read from PostHog ``$feature_flag_called`` events (``experiments:`` in beton.yaml).

    Exposure: a user's (``distinct_id``) first ``$feature_flag_called`` for ``flag``; its variant is
    the ``$feature_flag_response`` of that first exposure. Conversion: ``goal_event`` by the same user
    strictly after that first exposure (within ``conversion_window_days`` when given; then only users
    exposed at least that long before the data's last event are counted).
    """

    name: str = Field(pattern=SLUG)
    flag: str = Field(min_length=1, max_length=MAX_KEY_CHARS, pattern=PRINTABLE)
    goal_event: str = Field(min_length=1, max_length=MAX_KEY_CHARS, pattern=PRINTABLE)
    control: str = "control"
    variants: tuple[Annotated[str, Field(min_length=1, max_length=MAX_KEY_CHARS, pattern=PRINTABLE)], ...] = Field(
        (), max_length=MAX_VARIANTS, description="the expected variants, control included; empty = every response seen"
    )
    weights: tuple[float, ...] = Field(
        (), description="expected traffic shares in the order of variants; empty = equal"
    )
    conversion_window_days: int | None = Field(None, ge=1, le=MAX_WINDOW_DAYS)
    start: date | None = None
    end: date | None = None

    @field_validator("conversion_window_days", mode="before")
    @classmethod
    def _days_not_bool(cls, value):
        if isinstance(value, bool):  # true would read as 1 day
            raise ValueError("give a number of days, not true or false")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        if self.variants and self.control not in self.variants:
            raise ValueError(f"control {self.control!r} is not one of variants {list(self.variants)}")
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants must be distinct: {list(self.variants)}")
        if self.goal_event == EXPOSURE_EVENT:
            raise ValueError(f"goal_event cannot be {EXPOSURE_EVENT}, the exposure itself")
        if self.weights and len(self.weights) != len(self.variants):
            raise ValueError("weights need variants of the same length")
        if any(not math.isfinite(w) or w <= 0 for w in self.weights):
            raise ValueError("weights must be positive numbers")
        if self.start and self.end and self.end <= self.start:
            raise ValueError("end must be after start")
        return self


@dataclass(frozen=True)
class PlaybookConfig:
    """Everything the playbook and readout assets need from beton.yaml."""

    playbooks: tuple[Playbook, ...]
    experiments: tuple[Experiment, ...]
    destinations: DestinationSettings
    app_base_url: str | None = None
    """`beton serve`'s public address (`app.base_url`): messages link its pages when set."""

    def playbook(self, name: str) -> Playbook:
        for p in self.playbooks:
            if p.name == name:
                return p
        raise KeyError(
            f"no playbook named {name!r} in beton.yaml (have: {', '.join(p.name for p in self.playbooks) or 'none'})"
        )

    def selected(self, names: Sequence[str] = ()) -> tuple[Playbook, ...]:
        """The enabled playbooks, or those of ``names`` that are enabled; a name not in beton.yaml raises PlaybookConfigError."""
        unknown = sorted(set(names) - {p.name for p in self.playbooks})
        if unknown:
            raise PlaybookConfigError(f"unknown playbook(s) {', '.join(unknown)}: not in beton.yaml")
        return tuple(p for p in self.playbooks if p.enabled and (not names or p.name in names))

    @property
    def account_playbooks(self) -> tuple[Playbook, ...]:
        return tuple(p for p in self.playbooks if p.enabled and p.kind == "account")

    @property
    def health_playbooks(self) -> tuple[Playbook, ...]:
        return tuple(p for p in self.playbooks if p.enabled and p.kind == "health")


def _errors(exc: ValidationError, prefix: str) -> str:
    return "; ".join(
        f"{prefix}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}".replace(f"{prefix}.:", f"{prefix}:")
        for err in exc.errors()
    )


def parse_playbook_config(
    playbooks: Sequence[Mapping] = (),
    experiments: Sequence[Mapping] = (),
    destinations: Mapping | None = None,
    app_base_url: str | None = None,
) -> PlaybookConfig:
    """Validate the raw ``playbooks``, ``experiments`` and ``destinations`` sections (``app_base_url``: where
    `beton serve` is reached, for the messages' links).

    Raises PlaybookConfigError naming each bad field (``playbooks[0].then.1.webhook.url: …``),
    duplicate names, and webhook hosts outside ``destinations.webhook_allowed_hosts``.
    """
    problems: list[str] = []
    try:
        dest = DestinationSettings.model_validate(dict(destinations or {}))
    except ValidationError as exc:
        problems.append(_errors(exc, "destinations"))
        dest = DestinationSettings()
    parsed: list[Playbook] = []
    for i, raw in enumerate(playbooks or ()):
        try:
            parsed.append(Playbook.model_validate(dict(raw) if isinstance(raw, Mapping) else raw))
        except ValidationError as exc:
            problems.append(_errors(exc, f"playbooks[{i}]"))
    exps: list[Experiment] = []
    for i, raw in enumerate(experiments or ()):
        try:
            exps.append(Experiment.model_validate(dict(raw) if isinstance(raw, Mapping) else raw))
        except ValidationError as exc:
            problems.append(_errors(exc, f"experiments[{i}]"))
    for label, names in (("playbook", [p.name for p in parsed]), ("experiment", [e.name for e in exps])):
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.append(f"duplicate {label} name(s): {', '.join(dupes)}")
    for p in parsed:
        planned: dict[str, int] = {}
        for i, action in enumerate(p.then):
            if isinstance(action, WebhookAction):
                try:
                    check_url(action.url, dest.webhook_allowed_hosts)
                except WebhookURLError as exc:
                    problems.append(f"playbooks[{p.name}].then[{i}].url: {exc}")
            if isinstance(action, AttioAction):
                try:
                    target = attio_target(action, dest).destination
                except PlaybookConfigError as exc:
                    problems.append(f"playbooks[{p.name}].then[{i}]: {exc}")
                    continue
                if target in planned:  # a field mapped to an attribute another action writes: one key, one write
                    problems.append(
                        f"playbooks[{p.name}].then[{i}] writes {target}, as then[{planned[target]}] does; "
                        "each action must write a different attribute"
                    )
                planned[target] = i
    if problems:
        raise PlaybookConfigError("; ".join(problems))
    return PlaybookConfig(tuple(parsed), tuple(exps), dest, app_base_url)


# ------------------------------------------------------------------------------------------------
# Keys and the holdout
# ------------------------------------------------------------------------------------------------
def idempotency_key(playbook: str, subject: str, day: date | str, destination: str) -> str:
    """``sha256("{playbook}\\x1f{subject}\\x1f{YYYY-MM-DD}\\x1f{destination}")`` as 32 hex characters.

    One key per (playbook, account or signal, day, destination): inserting a key that exists is a
    no-op, which is what makes re-runs and backfills send nothing twice.
    """
    text = "\x1f".join((playbook, subject, str(day), destination))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def holdout_draw(playbook: str, account_ids: Iterable[str]) -> np.ndarray:
    """``U(p, a)`` in [0, 1) per account (see the module docstring for the formula)."""
    prefix = playbook.encode("utf-8") + b"\x1f"
    # One hash per *matched* account (the output size): a few microseconds each.
    ints = [int.from_bytes(hashlib.sha256(prefix + str(a).encode("utf-8")).digest()[:8], "big") for a in account_ids]
    return np.asarray(ints, dtype=np.uint64).astype(np.float64) / 2.0**64


def is_held_out(playbook: str, account_ids: Sequence[str], holdout_fraction: float) -> np.ndarray:
    """Boolean array: ``holdout_draw(playbook, a) < holdout_fraction``."""
    if holdout_fraction <= 0:
        return np.zeros(len(account_ids), dtype=bool)
    return holdout_draw(playbook, account_ids) < holdout_fraction


def is_stale(day: date, latest_day: date | None, max_age_days: int | None) -> bool:
    """Whether ``day`` is more than ``max_age_days`` before ``latest_day`` (then it is never sent)."""
    return max_age_days is not None and latest_day is not None and (latest_day - day).days > max_age_days


# ------------------------------------------------------------------------------------------------
# Rule evaluation
# ------------------------------------------------------------------------------------------------
_FIRED_SIGNALS = pl.List(pl.Struct({"signal_id": pl.String, "health": pl.String}))


def is_broken(signal: Mapping) -> bool:
    """True for a ``signals_fired`` entry whose signal was ``broken`` on the day scored (it does not count)."""
    return signal.get("health") == "broken"


def with_signal_ids(scores: pl.DataFrame) -> pl.DataFrame:
    """``scores`` with a ``signal_ids`` list column taken from ``signals_fired`` (unless already there): the
    signals an account can qualify through that day, i.e. every fired signal but the broken ones
    (entries without ``health``, written before scores were weighted by health, count).

    ``signals_fired`` is a list of entries (structs with ``signal_id`` and ``health``), or the JSON text
    of one in a table an older beton wrote (decoded)."""
    if "signal_ids" in scores.columns:
        return scores
    fired = pl.col("signals_fired")
    if scores.schema["signals_fired"] == pl.String:
        fired = fired.str.json_decode(_FIRED_SIGNALS)
    return scores.with_columns(
        fired.list.eval(
            pl.element().filter(pl.element().struct.field("health").fill_null("") != "broken").struct.field("signal_id")
        ).alias("signal_ids")
    )


def account_condition(when: PlaybookWhen) -> pl.Expr:
    """The polars predicate of an account playbook over ``account_scores`` columns (nulls never match)."""
    cond = pl.lit(True)
    if when.min_score is not None:
        cond = cond & (pl.col("score") >= when.min_score)
    if when.top_n is not None:
        cond = cond & (pl.col("score_rank") <= when.top_n)
    if when.any_signals:
        cond = cond & pl.col("signal_ids").list.eval(pl.element().is_in(list(when.any_signals))).list.any()
    for signal_id in when.all_signals:
        cond = cond & pl.col("signal_ids").list.contains(signal_id)
    return cond.fill_null(False)


def match_accounts(scores: pl.DataFrame, when: PlaybookWhen) -> pl.DataFrame:
    """The rows of one day's ``account_scores`` that satisfy ``when`` (vectorised; sorted by rank)."""
    if when.kind != "account":
        raise ValueError("match_accounts needs an account playbook")
    if scores.is_empty():
        return scores
    frame = with_signal_ids(scores) if (when.any_signals or when.all_signals) else scores
    matched = frame.filter(account_condition(when))
    order = [c for c in ("score_rank", "account_id") if c in matched.columns]
    return matched.sort(order, nulls_last=True) if order else matched


def health_changes(
    health: pl.DataFrame, states: Iterable[str] = HEALTH_STATES, signals: Iterable[str] = ()
) -> pl.DataFrame:
    """Signal-days whose health differs from the same signal's previous observed day.

    Input: ``beton.signal_health`` rows (``day``, ``signal_id``, ``health``, …). Output: those rows
    where ``previous_health`` (health on the signal's latest earlier day) exists, differs, and the
    new health is in ``states`` (and the signal in ``signals`` when given), with ``previous_health``
    added. A signal's first observed day is never a change.
    """
    if health.is_empty():
        return health.with_columns(pl.lit(None, dtype=pl.String).alias("previous_health"))
    ordered = health.sort(["signal_id", "day"]).with_columns(
        pl.col("health").shift(1).over("signal_id").alias("previous_health")
    )
    cond = (
        pl.col("previous_health").is_not_null()
        & (pl.col("previous_health") != pl.col("health"))
        & pl.col("health").is_in(list(states))
    )
    signals = list(signals)
    if signals:
        cond = cond & pl.col("signal_id").is_in(signals)
    return ordered.filter(cond)


# ------------------------------------------------------------------------------------------------
# Planning: what each action says (values only; the destinations render the wire format)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MatchedAccount:
    """One matched account as its messages show it (raw values; nothing escaped or formatted).

    ``company`` is the display name (company name, else domain, else id); ``top_contributions`` are
    the score's top contributions as stored; ``top_signals`` the same, or the first three fired
    signals when the score has no contributions, each with its plain-language ``name`` added
    (:func:`~beton_pipeline.core.signal_names.signal_name`, else its definition).
    """

    account_id: str
    company: str
    company_name: str | None
    domain: str | None
    is_crm_company: bool | None
    crm_url: str | None
    score: float | None
    score_rank: int | None
    top_contributions: tuple[dict, ...]
    top_signals: tuple[dict, ...]
    app_url: str | None = None
    """The account's page in `beton serve` (`app.base_url`), else None."""


@dataclass(frozen=True)
class HealthChange:
    """One signal whose health changed (the ``beton.signal_health`` row plus ``previous_health``)."""

    signal_id: str
    definition: str | None
    health: str
    previous_health: str | None
    lift: float | None
    lift_ci_low: float | None
    lift_ci_high: float | None
    backtest_lift: float | None
    app_url: str | None = None
    """The signal's page in `beton serve` (`app.base_url`), else None."""


@dataclass(frozen=True)
class SlackAccountMessage:
    """A Slack message about a matched account: the headline template, its raw values, the account."""

    channel: str
    headline_template: str
    values: Mapping[str, object]
    account: MatchedAccount
    playbook: str
    day: date


@dataclass(frozen=True)
class SlackHealthMessage:
    """A Slack message about a signal's health change: the headline template, its raw values, the change."""

    channel: str
    headline_template: str
    values: Mapping[str, object]
    change: HealthChange
    day: date


@dataclass(frozen=True)
class AttioTarget:
    """What an Attio action writes: the attribute of ``object``, the value template and its type."""

    object: str
    attribute: str
    value: str
    value_type: Literal["text", "number"]

    @property
    def destination(self) -> str:
        return f"attio:{self.object}.{self.attribute}"


def attio_target(action: AttioAction, destinations: DestinationSettings) -> AttioTarget:
    """The attribute, template and type an Attio action writes: its own, or for ``field:`` the mapped attribute
    (``destinations.attio``) with the field's template and type. PlaybookConfigError when the field is unmapped
    or the action names another object than the mapping's."""
    if action.field is None:
        return AttioTarget(action.object, str(action.attribute), action.value, action.value_type)
    mapping = destinations.attio
    slug = mapping.fields.mapped().get(action.field)
    if slug is None:
        raise PlaybookConfigError(
            f"field: {action.field} has no Attio attribute in destinations.attio.fields; run "
            f"`beton destinations attio fields --apply` to match or create it, or write attribute: SLUG instead"
        )
    if "object" in action.model_fields_set and action.object != mapping.object:
        raise PlaybookConfigError(
            f"field: {action.field} is mapped on {mapping.object}, not {action.object}; remove object: or use "
            f"attribute: SLUG"
        )
    spec = FIELDS_BY_NAME[action.field]
    return AttioTarget(mapping.object, slug, spec.template, spec.value_type)


@dataclass(frozen=True)
class AttioRecordUpdate:
    """Set ``attribute`` to ``value`` on the Attio record ``record_id`` of ``object``."""

    object: str
    record_id: str
    attribute: str
    value: str | float


@dataclass(frozen=True)
class AccountMatchedEvent:
    """A ``playbook.matched`` webhook event for one account."""

    webhook: str
    url: str
    idempotency_key: str
    playbook: str
    day: date
    account: MatchedAccount


@dataclass(frozen=True)
class HealthChangedEvent:
    """A ``signal.health_changed`` webhook event."""

    webhook: str
    url: str
    idempotency_key: str
    playbook: str
    day: date
    change: HealthChange


Message = SlackAccountMessage | SlackHealthMessage | AttioRecordUpdate | AccountMatchedEvent | HealthChangedEvent
"""What one action sends, as values; ``store/playbooks.py`` has each destination render it."""


@dataclass(frozen=True)
class PlannedAction:
    """One outbox row before any attempt: its key, subject, destination, status and message."""

    idempotency_key: str
    playbook: str
    day: date
    account_id: str | None
    signal_id: str | None
    destination: str
    destination_type: str
    held_out: bool
    status: str
    max_attempts: int
    message: Message


def score_entries(value: str | Iterable[Mapping] | None) -> list[dict]:
    """The entries of one ``account_scores`` explanation cell (``signals_fired``, ``top_contributions``) as
    JSON values, in their order: ``fired_at`` as ``YYYY-MM-DDTHH:MM:SSZ`` (UTC), the other fields as stored.

    ``value`` is a list of entries (mappings, as a typed list of structs reads), or the JSON text of one
    in a table an older beton wrote; anything else (null, malformed text) has no entries."""
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return []
        if not isinstance(value, list):
            return []
    return [{k: _json_value(v) for k, v in entry.items()} for entry in value if isinstance(entry, Mapping)]


def _json_value(value: object) -> object:
    """A datetime as the ``YYYY-MM-DDTHH:MM:SSZ`` text the entries' JSON always had (naive means UTC)."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    return value


def _crm_url(template: str | None, account_id: str, domain: str | None, is_crm: bool | None) -> str | None:
    if not template or not is_crm:
        return None
    return render(template, {"record_id": quote(str(account_id), safe=""), "domain": quote(str(domain or ""), safe="")})


_SINCE = re.compile(r"since (\d{4}-\d{2}-\d{2})")


def weight_note_for_rep(signal: Mapping) -> str | None:
    """Why a signal of an account's score counts less, in a sales rep's words (None at full weight).

    Reads a ``beton.account_scores`` entry's ``weight_factor`` and the day in its ``weight_note``
    ("weight halved: degrading since 2026-05-02"): "signal weakening: half weight since 2026-05-02";
    another factor reads "40% weight"; a broken signal (factor 0) "signal not working lately: not
    counted since …". Entries written before health fed the scores have no factor and get no note.
    """
    factor = signal.get("weight_factor")
    if factor is None or factor >= 1:
        return None
    found = _SINCE.search(str(signal.get("weight_note") or ""))
    since = f" since {found.group(1)}" if found else ""
    if factor <= 0:
        return f"signal not working lately: not counted{since}"
    weight = "half weight" if factor == 0.5 else f"{factor:.0%} weight"
    return f"signal weakening: {weight}{since}"


def _named(signals: Sequence[dict], names: Mapping[str, str]) -> tuple[dict, ...]:
    """Each signal dict with its plain-language ``name`` (from ``names`` by signal id, else its definition)."""
    return tuple(
        {**s, "name": names.get(str(s.get("signal_id"))) or s.get("definition") or s.get("signal_id")} for s in signals
    )


def matched_account(
    row: Mapping, crm_url: str | None, signal_names: Mapping[str, str] | None = None, app_url: str | None = None
) -> MatchedAccount:
    """A :class:`MatchedAccount` from one ``account_scores`` row (``crm_url`` and ``app_url``, the account's page in
    `beton serve`, already built; ``signal_names``: signal id → plain-language name, e.g.
    ``store.signal_detail.signal_names``)."""
    names = signal_names or {}
    top_contributions = score_entries(row.get("top_contributions"))
    return MatchedAccount(
        account_id=row["account_id"],
        company=row.get("company_name") or row.get("domain") or row["account_id"],
        company_name=row.get("company_name"),
        domain=row.get("domain"),
        is_crm_company=row.get("is_crm_company"),
        crm_url=crm_url,
        score=row.get("score"),
        score_rank=row.get("score_rank"),
        top_contributions=tuple(top_contributions),
        top_signals=_named(
            top_contributions or [s for s in score_entries(row.get("signals_fired")) if not is_broken(s)][:3], names
        ),
        app_url=app_url,
    )


def why_line(account: MatchedAccount) -> str:
    """One line on why an account scores as it does (``$why``): its score and rank, then its top signals by
    plain-language name, each with the day it fired and, when its health lowered its weight, why — e.g.
    "Likely to convert: 72% (rank 3). Top signals: Invited a teammate (fired 2026-03-01); Created an API key
    (fired 2026-02-27; signal weakening: half weight since 2026-02-28)." Dates, not "2 days ago": a CRM field
    keeps the text for days."""
    score = "—" if account.score is None else f"{100 * account.score:.0f}%"
    rank = "" if account.score_rank is None else f" (rank {account.score_rank})"
    signals = []
    for signal in account.top_signals:
        notes = [f"fired {str(signal['fired_at'])[:10]}"] if signal.get("fired_at") else []
        note = weight_note_for_rep(signal)
        notes += [note] if note else []
        signals.append(f"{signal['name']}" + (f" ({'; '.join(notes)})" if notes else ""))
    return f"Likely to convert: {score}{rank}. Top signals: {'; '.join(signals) or 'none'}."


def account_values(
    row: Mapping,
    playbook: str,
    day: date,
    crm_url: str | None,
    signal_names: Mapping[str, str] | None = None,
    app_url: str | None = None,
) -> dict[str, object]:
    """The template values of one matched account (raw, unescaped); ``$signals`` lists plain-language names,
    ``$why`` is :func:`why_line`, ``$app_url`` the account's page in `beton serve` (empty without
    ``app.base_url``)."""
    account = matched_account(row, crm_url, signal_names, app_url)
    score = account.score
    ids = row.get("signal_ids")
    if ids is None:
        ids = [s.get("signal_id") for s in score_entries(row.get("signals_fired")) if not is_broken(s)]
    return {
        "account_id": account.account_id,
        "company": account.company,
        "company_name": account.company_name or "",
        "domain": account.domain or "",
        "score": "—" if score is None else f"{100 * score:.0f}%",
        "score_raw": "" if score is None else f"{score:.4f}",
        "score_rank": "" if account.score_rank is None else account.score_rank,
        "signals": "; ".join(str(s["name"]) for s in account.top_signals) or "none",
        "signal_ids": ", ".join(str(i) for i in ids if i),
        "why": why_line(account),
        "playbook": playbook,
        "day": day.isoformat(),
        "crm_url": crm_url or "",
        "app_url": app_url or "",
    }


def _account_message(
    action,
    playbook: Playbook,
    account: MatchedAccount,
    day: date,
    values: Mapping[str, object],
    key: str,
    destinations: DestinationSettings,
) -> Message | None:
    if isinstance(action, SlackAction):
        return SlackAccountMessage(
            action.channel, action.template or DEFAULT_ACCOUNT_SLACK_TEMPLATE, values, account, playbook.name, day
        )
    if isinstance(action, AttioAction):
        if not account.is_crm_company:
            return None  # not in the CRM: there is no record to update
        target = attio_target(action, destinations)
        text = render(target.value, values)
        if target.value_type == "number":
            try:
                value: str | float = float(text)
            except ValueError:
                raise PlaybookConfigError(
                    f"playbook {playbook.name}: attio value {target.value!r} rendered {text!r}, not a number"
                ) from None
        else:
            value = text
        return AttioRecordUpdate(target.object, str(account.account_id), target.attribute, value)
    return AccountMatchedEvent(action.name, action.url, key, playbook.name, day, account)


def _planned_destination(action, destinations: DestinationSettings) -> str:
    """An action's destination; an Attio action's names the attribute it writes (a field's mapped one)."""
    return attio_target(action, destinations).destination if isinstance(action, AttioAction) else action.destination


def plan_account_actions(
    playbook: Playbook,
    matched: pl.DataFrame,
    day: date,
    destinations: DestinationSettings,
    dry_run: bool = False,
    signal_names: Mapping[str, str] | None = None,
    app_base_url: str | None = None,
) -> list[PlannedAction]:
    """The actions for the accounts ``matched`` on ``day``: one per account and action (messages name the
    signals by ``signal_names``: signal id → plain-language name; a signal not in it shows its definition; with
    ``app_base_url`` they link the account's page in `beton serve`).

    Held-out accounts (:func:`is_held_out`) get actions too, with ``held_out = true`` and status
    ``held_out`` (the message they would have received is kept for audit). In a dry run every action
    is ``dry_run``. Attio actions skip accounts that are not CRM companies (no record to update).
    A loop over matched rows × actions: the output size, not the input.
    """
    if playbook.kind != "account":
        raise ValueError("plan_account_actions needs an account playbook")
    if matched.is_empty():
        return []
    dry = dry_run or playbook.dry_run or destinations.dry_run
    ids = matched.get_column("account_id").cast(pl.String).to_list()
    held = is_held_out(playbook.name, ids, playbook.effective_holdout_fraction)
    actions: list[PlannedAction] = []
    for row, held_out in zip(matched.iter_rows(named=True), held.tolist(), strict=True):
        crm = _crm_url(destinations.crm_record_url, row["account_id"], row.get("domain"), row.get("is_crm_company"))
        app_url = page_url(app_base_url, "account", row["account_id"])
        account = matched_account(row, crm, signal_names, app_url)
        values = account_values(row, playbook.name, day, crm, signal_names, app_url)
        for action in playbook.then:
            destination = _planned_destination(action, destinations)
            key = idempotency_key(playbook.name, row["account_id"], day, destination)
            message = _account_message(action, playbook, account, day, values, key, destinations)
            if message is None:
                continue
            status = "dry_run" if dry else ("held_out" if held_out else "pending")
            actions.append(
                PlannedAction(
                    key,
                    playbook.name,
                    day,
                    row["account_id"],
                    None,
                    destination,
                    action.type,
                    held_out,
                    status,
                    playbook.max_attempts,
                    message,
                )
            )
    return actions


def _num(x: object) -> str:
    """Two decimals for a template; None and non-finite values print as ``—``."""
    return fmt(None if x is None or not np.isfinite(x) else float(x), ".2f")


def health_change(row: Mapping, app_url: str | None = None) -> HealthChange:
    """A :class:`HealthChange` from one row of :func:`health_changes` (``app_url``: the signal's page)."""
    return HealthChange(
        row["signal_id"],
        row.get("definition"),
        row["health"],
        row.get("previous_health"),
        row.get("lift"),
        row.get("lift_ci_low"),
        row.get("lift_ci_high"),
        row.get("backtest_lift"),
        app_url,
    )


def health_values(change: HealthChange, playbook: str, day: date, name: str | None = None) -> dict[str, object]:
    """The template values of one health change (raw, unescaped; numbers with two decimals); ``$signal_name`` is
    ``name`` (the signal's plain-language name), else its definition."""
    return {
        "signal_id": change.signal_id,
        "signal_name": name or change.definition or change.signal_id,
        "definition": change.definition or change.signal_id,
        "health": change.health,
        "previous_health": change.previous_health or "—",
        "lift": _num(change.lift),
        "lift_ci_low": _num(change.lift_ci_low),
        "lift_ci_high": _num(change.lift_ci_high),
        "backtest_lift": _num(change.backtest_lift),
        "playbook": playbook,
        "day": day.isoformat(),
        "app_url": change.app_url or "",
    }


def plan_health_actions(
    playbook: Playbook,
    changes: pl.DataFrame,
    day: date,
    destinations: DestinationSettings,
    dry_run: bool = False,
    signal_names: Mapping[str, str] | None = None,
    app_base_url: str | None = None,
) -> list[PlannedAction]:
    """The actions for the health changes (:func:`health_changes`) that happened on ``day`` (``signal_names``
    and ``app_base_url`` as in :func:`plan_account_actions`: messages link the signal's page)."""
    if playbook.kind != "health":
        raise ValueError("plan_health_actions needs a health playbook")
    todays = changes.filter(pl.col("day") == day) if not changes.is_empty() else changes
    if todays.is_empty():
        return []
    status = "dry_run" if dry_run or playbook.dry_run or destinations.dry_run else "pending"
    actions: list[PlannedAction] = []
    for row in todays.sort("signal_id").iter_rows(named=True):
        change = health_change(row, page_url(app_base_url, "signal", row["signal_id"]))
        values = health_values(change, playbook.name, day, (signal_names or {}).get(change.signal_id))
        for action in playbook.then:
            key = idempotency_key(playbook.name, change.signal_id, day, action.destination)
            if isinstance(action, SlackAction):
                message: Message = SlackHealthMessage(
                    action.channel, action.template or DEFAULT_HEALTH_SLACK_TEMPLATE, values, change, day
                )
            else:  # webhook (attio is rejected for health playbooks at validation)
                message = HealthChangedEvent(action.name, action.url, key, playbook.name, day, change)
            actions.append(
                PlannedAction(
                    key,
                    playbook.name,
                    day,
                    None,
                    change.signal_id,
                    action.destination,
                    action.type,
                    False,
                    status,
                    playbook.max_attempts,
                    message,
                )
            )
    return actions
