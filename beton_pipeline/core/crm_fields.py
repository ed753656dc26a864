"""Which CRM attribute each value beton writes back goes to: the field auto-match, pure.

beton writes four *fields* on an account's CRM record (:data:`CRM_FIELDS`): ``score`` (number, the 0–1
score), ``rank`` (number), ``top_signals`` (text, the plain-language names) and ``why`` (text, one line).
:func:`propose_fields` takes the attributes the CRM object has (plain :class:`CrmAttribute` records, e.g.
Attio's ``GET /v2/objects/{object}/attributes`` answer through :meth:`CrmAttribute.from_attio`) and proposes,
per field, to **use** an existing attribute, **create** a new one, or reports a **conflict** with its reason.

The rule, per field in :data:`CRM_FIELDS` order:

1. a slug chosen for the field (a ``--use FIELD=SLUG`` override, else the mapping already recorded) is used
   if it names a usable attribute, created if no attribute has it, else a conflict;
2. else the field's own slug (``beton_score``, …): used if usable, a conflict if an attribute holds it but
   cannot take the value (Attio refuses a second attribute with a taken slug, archived ones included);
3. else an attribute whose normalised title or slug is one of the field's synonyms ("Lead score" for
   ``score``): the first usable one in synonym order is used; when the only matches are writable attributes of
   the wrong type or multiselect, that is a conflict (a "Lead score" of type text is the user's own field: beton
   neither overwrites it nor creates a look-alike beside it); archived, system and read-only matches are passed
   over;
4. else create the field's own attribute.

*Usable* means: not archived, writable, not a system attribute, single-valued (a multiselect would append a
value on every write), of the field's type, and not already proposed for another field. So no attribute is
ever proposed for two fields, and every field gets exactly one proposal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Action = Literal["use", "create", "conflict"]


@dataclass(frozen=True)
class CrmField:
    """One value beton writes to a CRM record: its name, type, default attribute, template and synonyms."""

    name: str
    value_type: Literal["number", "text"]
    slug: str
    title: str
    description: str
    template: str
    synonyms: tuple[str, ...]
    """Normalised titles (see :func:`normalise`) that mean this field, most specific first."""


CRM_FIELDS: tuple[CrmField, ...] = (
    CrmField(
        "score",
        "number",
        "beton_score",
        "Beton score",
        "Written by beton: the account's score, the probability (0 to 1) that it converts.",
        "$score_raw",
        ("beton score", "lead score", "account score", "intent score", "signal score", "score"),
    ),
    CrmField(
        "rank",
        "number",
        "beton_rank",
        "Beton rank",
        "Written by beton: the account's rank by score on the day scored (1 = most likely to convert).",
        "$score_rank",
        ("beton rank", "lead rank", "account rank", "score rank", "rank"),
    ),
    CrmField(
        "top_signals",
        "text",
        "beton_top_signals",
        "Beton top signals",
        "Written by beton: the signals that count most in the account's score, by plain-language name.",
        "$signals",
        ("beton top signals", "beton signals", "top signals", "signals"),
    ),
    CrmField(
        "why",
        "text",
        "beton_why",
        "Beton why",
        "Written by beton: one line on why the account scores as it does.",
        "$why",
        ("beton why", "beton reason", "why now", "score reason", "why"),
    ),
)
"""The fields beton writes, in the order they are proposed."""

FIELDS_BY_NAME: Mapping[str, CrmField] = {f.name: f for f in CRM_FIELDS}


@dataclass(frozen=True)
class CrmAttribute:
    """One attribute of a CRM object, as the matching reads it."""

    api_slug: str
    title: str
    type: str
    attribute_id: str = ""
    is_archived: bool = False
    is_writable: bool = True
    is_system_attribute: bool = False
    is_multiselect: bool = False

    @classmethod
    def from_attio(cls, record: Mapping) -> CrmAttribute:
        """From one entry of Attio's attribute list (``data[]``); fields it lacks take the defaults."""
        ident = record.get("id")
        return cls(
            api_slug=str(record.get("api_slug") or ""),
            title=str(record.get("title") or ""),
            type=str(record.get("type") or ""),
            attribute_id=str(ident.get("attribute_id") or "") if isinstance(ident, Mapping) else "",
            is_archived=bool(record.get("is_archived", False)),
            is_writable=bool(record.get("is_writable", True)),
            is_system_attribute=bool(record.get("is_system_attribute", False)),
            is_multiselect=bool(record.get("is_multiselect", False)),
        )


@dataclass(frozen=True)
class FieldProposal:
    """What to do for one field: ``use`` the attribute ``api_slug``, ``create`` it, or a ``conflict``.

    For a conflict, ``api_slug``/``title`` name the attribute in the way (``reason`` says why).
    """

    field: str
    action: Action
    api_slug: str
    title: str
    value_type: str
    reason: str


def normalise(text: str) -> str:
    """Lower case, every run of non-alphanumerics one space, trimmed: "Lead-Score " and "lead_score" → "lead score"."""
    return " ".join(re.split(r"[^0-9a-z]+", text.lower())).strip()


def _unusable(attribute: CrmAttribute, field: CrmField) -> str | None:
    """Why ``attribute`` cannot take ``field``'s value (None when it can)."""
    if attribute.is_archived:
        return "is archived"
    if attribute.is_system_attribute:
        return "is a system attribute"
    if not attribute.is_writable:
        return "is not writable"
    if attribute.type != field.value_type:
        wanted = "a number" if field.value_type == "number" else "text"
        return f"is of type {attribute.type or 'unknown'}, and beton writes {wanted}"
    if attribute.is_multiselect:
        return "is multiselect (every write would add a value)"
    return None


def _wrong_shape(attribute: CrmAttribute, field: CrmField) -> bool:
    """The user's own live attribute (active, writable, not a system one) that cannot hold ``field``'s value."""
    live = attribute.is_writable and not attribute.is_archived and not attribute.is_system_attribute
    return live and (attribute.type != field.value_type or attribute.is_multiselect)


def _describe(attribute: CrmAttribute) -> str:
    return f"{attribute.title!r} ({attribute.api_slug})" if attribute.title else attribute.api_slug


def _propose_one(
    field: CrmField, attributes: Sequence[CrmAttribute], chosen: str | None, taken: dict[str, str]
) -> FieldProposal:
    def use(attribute: CrmAttribute, how: str) -> FieldProposal:
        return FieldProposal(field.name, "use", attribute.api_slug, attribute.title, field.value_type, how)

    def conflict(attribute: CrmAttribute, why: str) -> FieldProposal:
        return FieldProposal(field.name, "conflict", attribute.api_slug, attribute.title, field.value_type, why)

    def create(slug: str, how: str) -> FieldProposal:
        if slug in taken:  # two fields cannot share one new attribute either
            return FieldProposal(
                field.name, "conflict", slug, "", field.value_type, f"{slug} is already proposed for {taken[slug]}"
            )
        return FieldProposal(field.name, "create", slug, field.title, field.value_type, how)

    def blocker(attribute: CrmAttribute) -> str | None:
        if attribute.api_slug in taken:
            return f"is already proposed for {taken[attribute.api_slug]}"
        return _unusable(attribute, field)

    by_slug = {a.api_slug: a for a in attributes}
    by_id = {a.attribute_id: a for a in attributes if a.attribute_id}
    if chosen:
        attribute = by_slug.get(chosen) or by_id.get(chosen)
        if attribute is None:
            return create(chosen, f"{chosen} was chosen (--use or the recorded mapping) and does not exist")
        why = blocker(attribute)
        if why:
            return conflict(attribute, f"{_describe(attribute)} was chosen but {why}")
        return use(attribute, f"{chosen} was chosen (--use or the recorded mapping)")
    own = by_slug.get(field.slug)
    if own is not None:
        why = blocker(own)
        if why:
            return conflict(own, f"the slug {field.slug} is taken: {_describe(own)} {why}")
        return use(own, f"slug {field.slug}")
    rank = {name: i for i, name in enumerate(field.synonyms)}
    matches = sorted(
        (a for a in attributes if normalise(a.title) in rank or normalise(a.api_slug) in rank),
        key=lambda a: min(rank.get(normalise(a.title), len(rank)), rank.get(normalise(a.api_slug), len(rank))),
    )
    misfits = []
    for attribute in matches:
        why = blocker(attribute)
        if why is None:
            return use(attribute, f"named like the {field.name} field")
        if _wrong_shape(attribute, field) and attribute.api_slug not in taken:
            misfits.append((attribute, why))
    if misfits:
        attribute, why = misfits[0]
        return conflict(attribute, f"{_describe(attribute)} looks like the {field.name} field but {why}")
    return create(field.slug, "no attribute of that name or type")


def propose_fields(attributes: Iterable[CrmAttribute], chosen: Mapping[str, str] | None = None) -> list[FieldProposal]:
    """One proposal per field of :data:`CRM_FIELDS`, in that order (the rule: the module docstring).

    ``chosen``: field name → attribute slug (or id) to use for it, e.g. from ``--use score=lead_score`` or the
    mapping already in the settings. An unknown field name raises ValueError.
    """
    chosen = dict(chosen or {})
    unknown = sorted(set(chosen) - set(FIELDS_BY_NAME))
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; the fields are {', '.join(FIELDS_BY_NAME)}")
    attributes = list(attributes)
    taken: dict[str, str] = {}
    proposals = []
    for field in CRM_FIELDS:
        proposal = _propose_one(field, attributes, chosen.get(field.name), taken)
        if proposal.action != "conflict":
            taken[proposal.api_slug] = field.name
        proposals.append(proposal)
    return proposals
