"""The Attio field auto-match, planned and applied: what `beton destinations attio fields` and the app's
destinations page (`/destinations`, `/api/destinations/attio/…`) both do, in plain functions.

`plan` reads the attributes of the Attio object (`destinations.attio_fields.AttioAttributes`, key from
`BETON_ATTIO_API_KEY`, base URL from `BETON_ATTIO_BASE_URL`) and proposes, per field beton writes (score, rank,
top signals, why), to use an attribute, create one, or report a conflict (`core.crm_fields.propose_fields`).
`apply` does what the plan says, in an order that leaves nothing half-done when it can be avoided: the settings
with `destinations.attio` recorded must load before any attribute is created in Attio, then the attributes are
created (one attempt each), then the settings file is replaced atomically (`settings.write_settings_file`).

It lives in the app package because it joins the settings file (layer `settings`) and an Attio client (layer
`destinations`): `destinations/` may not import the settings, and the CLI sits above the app. Every failure is an
`AttioSetupError` whose message is a short paragraph (one line per step) without the key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from beton_pipeline.core.crm_fields import FIELDS_BY_NAME, CrmAttribute, FieldProposal, propose_fields
from beton_pipeline.core.playbooks import SLUG, AttioDestination
from beton_pipeline.destinations.attio import API_KEY_ENV, BASE_URL_ENV, DEFAULT_BASE_URL
from beton_pipeline.destinations.attio_fields import AttioAttributes, AttioFieldsError
from beton_pipeline.settings import (
    SettingsError,
    attio_mapping_text,
    check_settings_text,
    read_settings_file,
    write_settings_file,
)

CLI_CHOICE = "--use {field}=SLUG"
"""How the command line chooses an attribute for a field (`conflict_advice`'s default)."""
CLI_RETRY = "run the command again"
"""What the command line says to do once a failed creation is fixed (`apply`'s default)."""


class AttioSetupError(Exception):
    """The auto-match could not be planned or applied: `message` is a short paragraph (one line per failed step,
    no key in it); `stage` is "settings" (the file, nothing created) or "attio" (Attio refused or did not answer)."""

    def __init__(self, message: str, stage: Literal["settings", "attio"]):
        super().__init__(message)
        self.message, self.stage = message, stage


@dataclass(frozen=True)
class Plan:
    """What the auto-match would do on Attio object `object`: one proposal per field, and the settings file it
    records the mapping in (`keep_fields`: the object is the one recorded, so fields mapped before and not
    proposed now stay)."""

    path: Path | None
    object: str
    keep_fields: bool
    proposals: tuple[FieldProposal, ...]
    client: AttioAttributes = field(repr=False, compare=False)

    @property
    def creates(self) -> list[FieldProposal]:
        return [p for p in self.proposals if p.action == "create"]

    @property
    def conflicts(self) -> list[FieldProposal]:
        return [p for p in self.proposals if p.action == "conflict"]

    @property
    def mapping(self) -> dict[str, str]:
        """Field → attribute slug for every field without a conflict: what `apply` records."""
        return {p.field: p.api_slug for p in self.proposals if p.action != "conflict"}


@dataclass(frozen=True)
class Applied:
    """What `apply` did: the attributes `created` in Attio, the mapping `recorded` in the settings file (empty:
    the file was not changed) and the `conflicts` left unmapped."""

    created: tuple[FieldProposal, ...]
    recorded: dict[str, str]
    conflicts: tuple[FieldProposal, ...]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def recorded_mapping(path: Path) -> AttioDestination:
    """`destinations.attio` as the settings file `path` records it (no file: the defaults). The file itself, not
    `load_settings`: a playbook's unmapped `field:` must not stop the auto-match that maps it."""
    try:
        raw = read_settings_file(path) if path.exists() else {}
        section = raw.get("destinations")
        return AttioDestination.model_validate((section if isinstance(section, dict) else {}).get("attio") or {})
    except SettingsError as exc:
        raise AttioSetupError(_one_line(str(exc)), "settings") from None
    except ValueError as exc:  # pydantic's ValidationError
        raise AttioSetupError(_one_line(f"{path}: destinations.attio is invalid: {exc}"), "settings") from None


def _checked_choice(field_name: object, slug: object, given: str, how: str) -> None:
    if field_name not in FIELDS_BY_NAME or not isinstance(slug, str) or not re.match(SLUG, slug):
        raise AttioSetupError(
            f"{given}: {how} with FIELD one of {', '.join(FIELDS_BY_NAME)} and SLUG an attribute slug (lower case "
            "letters, digits, _ and -)",
            "settings",
        )


def parse_use(pairs: Sequence[str]) -> dict[str, str]:
    """``--use FIELD=SLUG`` options as field → slug (AttioSetupError for a malformed one or an unknown field)."""
    chosen: dict[str, str] = {}
    for pair in pairs:
        field_name, _, slug = pair.partition("=")
        _checked_choice(field_name, slug, f"--use {pair}", "write FIELD=SLUG")
        chosen[field_name] = slug
    return chosen


def checked_use(use: Mapping) -> dict[str, str]:
    """A JSON `use` object (field → slug) checked as `parse_use` checks the command line's."""
    for field_name, slug in use.items():
        _checked_choice(field_name, slug, f"use {field_name}: {slug}", 'give {"FIELD": "SLUG"}')
    return dict(use)


def conflict_advice(proposal: FieldProposal, choice: str = CLI_CHOICE) -> str:
    """What to do about a conflict: change the attribute in Attio, or choose another one (`choice`, formatted with
    the field)."""
    return (
        f"{proposal.field}: {proposal.reason}. Change that attribute in Attio (rename it, or unarchive it when "
        f"archived), or pass "
        f"{choice.format(field=proposal.field)} (an existing single-valued {proposal.value_type} attribute, or a new "
        "slug beton creates)."
    )


def attio_client() -> AttioAttributes:
    """The attribute client of this environment's key and base URL (AttioSetupError when the key is unset)."""
    try:
        return AttioAttributes(
            os.environ.get(API_KEY_ENV, "").strip(), os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
        )
    except AttioFieldsError as exc:
        raise AttioSetupError(str(exc), "attio") from None


def plan(
    path: Path | None, recorded: AttioDestination, object_slug: str | None = None, use: Mapping[str, str] | None = None
) -> Plan:
    """The auto-match for `object_slug` (default: the recorded object): the recorded mapping (on that object) and
    the chosen slugs (`use`, winning) against the object's attributes as Attio lists them."""
    target = object_slug or recorded.object
    same_object = target == recorded.object
    chosen = {**(recorded.fields.mapped() if same_object else {}), **(use or {})}
    client = attio_client()
    try:
        attributes = client.list(target)
    except AttioFieldsError as exc:
        raise AttioSetupError(str(exc), "attio") from None
    proposals = propose_fields([CrmAttribute.from_attio(a) for a in attributes], chosen)
    return Plan(path, target, same_object, tuple(proposals), client)


def apply(
    setup: Plan,
    created: Callable[[FieldProposal], None] = lambda _: None,
    choice: str = CLI_CHOICE,
    retry: str = CLI_RETRY,
) -> Applied:
    """Create the missing attributes and record `destinations.attio` (every field without a conflict) in the
        settings file; `created` is called after each attribute Attio created. AttioSetupError, naming what to change:
        the new settings would not load or the file cannot be rewritten (nothing created), Attio refused a creation
        (the file unchanged; attributes created before it stay), or the file cannot be replaced. `choice` and `retry`
    word the advice for the caller (the command line's by default)."""
    if setup.path is None:
        raise AttioSetupError("There is no settings file to record the mapping in.", "settings")
    text = None
    if setup.mapping:
        try:  # the new settings must load before anything is created in Attio
            text = attio_mapping_text(setup.path, setup.object, setup.mapping, keep_fields=setup.keep_fields)
            check_settings_text(setup.path, text)
        except SettingsError as exc:
            advice = "".join(f"\n{conflict_advice(p, choice)}" for p in setup.conflicts)
            raise AttioSetupError(f"{exc}{advice}\nNothing was created in Attio.", "settings") from None
    made = []
    for proposal in setup.creates:
        try:
            setup.client.create(setup.object, proposal, FIELDS_BY_NAME[proposal.field].description)
        except AttioFieldsError as exc:
            raise AttioSetupError(
                f"{exc}\n{setup.path} was not changed; {retry} when that is fixed.", "attio"
            ) from None
        made.append(proposal)
        created(proposal)
    if text is not None:
        try:
            write_settings_file(setup.path, text)
        except SettingsError as exc:
            raise AttioSetupError(str(exc), "settings") from None
    return Applied(tuple(made), setup.mapping if text is not None else {}, tuple(setup.conflicts))
