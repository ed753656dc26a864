"""Plain-language signal names: every candidate kind discovery builds, pairs, and custom signals."""

import polars as pl
import pytest

from beton_pipeline.core.candidates import FeatureSpec, candidate_hits
from beton_pipeline.core.conditions import bind, parse_signal, vocabulary_from_frames
from beton_pipeline.core.signal_names import signal_name, words
from tests.core.test_conditions import synthetic_frames

SPEC = FeatureSpec(windows=(1, 3, 7, 14), count_thresholds=(1, 2, 3, 5), observation_days=14, intent_lookback_days=90)


@pytest.fixture(scope="module")
def candidates() -> pl.DataFrame:
    frames = synthetic_frames(n=200)
    return candidate_hits(frames, SPEC).drop("account_id").unique("key")


def test_every_kind_discovery_builds_gets_a_name_without_technical_syntax(candidates):
    kinds = set(candidates.get_column("kind").unique().to_list())
    assert kinds == {"event_count", "event_property", "attribute", "intent"}  # a new kind must be named here too
    for row in candidates.iter_rows(named=True):
        name = signal_name(row, observation_days=14)
        assert name and name != row["definition"], row
        assert not any(t in name for t in ("`", ">=", "observation window", "_")), (name, row["definition"])
    assert len({signal_name(r) for r in candidates.iter_rows(named=True)}) == candidates.height  # names tell them apart


@pytest.mark.parametrize(
    ("row", "name"),
    [
        (
            {"kind": "event_count", "event": "invited_teammate", "window_days": 14, "threshold": 3},
            "Invited teammate 3+ times in their first 14 days",
        ),
        (
            {"kind": "event_count", "event": "api_key_created", "window_days": 7, "threshold": 1},
            "API key created in their first 7 days",
        ),
        (
            {"kind": "event_count", "event": "Report Exported", "window_days": 1, "threshold": 2},
            "Report exported twice in their first 1 day",
        ),
        (
            {"kind": "event_count", "event": "dashboardShared", "window_days": 30, "threshold": 40},
            "Dashboard shared 40+ times in their first 30 days",
        ),
        (
            {
                "kind": "event_property",
                "event": "$pageview",
                "property": "$current_url",
                "value": "/pricing",
                "window_days": 7,
                "threshold": 2,
            },
            "Viewed a page (current URL: /pricing) twice in their first 7 days",
        ),
        (
            {
                "kind": "event_property",
                "event": "export",
                "property": "format",
                "value": "csv",
                "window_days": 3,
                "threshold": 1,
            },
            "Export (format: csv) in their first 3 days",
        ),
        ({"kind": "attribute", "property": "industry", "value": "Fintech"}, "Industry: Fintech"),
        ({"kind": "attribute", "property": "employee_band", "value": "50-199"}, "Company size: 50-199 employees"),
        ({"kind": "attribute", "property": "plan_interval", "value": "year"}, "Billed yearly"),
        ({"kind": "attribute", "property": "region", "value": "EMEA"}, "Region: EMEA"),
        (
            {"kind": "intent", "value": "funding_round", "window_days": 90, "key": "intent:funding_round:before_start"},
            "Funding round in the 90 days before they started",
        ),
        (
            {
                "kind": "intent",
                "value": "job_posting",
                "window_days": 60,
                "candidate_key": "intent:job_posting:before_window_end",
            },
            "Job posting between 60 days before they started and the end of their first 14 days",
        ),
        ({"kind": "some_future_kind", "definition": "x >= 1"}, "x >= 1"),
    ],
)
def test_names(row, name):
    assert signal_name(row, observation_days=14) == name


def test_a_pair_joins_its_parts_names():
    a = {"kind": "event_count", "event": "invited_teammate", "window_days": 14, "threshold": 3}
    b = {"kind": "attribute", "property": "industry", "value": "Fintech"}
    api = {"kind": "event_count", "event": "api_call", "window_days": 7, "threshold": 1}
    pair = {"kind": "pair", "definition": "`invited_teammate` >= 3 … AND industry = Fintech"}
    assert signal_name(pair, (a, b)) == "Invited teammate 3+ times in their first 14 days, and industry: Fintech"
    assert signal_name(pair, (b, api)) == "Industry: Fintech, and API call in their first 7 days"
    assert signal_name(pair) == pair["definition"]  # without its parts a pair shows its definition


@pytest.mark.parametrize("name", ["Team invites early", "Ops: heavy users: EU", "a"])
def test_a_custom_condition_signal_is_named_by_its_file(name):
    frames = synthetic_frames(n=100)
    vocab = vocabulary_from_frames(frames, (1, 3, 7, 14), 14, 90)
    event = frames.events.get_column("event_name")[0]
    text = f"name: '{name}'\nwhen:\n  all:\n    - {{event: {event}, count: '>= 2'}}\n    - {{attribute: industry, not_equals: Education}}\n"
    bound = bind(parse_signal(text, "s.yml"), vocab)
    row = {"kind": "condition", "definition": f"{name}: {bound.text}", "candidate_key": bound.key}
    assert ": " in bound.text or "(observation window)" in bound.text  # the text carries the tricky parts
    assert signal_name(row) == name


def test_a_custom_sql_signal_is_named_by_its_file():
    row = {
        "kind": "sql",
        "definition": "Big: spenders: SQL SELECT account_id FROM x",
        "key": "custom:sql:SELECT account_id FROM x",
    }
    assert signal_name(row) == "Big: spenders"


def test_words():
    assert words("api_key_created") == "API key created"
    assert words("SignedUp") == "signed up"
    assert words("$feature-flag.called") == "feature flag called"
    assert words("___") == "___"
