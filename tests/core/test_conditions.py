"""The YAML condition builder: parsing with line numbers, validation against the marts, canonical ids,
and vectorised evaluation checked against an independent per-account implementation and against
discovery's own candidate code."""

import numpy as np
import polars as pl
import pytest

from beton_pipeline.core.candidates import FeatureFrames, FeatureSpec, candidate_hits
from beton_pipeline.core.conditions import (
    AllOf,
    AnyOf,
    AttributeCondition,
    EventCondition,
    IntentCondition,
    Not,
    SignalDefinition,
    SignalDefinitionError,
    bind,
    evaluate,
    evaluate_many,
    parse_condition_json,
    parse_signal,
    vocabulary_from_frames,
)

WINDOWS = (1, 3, 7, 14)
EVENTS = ("invited_teammate", "api_key_created", "$pageview", "report_exported")
PATHS = ("/settings/integrations", "/home", "/billing")
INDUSTRIES = ("Fintech", "Education", "Software")
INTENTS = ("funding_round", "job_posting")

BRIEF_EXAMPLE = """\
name: Team invites early
description: invited 3+ teammates in the first 14 days
when:
  all:
    - event: invited_teammate
      count: ">= 3"
      within_days: 14
    - not: {attribute: industry, equals: Education}
    - any:
        - {event: "$pageview", property: "$current_url", equals: "/settings/integrations", within_days: 14}
        - {intent: funding_round, within_days_before_start: 90}
"""


def synthetic_frames(n: int = 600, seed: int = 3) -> FeatureFrames:
    """Random point-in-time feature frames shaped like the marts (counts nested across windows)."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"acc_{i:05d}" for i in range(n)])
    industry = rng.choice(np.array(INDUSTRIES + (None,), dtype=object), size=n)
    employees = np.where(rng.random(n) < 0.2, None, rng.integers(1, 3000, n)).astype(object)
    accounts = pl.DataFrame(
        {
            "account_id": ids,
            "cohort_month": rng.choice(["2025-01", "2025-02", "2025-03"], size=n),
            "converted": rng.random(n) < 0.1,
            "arr": rng.uniform(1000, 20000, n),
            "industry": industry.tolist(),
            "employee_band": rng.choice(["1-9", "10-49", "50-199"], size=n),
            "plan_interval": rng.choice(["month", "year"], size=n),
            "employee_count": employees.tolist(),
            "is_crm_company": (rng.random(n) < 0.7).tolist(),
        },
        schema_overrides={"employee_count": pl.Int64, "industry": pl.String},
    )

    def counts(m: int) -> dict[str, np.ndarray]:
        c14 = rng.poisson(2.0, m)
        c7 = rng.binomial(c14, 0.7)
        c3 = rng.binomial(c7, 0.6)
        c1 = rng.binomial(c3, 0.5)
        return {"n_first_1d": c1, "n_first_3d": c3, "n_first_7d": c7, "n_first_14d": c14}

    pairs = [(a, e) for a in ids for e in EVENTS if rng.random() < 0.5]
    events = pl.DataFrame(
        {"account_id": [a for a, _ in pairs], "event_name": [e for _, e in pairs], **counts(len(pairs))}
    )
    events = events.filter(pl.col("n_first_14d") > 0)
    triples = [(a, p) for a in ids for p in PATHS if rng.random() < 0.3]
    properties = pl.DataFrame(
        {
            "account_id": [a for a, _ in triples],
            "event_name": "$pageview",
            "property_name": "$current_url",
            "property_value": [p for _, p in triples],
            **counts(len(triples)),
        }
    ).filter(pl.col("n_first_14d") > 0)
    intents = [(a, t) for a in ids for t in INTENTS if rng.random() < 0.2]
    before_start = rng.integers(0, 2, len(intents))
    intent = pl.DataFrame(
        {
            "account_id": [a for a, _ in intents],
            "signal_type": [t for _, t in intents],
            "n_before_start": before_start,
            "n_before_window_end": before_start + rng.integers(0, 2, len(intents)),
        }
    ).filter(pl.col("n_before_window_end") > 0)
    return FeatureFrames(accounts=accounts, events=events, properties=properties, intent=intent)


@pytest.fixture(scope="module")
def frames() -> FeatureFrames:
    return synthetic_frames()


@pytest.fixture(scope="module")
def vocab(frames):
    return vocabulary_from_frames(frames, WINDOWS, observation_days=14, intent_lookback_days=90)


def _bound(text: str, vocab, source: str = "signals/test.yml"):
    return bind(parse_signal(text, source), vocab)


# ------------------------------------------------------------------------------------------------
# Parsing and validation
# ------------------------------------------------------------------------------------------------
def test_the_brief_example_parses_into_the_expected_tree(vocab):
    definition = parse_signal(BRIEF_EXAMPLE, "signals/team.yml")
    assert definition.name == "Team invites early"
    root = definition.condition
    assert isinstance(root, AllOf) and len(root.children) == 3
    event, negated, either = root.children
    assert event == EventCondition("invited_teammate", ">=", 3, 14)
    assert event.line == 5
    assert negated == Not(AttributeCondition("industry", "in", ("Education",)))
    assert isinstance(either, AnyOf)
    assert either.children[0] == EventCondition("$pageview", ">=", 1, 14, "$current_url", ("/settings/integrations",))
    assert either.children[1] == IntentCondition("funding_round", "start", 90)
    bound = bind(definition, vocab)
    assert bound.signal_id.startswith("sig_") and len(bound.signal_id) == 16
    assert bound.text == (
        "`invited_teammate` >= 3 in the first 14 days (observation window) AND NOT industry = Education AND "
        "(`$pageview` with $current_url = /settings/integrations >= 1 in the first 14 days (observation window) "
        "OR funding_round in the 90 days before start)"
    )


@pytest.mark.parametrize(
    "text, line, expected",
    [
        ("name: x\nwhen:\n  event: [invited_teammate\n  count: 3\n", 4, "not valid YAML"),
        (
            "name: x\nwhen:\n  event: invited_teammate\n  count: >= 3\n",
            4,
            "not valid YAML: expected chomping or indentation indicators, but found '='; put comparisons in quotes",
        ),
        (
            "name: x\nwhen:\n  all:\n    - event: invited_teammate\n      cuont: 3\n",
            5,
            "when.all[0].cuont: unknown key (did you mean `count`?)",
        ),
        (
            "name: x\nwhen:\n  all:\n    - event: invited_teammate\n      count: lots\n",
            5,
            "when.all[0].count: expected a comparison",
        ),
        (
            "name: x\nwhen:\n  all:\n    - event: invited_teammate\n      count: 1.5\n",
            5,
            "a count compares with a whole number",
        ),
        (
            "name: x\nwhen:\n  evnt: invited_teammate\n",
            3,
            "a condition needs one of all, any, not, event, attribute, intent (did you mean `event`?)",
        ),
        ("name: x\nwhen:\n  event: invited_teammate\n  attribute: industry\n", 3, "one condition per mapping"),
        ("name: x\nname: y\nwhen: {event: invited_teammate}\n", 2, "name: duplicate key"),
        ("description: no name\nwhen: {event: invited_teammate}\n", 1, "name: missing"),
        ("name: x\nwhen:\n  all: []\n", 3, "expected a list of at least one condition"),
        ("name: x\nwhen:\n  any:\n    - invited_teammate\n", 4, "expected a condition"),
        ("name: x\nwhen:\n  - event: invited_teammate\n", 3, "expected a condition (a mapping"),
        ("name: x\nwhen: {event: invited_teammate, equals: 3}\n", 2, "need `property:`"),
        ("name: x\nwhen: {attribute: industry}\n", 2, "exactly one of equals, not_equals, in, value"),
        ("name: x\nwhen: {intent: funding_round, until: later}\n", 2, "expected one of start, window_end"),
        ("name: x\nwhen: {event: invited_teammate, within_days: 0}\n", 2, "expected a whole number ≥ 1"),
    ],
)
def test_malformed_definitions_name_the_file_line_and_problem(text, line, expected):
    with pytest.raises(SignalDefinitionError) as info:
        parse_signal(text, "signals/bad.yml")
    message = str(info.value)
    assert message.startswith(f"signals/bad.yml:{line}: "), message
    assert expected in message, message
    assert "\n" not in message


def test_an_empty_file_is_an_error():
    with pytest.raises(SignalDefinitionError, match="signals/empty.yml: the file is empty"):
        parse_signal("", "signals/empty.yml")


@pytest.mark.parametrize(
    "when, line_field, expected",
    [
        (
            "{event: invited_teamate}",
            "2: when.event",
            "unknown event `invited_teamate`: no account has it in the marts (did you mean `invited_teammate`?)",
        ),
        (
            "\n  all:\n    - {event: api_key_created}\n    - {event: api_key_creatd, within_days: 7}",
            "5: when.all[1].event",
            "(did you mean `api_key_created`?)",
        ),
        (
            "{event: invited_teammate, within_days: 30}",
            "2: when.within_days",
            "30 is not one of the marts' first-N-day windows (1, 3, 7, 14)",
        ),
        (
            "{event: $pageview, property: $current_ur, equals: /home}",
            "2: when.property",
            "(did you mean `$current_url`?); configured: $pageview.$current_url",
        ),
        (
            "{event: $pageview, property: $current_url, equals: /settings/integration}",
            "2: when.equals",
            "(did you mean `/settings/integrations`?)",
        ),
        (
            "{attribute: industri, equals: Fintech}",
            "2: when.attribute",
            "unknown attribute `industri` (did you mean `industry`?)",
        ),
        (
            "{attribute: industry, equals: Fintec}",
            "2: when",
            "no account has industry = 'Fintec' (did you mean `Fintech`?)",
        ),
        (
            "{attribute: industry, value: '>= 3'}",
            "2: when.value",
            "`industry` is not a number; use equals, not_equals or in",
        ),
        ("{attribute: employee_count, equals: many}", "2: when", "`employee_count` is a number"),
        ("{intent: funding_rounds}", "2: when.intent", "(did you mean `funding_round`?)"),
        (
            "{intent: funding_round, within_days_before_start: 30}",
            "2: when.within_days_before_start",
            "the marts count intent signals in the 90 days before start",
        ),
    ],
)
def test_unknown_names_are_errors_that_suggest_the_nearest_known_name(vocab, when, line_field, expected):
    with pytest.raises(SignalDefinitionError) as info:
        _bound(f"name: x\nwhen: {when}\n", vocab, "signals/typo.yml")
    message = str(info.value)
    assert message.startswith(f"signals/typo.yml:{line_field}: "), message
    assert expected in message, message


def test_signal_id_depends_on_the_condition_only(vocab):
    a = _bound(BRIEF_EXAMPLE, vocab)
    reordered = """\
name: Another name
when:
  all:
    - any:
        - {intent: funding_round}
        - {property: "$current_url", event: "$pageview", in: ["/settings/integrations"]}
    - {event: invited_teammate, count: 3}
    - not: {attribute: industry, in: [Education]}
"""
    b = _bound(reordered, vocab)
    assert a.signal_id == b.signal_id and a.canonical == b.canonical
    changed = _bound(BRIEF_EXAMPLE.replace('">= 3"', '">= 4"'), vocab)
    assert changed.signal_id != a.signal_id


def test_the_canonical_form_parses_back_to_the_same_signal(vocab):
    a = _bound(BRIEF_EXAMPLE, vocab)
    again = bind(SignalDefinition("renamed", None, parse_condition_json(a.canonical), "beton.signals"), vocab)
    assert again.canonical == a.canonical and again.signal_id == a.signal_id
    assert set(again.condition.children) == set(a.condition.children)  # the same leaves, in canonical order


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------
class Reference:
    """An independent, per-account evaluation of conditions (plain Python over dicts)."""

    def __init__(self, frames: FeatureFrames):
        self.accounts = frames.accounts.to_dicts()
        self.events = {(r["account_id"], r["event_name"]): r for r in frames.events.to_dicts()}
        self.props: dict = {}
        for r in frames.properties.to_dicts():
            self.props.setdefault((r["account_id"], r["event_name"], r["property_name"]), []).append(r)
        self.intent = {(r["account_id"], r["signal_type"]): r for r in frames.intent.to_dicts()}

    def holds(self, cond, acc: dict) -> bool:
        ops = {
            ">=": lambda a, b: a >= b,
            ">": lambda a, b: a > b,
            "<=": lambda a, b: a <= b,
            "<": lambda a, b: a < b,
            "==": lambda a, b: a == b,
            "!=": lambda a, b: a != b,
        }
        aid = acc["account_id"]
        if isinstance(cond, AllOf):
            return all(self.holds(c, acc) for c in cond.children)
        if isinstance(cond, AnyOf):
            return any(self.holds(c, acc) for c in cond.children)
        if isinstance(cond, Not):
            return not self.holds(cond.child, acc)
        if isinstance(cond, EventCondition):
            col = f"n_first_{cond.window_days}d"
            if cond.property is None:
                n = self.events.get((aid, cond.event), {}).get(col, 0)
            else:
                n = sum(
                    r[col]
                    for r in self.props.get((aid, cond.event, cond.property), [])
                    if r["property_value"] in cond.values
                )
            return ops[cond.op](n, cond.threshold)
        if isinstance(cond, AttributeCondition):
            value = acc[cond.attribute]
            if value is None:
                return False
            if cond.op == "in":
                return value in cond.values
            if cond.op == "not_in":
                return value not in cond.values
            return ops[cond.op](float(value), cond.values[0])
        if isinstance(cond, IntentCondition):
            row = self.intent.get((aid, cond.signal_type))
            column = "n_before_start" if cond.until == "start" else "n_before_window_end"
            return bool(row) and row[column] >= 1
        raise TypeError(cond)

    def __call__(self, cond) -> np.ndarray:
        return np.array([self.holds(cond, acc) for acc in self.accounts])


CONDITIONS = [
    BRIEF_EXAMPLE,
    "name: a\nwhen: {event: invited_teammate, count: '< 3', within_days: 7}\n",
    "name: b\nwhen: {event: api_key_created, count: '== 0', within_days: 3}\n",
    "name: c\nwhen: {event: report_exported, count: '!= 2'}\n",
    "name: d\nwhen: {event: $pageview, property: $current_url, in: [/home, /billing], count: '>= 2', within_days: 7}\n",
    "name: e\nwhen: {attribute: employee_count, value: '> 250'}\n",
    "name: f\nwhen: {not: {attribute: employee_count, value: '<= 50'}}\n",
    "name: g\nwhen: {attribute: industry, not_equals: Fintech}\n",
    "name: h\nwhen: {not: {attribute: industry, in: [Fintech, Software]}}\n",
    "name: i\nwhen: {attribute: is_crm_company, equals: false}\n",
    "name: j\nwhen: {intent: job_posting, until: window_end}\n",
    "name: k\nwhen:\n  any:\n    - all: [{event: invited_teammate, count: 2, within_days: 1}, {attribute: plan_interval, equals: year}]\n    - {attribute: employee_count, equals: 42}\n",
]


@pytest.mark.parametrize("text", CONDITIONS)
def test_vectorised_evaluation_matches_a_per_account_reference(frames, vocab, text):
    bound = _bound(text, vocab)
    got = evaluate(bound.condition, frames)
    expected = Reference(frames)(bound.condition)
    assert got.dtype == bool and got.shape == (frames.accounts.height,)
    np.testing.assert_array_equal(got, expected)
    assert 0 < got.sum() < len(got) or text.startswith("name: k")  # the cases are not degenerate


def test_a_missing_attribute_never_matches_a_leaf(frames, vocab):
    missing = frames.accounts.get_column("industry").is_null().to_numpy()
    is_fintech = evaluate(_bound("name: x\nwhen: {attribute: industry, equals: Fintech}\n", vocab).condition, frames)
    not_fintech = evaluate(
        _bound("name: x\nwhen: {attribute: industry, not_equals: Fintech}\n", vocab).condition, frames
    )
    negated = evaluate(
        _bound("name: x\nwhen: {not: {attribute: industry, equals: Fintech}}\n", vocab).condition, frames
    )
    assert missing.any()
    assert not is_fintech[missing].any() and not not_fintech[missing].any()
    assert negated[missing].all()


def test_evaluate_many_stacks_columns(frames, vocab):
    conds = [_bound(t, vocab).condition for t in CONDITIONS[:4]]
    matrix = evaluate_many(conds, frames)
    assert matrix.shape == (frames.accounts.height, 4)
    for j, c in enumerate(conds):
        np.testing.assert_array_equal(matrix[:, j], evaluate(c, frames))


def _candidate_yaml(row: dict) -> str:
    if row["kind"] == "event_count":
        leaf = f"{{event: '{row['event']}', count: '>= {row['threshold']}', within_days: {row['window_days']}}}"
    elif row["kind"] == "event_property":
        leaf = (
            f"{{event: '{row['event']}', property: '{row['property']}', equals: '{row['value']}', "
            f"count: '>= {row['threshold']}', within_days: {row['window_days']}}}"
        )
    elif row["kind"] == "attribute":
        leaf = f"{{attribute: {row['property']}, equals: '{row['value']}'}}"
    else:
        until = "start" if row["key"].endswith(":before_start") else "window_end"
        leaf = f"{{intent: {row['value']}, until: {until}, within_days_before_start: 90}}"
    return f"name: {row['key']}\nwhen: {leaf}\n"


def test_conditions_fire_exactly_where_discoverys_candidates_fire(frames, vocab):
    hits = candidate_hits(frames, FeatureSpec(WINDOWS, (1, 2, 3, 5), 14, 90))
    candidates = (
        hits.select("key", "kind", "event", "property", "value", "window_days", "threshold").unique("key").sort("key")
    )
    assert set(candidates.get_column("kind").unique()) == {"event_count", "event_property", "attribute", "intent"}
    index = {a: i for i, a in enumerate(frames.accounts.get_column("account_id").to_list())}
    for row in candidates.iter_rows(named=True):  # a few hundred candidates; each is one vectorised evaluation
        expected = np.zeros(frames.accounts.height, dtype=bool)
        expected[[index[a] for a in hits.filter(pl.col("key") == row["key"]).get_column("account_id").to_list()]] = True
        got = evaluate(_bound(_candidate_yaml(row), vocab).condition, frames)
        np.testing.assert_array_equal(got, expected, err_msg=row["key"])
