"""The field auto-match: which attribute each field beton writes goes to (use / create / conflict)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beton_pipeline.core.crm_fields import CRM_FIELDS, CrmAttribute, normalise, propose_fields
from beton_pipeline.core.playbooks import ACCOUNT_TEMPLATE_FIELDS, _template_fields

SYSTEM = [
    CrmAttribute("record_id", "Record ID", "text", is_writable=False, is_system_attribute=True),
    CrmAttribute("name", "Name", "text", is_system_attribute=True),
    CrmAttribute("domains", "Domains", "domain", is_system_attribute=True, is_multiselect=True),
]


def by_field(proposals) -> dict:
    return {p.field: (p.action, p.api_slug) for p in proposals}


def test_an_empty_workspace_creates_every_field_with_its_own_slug_and_type():
    proposals = propose_fields(SYSTEM)
    assert [(p.field, p.action, p.api_slug, p.title, p.value_type) for p in proposals] == [
        ("score", "create", "beton_score", "Beton score", "number"),
        ("rank", "create", "beton_rank", "Beton rank", "number"),
        ("top_signals", "create", "beton_top_signals", "Beton top signals", "text"),
        ("why", "create", "beton_why", "Beton why", "text"),
    ]


def test_exact_slug_first_then_titles_by_synonym_order():
    attributes = [
        *SYSTEM,
        CrmAttribute("score", "Score", "number"),
        CrmAttribute("lead_score", "Lead score", "number"),
        CrmAttribute("beton_rank", "Whatever", "number"),
        CrmAttribute("rank_2", "Rank", "number"),
        CrmAttribute("sigs", "Top signals", "text"),
        CrmAttribute("reason", "Why now?", "text"),
    ]
    assert by_field(propose_fields(attributes)) == {
        "score": ("use", "lead_score"),  # "lead score" comes before the bare "score" among the synonyms
        "rank": ("use", "beton_rank"),  # the exact slug wins over the title "Rank"
        "top_signals": ("use", "sigs"),
        "why": ("use", "reason"),  # "Why now?" normalises to "why now"
    }


def test_a_title_of_the_wrong_type_is_a_conflict_with_its_reason_not_used():
    proposals = propose_fields([*SYSTEM, CrmAttribute("lead_score", "Lead score", "text")])
    score = proposals[0]
    assert (score.action, score.api_slug, score.title) == ("conflict", "lead_score", "Lead score")
    assert (
        score.reason
        == "'Lead score' (lead_score) looks like the score field but is of type text, and beton writes a number"
    )
    assert [p.action for p in proposals[1:]] == ["create", "create", "create"]


def test_a_usable_match_wins_over_a_misfit():
    attributes = [CrmAttribute("lead_score", "Lead score", "text"), CrmAttribute("score", "Score", "number")]
    assert by_field(propose_fields(attributes))["score"] == ("use", "score")


@pytest.mark.parametrize(
    ("attribute", "why"),
    [
        (CrmAttribute("s", "Lead score", "number", is_archived=True), None),
        (CrmAttribute("s", "Lead score", "number", is_writable=False), None),
        (CrmAttribute("s", "Lead score", "number", is_system_attribute=True), None),
        (CrmAttribute("s", "Lead score", "number", is_multiselect=True), "is multiselect"),
    ],
)
def test_archived_read_only_and_system_titles_are_passed_over_a_multiselect_is_a_conflict(attribute, why):
    score = propose_fields([attribute])[0]
    if why is None:
        assert (score.action, score.api_slug) == ("create", "beton_score")
    else:
        assert score.action == "conflict" and why in score.reason


def test_the_own_slug_held_by_an_unusable_attribute_is_a_conflict():
    score = propose_fields([CrmAttribute("beton_score", "Beton score", "number", is_archived=True)])[0]
    assert (score.action, score.api_slug) == ("conflict", "beton_score")
    assert score.reason == "the slug beton_score is taken: 'Beton score' (beton_score) is archived"


def test_chosen_slugs_are_used_created_or_refused():
    attributes = [CrmAttribute("lead_score", "Lead score", "number"), CrmAttribute("notes", "Notes", "text")]
    proposals = propose_fields(attributes, {"score": "lead_score", "rank": "my_rank", "why": "lead_score"})
    assert by_field(proposals) == {
        "score": ("use", "lead_score"),
        "rank": ("create", "my_rank"),
        "top_signals": ("create", "beton_top_signals"),
        "why": ("conflict", "lead_score"),  # already proposed for score, and a number
    }
    assert proposals[3].reason == "'Lead score' (lead_score) was chosen but is already proposed for score"
    # two fields choosing one new slug: the second is refused, not a second create
    twice = propose_fields([], {"top_signals": "notes_x", "why": "notes_x"})
    assert by_field(twice)["why"] == ("conflict", "notes_x")
    # an attribute id works as well as its slug
    with_id = propose_fields([CrmAttribute("lead_score", "Lead score", "number", attribute_id="a-1")], {"score": "a-1"})
    assert by_field(with_id)["score"] == ("use", "lead_score")
    with pytest.raises(ValueError, match="unknown field"):
        propose_fields([], {"tier": "x"})


def test_from_attio_reads_the_documented_shape():
    record = {
        "id": {"workspace_id": "w", "object_id": "o", "attribute_id": "a-9"},
        "title": "Lead score",
        "description": None,
        "api_slug": "lead_score",
        "type": "number",
        "is_system_attribute": False,
        "is_writable": True,
        "is_required": False,
        "is_unique": False,
        "is_multiselect": False,
        "is_default_value_enabled": False,
        "is_archived": True,
        "default_value": None,
        "relationship": None,
        "created_at": "2025-01-01T00:00:00.000000000Z",
        "config": {"currency": {"default_currency_code": None, "display_type": None}},
    }
    assert CrmAttribute.from_attio(record) == CrmAttribute(
        "lead_score", "Lead score", "number", "a-9", is_archived=True
    )


def test_normalise_and_templates():
    assert normalise("  Lead-Score_v2 ") == "lead score v2"
    for field in CRM_FIELDS:  # every field's template uses only values an account playbook has
        assert _template_fields(field.template) <= set(ACCOUNT_TEMPLATE_FIELDS)
    synonyms = [s for f in CRM_FIELDS for s in f.synonyms]
    assert len(synonyms) == len(set(synonyms))  # no title means two fields


TYPES = st.sampled_from(["number", "text", "select", "currency"])
NAMES = st.sampled_from(
    ["Score", "Lead score", "Beton score", "Rank", "Beton rank", "Signals", "Top signals", "Why", "Notes", "beton_why"]
)
SLUGS = st.sampled_from(["beton_score", "beton_rank", "beton_top_signals", "beton_why", "score", "rank", "x", "y"])
ATTRIBUTES = st.lists(
    st.builds(
        CrmAttribute,
        api_slug=SLUGS,
        title=NAMES,
        type=TYPES,
        is_archived=st.booleans(),
        is_writable=st.booleans(),
        is_system_attribute=st.booleans(),
        is_multiselect=st.booleans(),
    ),
    max_size=12,
    unique_by=lambda a: a.api_slug,  # a slug is unique within an object
)
CHOSEN = st.dictionaries(st.sampled_from([f.name for f in CRM_FIELDS]), SLUGS, max_size=4)


@settings(max_examples=300, deadline=None)
@given(ATTRIBUTES, CHOSEN)
def test_every_field_gets_one_proposal_and_no_attribute_serves_two(attributes, chosen):
    proposals = propose_fields(attributes, chosen)
    assert [p.field for p in proposals] == [f.name for f in CRM_FIELDS]
    kept = [p.api_slug for p in proposals if p.action != "conflict"]
    assert len(kept) == len(set(kept))
    existing = {a.api_slug: a for a in attributes}
    for proposal, field in zip(proposals, CRM_FIELDS, strict=True):
        assert proposal.value_type == field.value_type and proposal.reason
        if proposal.action == "use":  # only a usable attribute of the right type is ever used
            used = existing[proposal.api_slug]
            assert used.type == field.value_type and used.is_writable and not used.is_multiselect
            assert not used.is_archived and not used.is_system_attribute
        if proposal.action == "create":  # never a slug the object already has
            assert proposal.api_slug not in existing
