"""Attio actions that name a field (`field: score`) instead of an attribute: validation, planning, `$why`."""

from datetime import datetime

import polars as pl
import pytest

from beton_pipeline.core.playbooks import (
    AttioRecordUpdate,
    PlaybookConfigError,
    account_values,
    match_accounts,
    matched_account,
    parse_playbook_config,
    plan_account_actions,
    why_line,
)
from tests.core.test_playbooks import DAY, playbook, scores_frame

MAPPED = {"attio": {"object": "companies", "fields": {"score": "lead_score_num", "why": "beton_why"}}}


def plan(then, destinations=MAPPED):
    cfg = parse_playbook_config([playbook(holdout_fraction=0, then=then)], destinations=destinations)
    pb = cfg.playbooks[0]
    matched = match_accounts(scores_frame(), pb.when).filter(pl.col("is_crm_company"))
    return matched, plan_account_actions(pb, matched, DAY, cfg.destinations)


def test_field_score_plans_an_update_of_the_mapped_attribute_with_the_score():
    matched, actions = plan([{"type": "attio", "field": "score"}])
    assert len(actions) == matched.height > 0
    scores = dict(zip(matched["account_id"], matched["score"], strict=True))
    for action in actions:
        assert action.destination == "attio:companies.lead_score_num"
        assert isinstance(action.message, AttioRecordUpdate)
        assert (action.message.object, action.message.attribute) == ("companies", "lead_score_num")
        assert action.message.value == round(scores[action.account_id], 4)  # $score_raw, as a number


def test_field_why_writes_the_one_line_reason_as_text():
    matched, actions = plan([{"type": "attio", "field": "why"}])
    row = matched.row(0, named=True)
    first = next(a for a in actions if a.account_id == row["account_id"])
    assert first.message.attribute == "beton_why"
    assert first.message.value == why_line(matched_account(row, None))
    assert first.message.value.startswith(f"Likely to convert: {100 * row['score']:.0f}% (rank {row['score_rank']}).")


def test_attribute_actions_keep_working_beside_field_actions():
    _, actions = plan([{"type": "attio", "attribute": "beton_tier", "value": "$company", "value_type": "text"}])
    assert {a.destination for a in actions} == {"attio:companies.beton_tier"}
    assert all(isinstance(a.message.value, str) and a.message.value.startswith("Company ") for a in actions)


def test_a_field_and_an_attribute_writing_one_attribute_are_refused():
    """Both would plan the same idempotency key, and the outbox would keep one of the two writes."""
    then = [
        {"type": "attio", "attribute": "lead_score_num", "value": "$score_rank"},
        {"type": "attio", "field": "score"},
    ]
    with pytest.raises(PlaybookConfigError, match=r"then\[1\] writes attio:companies.lead_score_num, as then\[0\]"):
        parse_playbook_config([playbook(then=then)], destinations=MAPPED)


def test_an_unmapped_field_fails_at_validation_with_the_command_to_run():
    with pytest.raises(PlaybookConfigError) as raised:
        parse_playbook_config([playbook(then=[{"type": "attio", "field": "rank"}])], destinations=MAPPED)
    text = str(raised.value)
    assert "playbooks[hot-accounts].then[0]: field: rank has no Attio attribute" in text
    assert "beton destinations attio fields --apply" in text


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ({"type": "attio"}, "give exactly one of attribute: SLUG or field:"),
        ({"type": "attio", "attribute": "x", "field": "score"}, "give exactly one of attribute: SLUG or field:"),
        ({"type": "attio", "field": "score", "value": "$company"}, "field: score brings its own value and type"),
        ({"type": "attio", "field": "tier"}, "field"),
    ],
)
def test_field_or_attribute_exactly_one(action, message):
    with pytest.raises(PlaybookConfigError, match=message):
        parse_playbook_config([playbook(then=[action])], destinations=MAPPED)


def test_a_field_action_on_another_object_than_the_mapping_is_refused():
    with pytest.raises(PlaybookConfigError, match="field: score is mapped on companies, not deals"):
        parse_playbook_config(
            [playbook(then=[{"type": "attio", "field": "score", "object": "deals"}])], destinations=MAPPED
        )


def test_the_mapping_is_validated():
    with pytest.raises(PlaybookConfigError, match="destinations.attio.fields.score"):
        parse_playbook_config([], destinations={"attio": {"fields": {"score": "Bad Slug"}}})
    with pytest.raises(PlaybookConfigError, match="destinations.attio.fields.tier"):
        parse_playbook_config([], destinations={"attio": {"fields": {"tier": "x"}}})
    assert parse_playbook_config([], destinations=MAPPED).destinations.attio.fields.mapped() == {
        "score": "lead_score_num",
        "why": "beton_why",
    }


def test_why_line_names_signals_with_their_day_and_weight_note():
    row = {
        "account_id": "rec_1",
        "score": 0.723,
        "score_rank": 3,
        "top_contributions": [
            {"signal_id": "a", "definition": "def a", "fired_at": datetime(2026, 3, 1, 9), "contribution": 0.5},
            {
                "signal_id": "b",
                "definition": "def b",
                "fired_at": datetime(2026, 2, 27, 9),
                "contribution": 0.2,
                "weight_factor": 0.5,
                "weight_note": "weight halved: degrading since 2026-02-28",
            },
        ],
    }
    names = {"a": "Invited a teammate"}
    assert why_line(matched_account(row, None, names)) == (
        "Likely to convert: 72% (rank 3). Top signals: Invited a teammate (fired 2026-03-01); "
        "def b (fired 2026-02-27; signal weakening: half weight since 2026-02-28)."
    )
    empty = {"account_id": "rec_2", "score": None, "score_rank": None}
    assert why_line(matched_account(empty, None)) == "Likely to convert: —. Top signals: none."
    assert account_values(row, "p", DAY, None, names)["why"] == why_line(matched_account(row, None, names))
