"""Settings and destinations: beton.yaml's settings read and changed (validated, never secrets), and the Attio fields beton writes matched to the workspace's attributes.

* `GET /settings`, `GET /api/settings` — every setting by section: its value, its default, what it means, whether it
  differs from the default and whether the app may change it; the settings file; for each destination whether its
  secret's environment variable is set (never its value). Strings are shown with a URL's query and user info
  redacted (`redacted`): settings hold no secret by design, but a webhook URL could carry a token.
* `POST /settings`, `POST /api/settings` — change plain settings (a number, text, true/false, a choice or a list of
  those) in beton.yaml: `settings.settings_change_text` rewrites the file keeping its comments, and
  `settings.write_settings_file` replaces it only when the new settings load. Playbooks, experiments, the Attio
  mapping and the webhook host allowlist stay hand-edited (or, for the mapping, the auto-match's). The app's
  pages use the new settings at once; runs read beton.yaml when they start.
* `GET /destinations`, `GET /api/destinations` — Slack, Attio and webhooks: used by which playbooks, their secret
  set or not, and the outbox's actions by status per destination (`store.outbox.destination_counts`).
* `GET /api/destinations/attio/fields`, `POST /api/destinations/attio/auto-match` (and the page's form) — the
  field auto-match of `beton destinations attio fields`, as a dry run and applied (`app.attio_setup`).

Writes need the app token (the API: `Authorization: Bearer`; the pages: a session and the form's CSRF token).
"""

from __future__ import annotations

import json
import os
import re
import threading
import types
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union, get_args, get_origin

import yaml
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel

from beton_pipeline.app import attio_setup, auth
from beton_pipeline.app.access import Reader, Warehouse
from beton_pipeline.app.web import (
    Refused,
    WarehouseJSON,
    WarehouseUnavailable,
    bearer_ok,
    checked_form,
    json_object,
    signed_in,
    templates,
)
from beton_pipeline.core.crm_fields import CRM_FIELDS, FieldProposal
from beton_pipeline.core.playbooks import (
    SLUG,
    AttioAction,
    PlaybookConfigError,
    SlackAction,
    WebhookAction,
    attio_target,
)
from beton_pipeline.destinations.attio import API_KEY_ENV as ATTIO_KEY_ENV
from beton_pipeline.destinations.http import REDACTED
from beton_pipeline.destinations.slack import TOKEN_ENV as SLACK_TOKEN_ENV
from beton_pipeline.destinations.webhook import secret_env_var
from beton_pipeline.settings import (
    PROJECT_ROOT,
    Settings,
    SettingsError,
    config_path,
    load_settings,
    settings_change_text,
    write_settings_file,
)
from beton_pipeline.store.outbox import destination_counts

api = APIRouter(prefix="/api", default_response_class=WarehouseJSON)
pages = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)


SECTIONS = {
    "revenue": "What an account is worth and how many your sales team can work: projected ARR and the lead score.",
    "windows": "Which days of an account's life may predict, and how long it has to convert.",
    "thresholds": "How strong and how certain a signal must be before beton recommends enabling it.",
    "discovery": "Which behaviours are tried as signals, and how the lead-score model is fitted.",
    "freshness": "How far behind the data may be before a run calls a table stale.",
    "ingest": "How files are read, and how many bad rows a run tolerates.",
    "monitoring": "How each signal's health is checked, day by day.",
    "scoring": "How signals add up to an account's score, and which accounts count as leads.",
    "demo": "The demo data set's size.",
    "schedule": "When the daily run starts.",
    "signals": "What a custom signal file that cannot be used does to a run.",
    "sources": 'Connectors: which vendors\' APIs are pulled, and how (README, "Connectors").',
    "playbooks": 'What beton does when accounts score or a signal\'s health changes (README, "Playbooks").',
    "experiments": "A/B tests read out of the events' feature flags.",
    "destinations": "How playbook actions are delivered (the Destinations page shows where they go).",
}
"""Each section of beton.yaml in a sentence, for the settings page."""

BY_HAND = {
    "sources": "connectors send their API keys to these hosts and write where these paths say: edited in beton.yaml "
    "by hand",
    "playbooks": "playbooks are edited in beton.yaml by hand",
    "experiments": "experiments are edited in beton.yaml by hand",
    "destinations.attio": "the Attio mapping is recorded by the auto-match on the Destinations page",
    "destinations.webhook_allowed_hosts": "the hosts webhooks may reach are edited in beton.yaml by hand",
}
"""Settings (and sections) the app does not change, and why."""

NEXT_RUN = (
    "beton run, the schedule and the sensors read beton.yaml when a run starts: the next run uses the new values; "
    "this app's pages use them now."
)
_FILE = threading.Lock()
"""One change of the settings file at a time in this process (read, change, validate, replace, reload)."""
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]+")


# --- the settings, as the pages show them ------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """One setting: its dotted `path`, its `value` and `default` (strings redacted), what it means, and whether the
    app may change it (`kind` says how its form field reads; `why_not` why it cannot be changed here)."""

    path: str
    value: object
    default: object
    description: str | None
    kind: str | None
    choices: tuple[str, ...]
    nullable: bool
    why_not: str | None

    @property
    def changeable(self) -> bool:
        return self.why_not is None

    @property
    def changed(self) -> bool:
        return self.value != self.default

    @property
    def text(self) -> str:
        """The value as the form shows it (and reads it back): JSON lists, true/false, empty for null."""
        return form_text(self.value)

    @property
    def default_text(self) -> str:
        return form_text(self.default)

    def as_json(self) -> dict:
        return {
            "setting": self.path,
            "value": self.value,
            "default": self.default,
            "changed": self.changed,
            "description": self.description,
            "changeable": self.changeable,
            **({"why_not": self.why_not} if self.why_not else {}),
        }


def _redact_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if not parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(
        (
            parts.scheme,
            f"{REDACTED}@{host}" if "@" in parts.netloc else host,
            parts.path,
            REDACTED if parts.query else "",
            REDACTED if parts.fragment else "",
        )
    )


def redacted(value: object) -> object:
    """`value` with every URL in its strings stripped of its query, fragment and user info (they can carry a
    token); containers walked, models as their values."""
    if isinstance(value, BaseModel):
        return redacted(value.model_dump())
    if isinstance(value, str):
        return _URL.sub(lambda m: _redact_url(m.group()), value)
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(v) for v in value]
    return value


def form_text(value: object) -> str:
    """A value as a form field's text: null empty, true/false, lists as JSON, numbers and text as they are."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(list(value) if isinstance(value, list | tuple) else value, ensure_ascii=False)


def _members(annotation) -> list:
    if get_origin(annotation) in (Union, types.UnionType):
        return [m for a in get_args(annotation) for m in _members(a)]
    return [annotation]


def _scalar(annotation) -> bool:
    return get_origin(annotation) is Literal or annotation in (int, float, str, bool, type(None))


def _kind(annotation) -> tuple[str | None, tuple[str, ...], bool]:
    """How a setting of this type is edited: bool, choice, number, text, list or mixed (None: not a plain
    setting); the choices of a choice; whether null is allowed."""
    members = _members(annotation)
    nullable = type(None) in members
    members = [m for m in members if m is not type(None)]
    lists = [m for m in members if get_origin(m) is tuple]
    if any(len(get_args(m)) != 2 or get_args(m)[1] is not Ellipsis or not _scalar(get_args(m)[0]) for m in lists):
        return None, (), nullable
    if not all(_scalar(m) for m in members if m not in lists):
        return None, (), nullable
    if lists:
        return ("list" if len(lists) == len(members) else "mixed"), (), nullable
    if all(get_origin(m) is Literal for m in members):
        return "choice", tuple(str(c) for m in members for c in get_args(m)), nullable
    if members == [bool]:
        return "bool", (), nullable
    if set(members) <= {int, float}:
        return "number", (), nullable
    return ("text" if members == [str] else "mixed"), (), nullable


def _hand_reason(path: str) -> str | None:
    return next((why for prefix, why in BY_HAND.items() if path == prefix or path.startswith(prefix + ".")), None)


def _sentence(text: str | None) -> str | None:
    """A description as the page shows it: a sentence (a capital first, a full stop last)."""
    if not text:
        return text
    text = text.strip()
    return text[0].upper() + text[1:] + ("" if text.endswith((".", ")", "?")) else ".")


def _walk(model: BaseModel, prefix: str) -> Iterator[Setting]:
    for name, info in type(model).model_fields.items():
        path, value = f"{prefix}.{name}", getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _walk(value, path)
            continue
        kind, choices, nullable = _kind(info.annotation)
        default = info.get_default(call_default_factory=True)
        why_not = _hand_reason(path) or (
            None if kind else "not a plain value (a table of values or a list of objects): edit it in beton.yaml"
        )
        yield Setting(
            path,
            redacted(value),
            None if info.is_required() else redacted(default),
            _sentence(info.description),
            kind,
            choices,
            nullable,
            why_not,
        )


@dataclass(frozen=True)
class Section:
    """A top-level section of beton.yaml: its settings, or (playbooks, experiments) its value as a whole."""

    name: str
    description: str
    settings: tuple[Setting, ...]
    value: object = None

    def as_json(self) -> dict:
        out = {"section": self.name, "description": self.description, "settings": [s.as_json() for s in self.settings]}
        if self.name in BY_HAND:
            out.update(value=self.value, changeable=False, why_not=BY_HAND[self.name])
        return out


def sections(settings: Settings) -> list[Section]:
    """Every section of `settings` in beton.yaml's order (destinations as `core.playbooks.DestinationSettings`)."""
    out = []
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if name == "destinations":
            value = settings.playbook_config().destinations
        if isinstance(value, BaseModel):
            out.append(Section(name, SECTIONS.get(name, ""), tuple(_walk(value, name))))
        else:
            out.append(Section(name, SECTIONS.get(name, ""), (), redacted(value)))
    return out


def catalog(settings: Settings) -> dict[str, Setting]:
    """Every setting by dotted path."""
    return {s.path: s for section in sections(settings) for s in section.settings}


# --- secrets: set or not, never their values ---------------------------------------------------------------------
def _is_set(name: str) -> bool:
    return bool(os.environ.get(name, "").strip())


def _webhooks(settings: Settings) -> dict[str, str]:
    """Webhook name → its URL (redacted), as the playbooks name them."""
    return {
        a.name: str(redacted(a.url))
        for p in settings.playbook_config().playbooks
        for a in p.then
        if isinstance(a, WebhookAction)
    }


def secrets(settings: Settings) -> dict:
    """For each destination, its secret's environment variable and whether it is set (true/false only)."""
    return {
        "slack": {"env_var": SLACK_TOKEN_ENV, "set": _is_set(SLACK_TOKEN_ENV)},
        "attio": {"env_var": ATTIO_KEY_ENV, "set": _is_set(ATTIO_KEY_ENV)},
        "webhooks": [
            {"name": name, "env_var": secret_env_var(name), "set": _is_set(secret_env_var(name))}
            for name in _webhooks(settings)
        ],
    }


# --- the settings file ------------------------------------------------------------------------------------------
def settings_file(request: Request) -> tuple[Path | None, str | None]:
    """The settings file the app may change, or None and the reason it may not."""
    path: Path | None = request.app.state.config_path
    if path is None:
        return None, (
            "This beton serve was started without a settings file, so its settings cannot be changed here: edit "
            "beton.yaml and restart it."
        )
    named = os.environ.get("BETON_CONFIG")
    if not path.exists() and (path.resolve() != (PROJECT_ROOT / "beton.yaml").resolve() or named):
        return None, (
            f"{path}: settings file not found (named by BETON_CONFIG): create it, or start beton serve without "
            "BETON_CONFIG to use the project's beton.yaml."
        )
    return path, None


def _writable(request: Request) -> Path:
    path, reason = settings_file(request)
    if path is None:
        raise Refused(reason, 409)
    return path


def _reload(path: Path) -> Settings:
    """The settings as beton serve loads them: the project's file with the demo's sections on demo data, any
    other file alone."""
    return load_settings() if path.resolve() == config_path().resolve() else load_settings(path)


def _use(reader: Warehouse, path: Path) -> None:
    """Load the changed settings for this app's pages (runs read the file when they start)."""
    try:
        reader.use_settings(_reload(path))
    except SettingsError as exc:
        raise Refused(f"{path} was changed but does not load with this app's sources: {exc}", 409) from None


def _check_changes(changes: dict, known: dict[str, Setting]) -> None:
    """Refused (400) for a setting that does not exist, is not changed here, or a value that is not plain."""
    for path, value in changes.items():
        setting = known.get(path)
        if setting is None:
            why = _hand_reason(path)
            raise Refused(
                f"{path} cannot be changed from the app: {why}."
                if why
                else f"{path} is not a setting: give section.setting as GET /api/settings lists them "
                "(e.g. thresholds.min_lift).",
                400,
            )
        if not setting.changeable:
            raise Refused(f"{path} cannot be changed from the app: {setting.why_not}.", 400)
        plain = (str, int, float, bool, type(None))
        if not (isinstance(value, plain) or (isinstance(value, list) and all(isinstance(v, plain) for v in value))):
            raise Refused(f"{path}: give a number, text, true/false, null or a list of those, not {value!r}.", 400)


def change_settings(request: Request, reader: Warehouse, changes: dict) -> dict:
    """Apply `changes` (dotted path → value) to the settings file if the new settings load; what changed."""
    path = _writable(request)
    _check_changes(changes, catalog(reader.settings))
    with _FILE:
        before = catalog(reader.settings)
        try:
            write_settings_file(path, settings_change_text(path, changes))
        except SettingsError as exc:
            raise Refused(str(exc), 400) from None
        _use(reader, path)
        after = catalog(reader.settings)
    changed = [
        {"setting": p, "old": before[p].value, "new": after[p].value}
        for p in changes
        if p in after and before[p].value != after[p].value
    ]
    return {"settings_file": str(path), "changed": changed, "note": NEXT_RUN}


def _overview(request: Request, reader: Warehouse) -> dict:
    path, reason = settings_file(request)
    if path is not None and request.app.state.token is None:
        reason = f"This beton serve is read-only: start it with {auth.TOKEN_ENV} set to change settings."
    return {
        "settings_file": str(request.app.state.config_path) if request.app.state.config_path else None,
        "changeable": reason is None,
        "why_not": reason,
        "sections": [s.as_json() for s in sections(reader.settings)],
        "secrets": secrets(reader.settings),
    }


@api.get("/settings", tags=["settings"])
def api_settings(request: Request, reader: Reader) -> WarehouseJSON:
    """The effective settings by section: each setting's `value`, `default`, `changed` (from the default),
    `description` and whether the app may change it (`changeable`, else `why_not`); playbooks and experiments as
    their `value`. `settings_file` is the file they came from and `changeable` whether the app may change it.
    `secrets`: each destination's environment variable and whether it is set (never its value). URLs in strings
    are shown without their query, fragment or user info."""
    return WarehouseJSON(_overview(request, reader))


@api.post("/settings", tags=["settings"])
async def api_change_settings(request: Request, reader: Reader) -> WarehouseJSON:
    """Change settings in beton.yaml (comments kept), with `Authorization: Bearer <BETON_APP_TOKEN>`: the JSON body
    `{"changes": {"thresholds.min_lift": 1.5, "discovery.first_n_days": [1, 3, 7]}}`. Only plain settings (a
    number, text, true/false, a choice or a list of those); 400 naming the setting when one is unknown, not
    changeable here or does not validate (nothing is written then); 409 when the app has no settings file to
    change. Answers what `changed` (`old` → `new`); runs use it from their next start, the pages at once."""
    bearer_ok(request)
    body = await json_object(request, '{"changes": {"section.setting": value, …}}')
    changes = body.get("changes")
    if not isinstance(changes, dict) or not changes:
        raise Refused('give the settings to change as {"changes": {"section.setting": value, …}}', 400)
    return WarehouseJSON(await run_in_threadpool(change_settings, request, reader, changes))


def _settings_context(request: Request, reader: Warehouse, **extra) -> dict:
    nonce = signed_in(request)
    overview = _overview(request, reader)
    return {
        "title": "Settings",
        "sections": sections(reader.settings),
        "settings_file": overview["settings_file"],
        "why_not": overview["why_not"],
        "secrets": overview["secrets"],
        "writes": request.app.state.token is not None,
        "csrf": auth.csrf_token(request.app.state.token, nonce) if nonce and overview["changeable"] else None,
        "form": {},
        **extra,
    }


@pages.get("/settings")
def settings_page(request: Request, reader: Reader) -> Response:
    changed = request.query_params.getlist("changed")
    known = catalog(reader.settings)
    shown = [(p, request.query_params.get(f"was.{p}", ""), known[p].text) for p in changed if p in known]
    return templates.TemplateResponse(request, "settings.html", _settings_context(request, reader, changed=shown))


def _from_form(setting: Setting, text: str) -> object:
    """A form field's text as the setting's value (text settings as typed; others read as YAML: numbers, true,
    null, lists)."""
    text = text.strip()
    if setting.kind in ("text", "choice"):
        return None if not text and setting.nullable else text
    if setting.kind == "bool":
        return text == "true"
    try:
        return yaml.safe_load(text) if text else None
    except (yaml.YAMLError, ValueError):  # ValueError: a date-like text that is no date (2099-99-99)
        raise Refused(
            f"{setting.path}: {text!r} is not a value; write a number, true or false, null, or a list like [1, 3, 7].",
            400,
        ) from None


@pages.post("/settings")
async def settings_change(request: Request, reader: Reader) -> Response:
    form = await checked_form(request)
    known = catalog(reader.settings)
    try:
        changes = {
            p: _from_form(s, form[p])
            for p, s in known.items()
            if s.changeable and p in form and form[p].strip() != s.text.strip()
        }
        done = await run_in_threadpool(change_settings, request, reader, changes) if changes else {"changed": []}
    except Refused as exc:
        context = await run_in_threadpool(_settings_context, request, reader, error=exc.message, form=form)
        return templates.TemplateResponse(request, "settings.html", context, exc.status)
    query = [("changed", c["setting"]) for c in done["changed"]]
    query += [(f"was.{c['setting']}", form_text(c["old"])) for c in done["changed"]]
    return RedirectResponse(f"/settings?{urllib.parse.urlencode(query)}#changes", status_code=303)


# --- destinations -----------------------------------------------------------------------------------------------
def _targets(settings: Settings) -> list[dict]:
    """Each destination the playbooks name (one per Slack channel, Attio attribute, webhook), with its playbooks."""
    config = settings.playbook_config()
    targets: dict[str, dict] = {}
    for playbook in config.playbooks:
        for action in playbook.then:
            extra: dict = {}
            if isinstance(action, SlackAction):
                kind, destination = "slack", action.destination
            elif isinstance(action, AttioAction):
                kind = "attio"
                try:
                    destination = attio_target(action, config.destinations).destination
                except PlaybookConfigError as exc:
                    destination, extra = action.destination, {"problem": str(exc)}
            else:
                kind, destination = "webhook", action.destination
                env = secret_env_var(action.name)
                extra = {"name": action.name, "url": redacted(action.url), "env_var": env, "secret_set": _is_set(env)}
            entry = targets.setdefault(
                destination, {"type": kind, "destination": destination, "playbooks": [], **extra}
            )
            entry["playbooks"].append(playbook.name)
    return list(targets.values())


def destinations(reader: Warehouse) -> dict:
    """Slack, Attio and webhooks: configured (a playbook uses it) or not, secrets set or not, the playbooks using
    each, and the outbox's actions by status per destination (`outbox`: why they are missing, when they are)."""
    settings = reader.settings
    targets = _targets(settings)
    counts, outbox = [], None
    try:
        with reader.open() as con:
            counts = destination_counts(con).to_dicts()
    except WarehouseUnavailable as exc:
        outbox = exc.message
    by_destination = {t["destination"]: t for t in targets}
    for row in counts:
        entry = by_destination.get(row["destination"])
        if entry is None:  # the outbox holds it; beton.yaml no longer names it
            entry = by_destination[row["destination"]] = {
                "type": row["destination_type"],
                "destination": row["destination"],
                "playbooks": [],
            }
            targets.append(entry)
        entry.setdefault("actions", {})[row["status"]] = row["actions"]
    mapping = settings.playbook_config().destinations.attio
    secret = secrets(settings)
    out = []
    for kind in ("slack", "attio", "webhook"):
        mine = [{"actions": {}, **t} for t in targets if t["type"] == kind]
        actions: dict[str, int] = {}
        for t in mine:
            for status, n in t["actions"].items():
                actions[status] = actions.get(status, 0) + n
        env_vars = (
            [{"env_var": w["env_var"], "set": w["set"]} for w in secret["webhooks"]]
            if kind == "webhook"
            else [secret[kind]]
        )
        entry = {
            "type": kind,
            "configured": any(t["playbooks"] for t in mine),
            "secrets": env_vars,
            "playbooks": sorted({p for t in mine for p in t["playbooks"]}),
            "actions": actions,
            "targets": mine,
        }
        if kind == "attio":
            entry.update(object=mapping.object, fields=mapping.fields.mapped())
        out.append(entry)
    return {"dry_run": settings.playbook_config().destinations.dry_run, "outbox": outbox, "destinations": out}


@api.get("/destinations", tags=["destinations"])
def api_destinations(reader: Reader) -> WarehouseJSON:
    """Slack, Attio and webhooks (`destinations`): `configured` (a playbook uses it), `secrets` (each environment
    variable and whether it is set, never its value), the `playbooks` using it, its outbox `actions` by status, and
    its `targets` (each channel, attribute or webhook: playbooks and actions; an Attio `field:` action not yet
    mapped carries its `problem`). `dry_run` is destinations.dry_run; `outbox` says why actions are missing."""
    return WarehouseJSON(destinations(reader))


# --- the Attio field auto-match ---------------------------------------------------------------------------------
APP_CHOICE = 'use {{"{field}": "SLUG"}} (the field\'s box on the Destinations page)'
"""How the app chooses an attribute for a field, in a conflict's advice."""
APP_RETRY = "auto-match again"
AttioObject = Annotated[str | None, Query(alias="object", max_length=63, description="the Attio object's slug")]


def _recorded(request: Request, reader: Warehouse):
    """The recorded mapping: the settings file's, else (no file) the loaded settings'."""
    path = request.app.state.config_path
    if path is not None and path.exists():
        return attio_setup.recorded_mapping(path)
    return reader.settings.playbook_config().destinations.attio


def _object(value: object) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not re.match(SLUG, value):
        raise Refused(f"object {value!r}: give an Attio object's slug (e.g. companies)", 400)
    return value


def _plan(request: Request, reader: Warehouse, object_slug: str | None, use: dict | None = None):
    if not _is_set(ATTIO_KEY_ENV):
        raise Refused(
            f"{ATTIO_KEY_ENV} is not set where beton serve runs: export an Attio access token with the scopes "
            "object_configuration:read and object_configuration:read-write, and restart it.",
            409,
        )
    try:
        return attio_setup.plan(request.app.state.config_path, _recorded(request, reader), object_slug, use)
    except attio_setup.AttioSetupError as exc:
        raise Refused(exc.message, 400 if exc.stage == "settings" else 502) from None


def _proposal(p: FieldProposal) -> dict:
    return {
        "field": p.field,
        "action": p.action,
        "attribute": p.api_slug,
        "title": p.title or None,
        "type": p.value_type,
        "reason": p.reason,
    }


def plan_json(setup: attio_setup.Plan) -> dict:
    """A plan as `beton destinations attio fields` prints its dry run."""
    return {
        "object": setup.object,
        "settings_file": str(setup.path) if setup.path else None,
        "proposals": [_proposal(p) for p in setup.proposals],
        "would_create": [p.api_slug for p in setup.creates],
        "would_record": setup.mapping,
        "conflicts": [
            {"field": p.field, "advice": attio_setup.conflict_advice(p, APP_CHOICE)} for p in setup.conflicts
        ],
    }


@api.get("/destinations/attio/fields", tags=["destinations"])
def api_attio_fields(request: Request, reader: Reader, object_slug: AttioObject = None) -> WarehouseJSON:
    """The Attio field auto-match as a dry run (`beton destinations attio fields`): for each field beton writes
    (score, rank, top_signals, why) its `action` (use an attribute, create one, or a conflict), `attribute` slug,
    `title`, `type` and `reason`; what applying it would create and record. `object`: the Attio object (default:
    destinations.attio.object). Reads Attio with BETON_ATTIO_API_KEY; 409 when it is unset, 502 when Attio fails."""
    return WarehouseJSON(plan_json(_plan(request, reader, _object(object_slug))))


def auto_match(request: Request, reader: Warehouse, object_slug: str | None, use: dict) -> dict:
    """Apply the auto-match unless a field conflicts: the attributes created and the mapping recorded."""
    path = _writable(request)
    with _FILE:
        setup = _plan(request, reader, object_slug, use)
        if setup.conflicts:
            raise Refused(
                f"{len(setup.conflicts)} field(s) conflict with an attribute in Attio; nothing was changed:\n"
                + "\n".join(attio_setup.conflict_advice(p, APP_CHOICE) for p in setup.conflicts),
                409,
            )
        created: list[FieldProposal] = []
        try:
            done = attio_setup.apply(setup, created.append, APP_CHOICE, APP_RETRY)
        except attio_setup.AttioSetupError as exc:
            made = f"\nCreated in Attio before that: {', '.join(p.api_slug for p in created)}." if created else ""
            raise Refused(exc.message + made, 400 if exc.stage == "settings" else 502) from None
        _use(reader, path)
    return {
        "object": setup.object,
        "settings_file": str(path),
        "created": [_proposal(p) for p in done.created],
        "recorded": done.recorded,
        "note": f"playbooks write them with an action like {{type: attio, field: {next(iter(done.recorded))}}}; "
        + NEXT_RUN
        if done.recorded
        else NEXT_RUN,
    }


@api.post("/destinations/attio/auto-match", tags=["destinations"])
async def api_auto_match(request: Request, reader: Reader) -> WarehouseJSON:
    """Apply the Attio field auto-match (`beton destinations attio fields --apply`), with `Authorization: Bearer
    <BETON_APP_TOKEN>`: the JSON body `{"object": "companies", "use": {"score": "lead_score"}}` (both optional).
    Creates the missing attributes and records destinations.attio in beton.yaml; answers what was `created` and
    `recorded`. A conflict (409), invalid settings (400) or an Attio failure (502) is a paragraph, and the file
    is not changed."""
    bearer_ok(request)
    body = await json_object(request, '{"object": "companies", "use": {"score": "SLUG"}}')
    use = body.get("use") or {}
    if not isinstance(use, dict):
        raise Refused('give use as {"FIELD": "SLUG"}, e.g. {"score": "lead_score"}', 400)
    try:
        use = attio_setup.checked_use(use)
    except attio_setup.AttioSetupError as exc:
        raise Refused(exc.message, 400) from None
    return WarehouseJSON(await run_in_threadpool(auto_match, request, reader, _object(body.get("object")), use))


def _destinations_context(request: Request, reader: Warehouse, object_slug: str | None = None, **extra) -> dict:
    nonce = signed_in(request)
    path, reason = settings_file(request)
    try:
        fields, fields_error = plan_json(_plan(request, reader, object_slug)), None
    except Refused as exc:
        fields, fields_error = None, exc.message
    return {
        "title": "Destinations",
        **destinations(reader),
        "fields": fields,
        "fields_error": fields_error,
        "crm_fields": CRM_FIELDS,
        "settings_file": str(path) if path else None,
        "why_not": reason,
        "writes": request.app.state.token is not None,
        "csrf": auth.csrf_token(request.app.state.token, nonce) if nonce and path else None,
        "form": {},
        **extra,
    }


@pages.get("/destinations")
def destinations_page(request: Request, reader: Reader, object_slug: AttioObject = None) -> Response:
    try:
        object_slug = _object(object_slug)
    except Refused as exc:
        context = _destinations_context(request, reader, error=exc.message)
        return templates.TemplateResponse(request, "destinations.html", context, exc.status)
    done = {
        "created": request.query_params.getlist("created"),
        "recorded": [r.split("=", 1) for r in request.query_params.getlist("recorded") if "=" in r],
    }
    context = _destinations_context(request, reader, object_slug, done=done)
    return templates.TemplateResponse(request, "destinations.html", context)


@pages.post("/destinations/attio/auto-match")
async def auto_match_form(request: Request, reader: Reader) -> Response:
    form = await checked_form(request)
    try:
        object_slug = _object(form.get("object", "").strip())
        use = {f.name: form[f"use.{f.name}"].strip() for f in CRM_FIELDS if form.get(f"use.{f.name}", "").strip()}
        try:
            use = attio_setup.checked_use(use)
        except attio_setup.AttioSetupError as exc:
            raise Refused(exc.message, 400) from None
        done = await run_in_threadpool(auto_match, request, reader, object_slug, use)
    except Refused as exc:
        context = await run_in_threadpool(_destinations_context, request, reader, None, error=exc.message, form=form)
        return templates.TemplateResponse(request, "destinations.html", context, exc.status)
    query = [("created", p["attribute"]) for p in done["created"]]
    query += [("recorded", f"{f}={s}") for f, s in done["recorded"].items()]
    return RedirectResponse(f"/destinations?{urllib.parse.urlencode(query)}#attio-fields", status_code=303)
