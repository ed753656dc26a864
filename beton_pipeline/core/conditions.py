"""Custom signals as conditions: a small YAML language, validated with line numbers, evaluated vectorised.

A signal file (`signals/*.yml`) names a condition on an account, built from four kinds of leaves and
three combinators. Every leaf reads the point-in-time feature marts, so it follows the same rule as
discovery: only what happened strictly before the account's feature window end
(`min(start + observation_days, conversion, as-of)`) can make it fire.

```yaml
name: Team invites early
description: invited 3+ teammates in the first 14 days
when:
  all:
    - event: invited_teammate          # event E happened `count` times in the first `within_days` days
      count: ">= 3"                    # >=, >, <=, <, ==, != and a whole number; a bare number means >=
      within_days: 14                  # one of the marts' first-N-day windows (default: the observation window)
    - not: {attribute: industry, equals: Education}
    - any:
        - {event: "$pageview", property: "$current_url", equals: "/settings/integrations", within_days: 14}
        - {intent: funding_round, within_days_before_start: 90}
```

| leaf | keys | fires when |
|---|---|---|
| event | `event`, `count` (">= 1"), `within_days` | the account did E `count` times in its first `within_days` days |
| event property | `event`, `property`, `equals` or `in`, `count`, `within_days` | the same, counting only events whose property has that value (or one of those values); the property must be a configured property feature (`discovery.property_features`) |
| attribute | `attribute`, one of `equals`, `not_equals`, `in`, `value` (a comparison for numbers: ">= 50") | the CRM/billing attribute (point-in-time: `marts.account_features`) matches |
| intent | `intent`, `within_days_before_start` (the marts' lookback), `until` (`start` or `window_end`) | a buying signal of that type in the lookback before start (or up to the window end) |

Combinators: `all: [..]` (and), `any: [..]` (or), `not: {..}`. A missing attribute value never matches
a leaf (so `not` of that leaf matches it). Windows and the intent lookback must be ones the marts
computed; anything else is an error that says which exist.

Three steps: `parse_signal` (YAML → `SignalDefinition`, structure errors with file, line and field),
`bind` (check every name against a `Vocabulary` of what the marts hold, fill defaults, suggest the
nearest known name; gives the canonical form whose hash is the `signal_id`), `evaluate` (one boolean
per account, numpy/polars only: one join per leaf, no Python loop over accounts).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import yaml
from yaml.constructor import SafeConstructor

from beton_pipeline.core.candidates import FeatureFrames, signal_id

ATTRIBUTE_TYPES: dict[str, str] = {
    "industry": "string",
    "employee_band": "string",
    "plan_interval": "string",
    "employee_count": "number",
    "plan_annualized_amount": "number",
    "is_crm_company": "boolean",
    "n_events": "number",
    "n_distinct_events": "number",
    "n_users": "number",
    "n_active_days": "number",
}
"""Account attributes a condition may use (columns of `marts.account_features`, all point-in-time)."""

COMPARISONS = (">=", "<=", "!=", "==", ">", "<")
_COMPARISON = re.compile(r"^\s*(>=|<=|!=|==|=|>|<)?\s*(-?\d+(?:\.\d+)?)\s*$")
TOP_LEVEL_KEYS = ("name", "description", "when")
EVENT_KEYS = ("event", "count", "within_days", "property", "equals", "in")
ATTRIBUTE_KEYS = ("attribute", "equals", "not_equals", "in", "value")
INTENT_KEYS = ("intent", "within_days_before_start", "until")
COMBINATORS = ("all", "any", "not")
LEAF_KINDS = ("event", "attribute", "intent")
INTENT_UNTIL = ("start", "window_end")


class SignalDefinitionError(ValueError):
    """A custom signal is malformed or names something the marts do not hold.

    The message reads `FILE:LINE: FIELD: problem`, so an editor can jump to it.
    """

    def __init__(self, source: str, line: int | None, field_path: str, problem: str):
        self.source, self.line, self.field, self.problem = source, line, field_path, problem
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {field_path}: {problem}" if field_path else f"{where}: {problem}")


# ------------------------------------------------------------------------------------------------
# The condition tree
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EventCondition:
    """Event `event` (optionally with `property` in `values`) happened `op threshold` times in the first `window_days` days."""

    event: str
    op: str = ">="
    threshold: int = 1
    window_days: int | None = None  # None until bound: the observation window
    property: str | None = None
    values: tuple[str, ...] | None = None
    line: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class AttributeCondition:
    """Account attribute `attribute` compared with `values`: op `in`, `not_in`, or a numeric comparison with one value."""

    attribute: str
    op: str
    values: tuple[Any, ...]
    line: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class IntentCondition:
    """A buying signal of type `signal_type` from `lookback_days` before start until `start` or `window_end`."""

    signal_type: str
    until: str = "start"
    lookback_days: int | None = None  # None until bound: the marts' lookback
    line: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class AllOf:
    children: tuple
    line: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class AnyOf:
    children: tuple
    line: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Not:
    child: Any
    line: int | None = field(default=None, compare=False)


Condition = EventCondition | AttributeCondition | IntentCondition | AllOf | AnyOf | Not


@dataclass(frozen=True)
class SignalDefinition:
    """A parsed signal file: its name, description, condition, and where it came from."""

    name: str
    description: str | None
    condition: Condition
    source: str


@dataclass(frozen=True)
class BoundSignal:
    """A signal checked against the marts: defaults filled, canonical form, stable id and readable text.

    `key` = `custom:condition:` + the canonical JSON of the condition (sorted keys, `all`/`any`
    children sorted, defaults filled); `signal_id` = `sig_` + the first 12 hex digits of its SHA-256,
    like discovered signals. Name and description are labels: renaming a file keeps its id.
    """

    definition: SignalDefinition
    condition: Condition
    canonical: str
    key: str
    signal_id: str
    text: str


# ------------------------------------------------------------------------------------------------
# What the marts hold
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Vocabulary:
    """Names a condition may use, as the marts hold them (for validation and suggestions).

    events: event names; properties: (event, property) → values seen; attributes: name → values seen
    (string and boolean attributes; numbers have an empty set); intent_types; windows: the first-N-day
    windows (`n_first_{d}d` columns); observation_days; intent_lookback_days.
    """

    events: frozenset[str]
    properties: dict[tuple[str, str], frozenset[str]]
    attributes: dict[str, frozenset]
    intent_types: frozenset[str]
    windows: tuple[int, ...]
    observation_days: int
    intent_lookback_days: int


def vocabulary_from_frames(
    frames: FeatureFrames, windows: tuple[int, ...], observation_days: int, intent_lookback_days: int
) -> Vocabulary:
    """The vocabulary of what `frames` hold (every attribute column of `frames.accounts` listed in ATTRIBUTE_TYPES)."""
    props = frames.properties.select("event_name", "property_name", "property_value").unique()
    properties: dict[tuple[str, str], frozenset[str]] = {}
    for (event, prop), group in props.group_by(["event_name", "property_name"]):  # one per configured property (few)
        properties[(event, prop)] = frozenset(group.get_column("property_value").to_list())
    attributes = {}
    for name, kind in ATTRIBUTE_TYPES.items():
        if name in frames.accounts.columns:
            values = frames.accounts.get_column(name).drop_nulls().unique().to_list() if kind != "number" else []
            attributes[name] = frozenset(values)
    return Vocabulary(
        events=frozenset(frames.events.get_column("event_name").unique().to_list()),
        properties=properties,
        attributes=attributes,
        intent_types=frozenset(frames.intent.get_column("signal_type").unique().to_list()),
        windows=tuple(sorted(windows)),
        observation_days=observation_days,
        intent_lookback_days=intent_lookback_days,
    )


# ------------------------------------------------------------------------------------------------
# Parsing (structure only; names are checked by `bind`)
# ------------------------------------------------------------------------------------------------
def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _value(node: yaml.Node) -> Any:
    """A scalar node's Python value (int, float, bool, None or str), by its resolved YAML tag."""
    return SafeConstructor().construct_object(node, deep=True)


def suggest(name: str, known: Iterable[str]) -> str:
    """` (did you mean `x`?)` for the nearest known name (difflib ratio ≥ 0.6), else ``."""
    match = difflib.get_close_matches(str(name), sorted(str(k) for k in known), n=1, cutoff=0.6)
    return f" (did you mean `{match[0]}`?)" if match else ""


class _Parser:
    def __init__(self, source: str):
        self.source = source

    def fail(self, node: yaml.Node | None, path: str, problem: str) -> SignalDefinitionError:
        return SignalDefinitionError(self.source, _line(node) if node is not None else None, path, problem)

    def mapping(self, node: yaml.Node, path: str, allowed: tuple[str, ...]) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """A mapping node as {key: (key node, value node)}; duplicate or unknown keys are errors."""
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, path, f"expected a mapping with {', '.join(allowed)}, got {_describe(node)}")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                raise self.fail(key_node, path, "keys must be plain names")
            if key in out:
                raise self.fail(key_node, f"{path}.{key}", "duplicate key")
            if key not in allowed:
                raise self.fail(
                    key_node, f"{path}.{key}", f"unknown key{suggest(key, allowed)}; allowed here: {', '.join(allowed)}"
                )
            out[key] = (key_node, value_node)
        return out

    def scalar(self, node: yaml.Node, path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, path, f"expected a single value, got {_describe(node)}")
        return _value(node)

    def text(self, node: yaml.Node, path: str) -> str:
        value = self.scalar(node, path)
        if value is None or isinstance(value, (list, dict)) or str(value).strip() == "":
            raise self.fail(node, path, "expected a non-empty name")
        return str(value)

    def whole_number(self, node: yaml.Node, path: str, minimum: int) -> int:
        value = self.scalar(node, path)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(node, path, f"expected a whole number ≥ {minimum}, got {value!r}")
        return value

    def comparison(self, node: yaml.Node, path: str, integer: bool) -> tuple[str, float]:
        value = self.scalar(node, path)
        if isinstance(value, bool):
            raise self.fail(node, path, f'expected a comparison such as ">= 3", got {value!r}')
        if isinstance(value, (int, float)):
            op, number = ">=", value
        else:
            match = _COMPARISON.match(str(value))
            if not match:
                raise self.fail(
                    node,
                    path,
                    f'expected a comparison such as ">= 3" ({", ".join(COMPARISONS)} and a number), got {value!r}',
                )
            op = {"=": "==", None: ">="}.get(match.group(1), match.group(1))
            number = float(match.group(2))
        if integer and (number != int(number) or number < 0):
            raise self.fail(node, path, f"a count compares with a whole number ≥ 0, got {value!r}")
        return op, (int(number) if integer else float(number))

    def values(self, node: yaml.Node, path: str) -> tuple:
        if isinstance(node, yaml.SequenceNode):
            if not node.value:
                raise self.fail(node, path, "expected at least one value")
            return tuple(self.scalar(item, f"{path}[{i}]") for i, item in enumerate(node.value))
        raise self.fail(node, path, f"expected a list of values, got {_describe(node)}")

    def condition(self, node: yaml.Node, path: str) -> Condition:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(
                node,
                path,
                f"expected a condition (a mapping with one of {', '.join(COMBINATORS + LEAF_KINDS)}), got {_describe(node)}",
            )
        keys = [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)]
        kinds = [k for k in keys if k in COMBINATORS + LEAF_KINDS]
        if not kinds:
            first = node.value[0][0] if node.value else node
            hint = suggest(keys[0], COMBINATORS + LEAF_KINDS) if keys else ""
            raise self.fail(first, path, f"a condition needs one of {', '.join(COMBINATORS + LEAF_KINDS)}{hint}")
        if len(kinds) > 1:
            raise self.fail(
                node, path, f"one condition per mapping: found {', '.join(kinds)}; combine them under `all:` or `any:`"
            )
        kind = kinds[0]
        if kind in ("all", "any"):
            entries = self.mapping(node, path, (kind,))
            _, seq = entries[kind]
            if not isinstance(seq, yaml.SequenceNode) or not seq.value:
                raise self.fail(
                    seq, f"{path}.{kind}", f"expected a list of at least one condition, got {_describe(seq)}"
                )
            children = tuple(self.condition(child, f"{path}.{kind}[{i}]") for i, child in enumerate(seq.value))
            return (AllOf if kind == "all" else AnyOf)(children, line=_line(node))
        if kind == "not":
            entries = self.mapping(node, path, ("not",))
            return Not(self.condition(entries["not"][1], f"{path}.not"), line=_line(node))
        if kind == "event":
            return self.event(node, path)
        if kind == "attribute":
            return self.attribute(node, path)
        return self.intent(node, path)

    def event(self, node: yaml.Node, path: str) -> EventCondition:
        entries = self.mapping(node, path, EVENT_KEYS)
        event = self.text(entries["event"][1], f"{path}.event")
        op, threshold = (">=", 1)
        if "count" in entries:
            op, threshold = self.comparison(entries["count"][1], f"{path}.count", integer=True)
        window = (
            self.whole_number(entries["within_days"][1], f"{path}.within_days", 1) if "within_days" in entries else None
        )
        prop, values = None, None
        has_value = [k for k in ("equals", "in") if k in entries]
        if "property" in entries:
            prop = self.text(entries["property"][1], f"{path}.property")
            if len(has_value) != 1:
                raise self.fail(
                    entries["property"][0],
                    f"{path}.property",
                    "give the property's value with exactly one of `equals` or `in`",
                )
            key = has_value[0]
            raw = (
                (self.scalar(entries[key][1], f"{path}.{key}"),)
                if key == "equals"
                else self.values(entries[key][1], f"{path}.{key}")
            )
            values = tuple(sorted({str(v) for v in raw}))
        elif has_value:
            raise self.fail(
                entries[has_value[0]][0],
                f"{path}.{has_value[0]}",
                "`equals`/`in` on an event need `property:` (which property has that value)",
            )
        return EventCondition(event, op, int(threshold), window, prop, values, line=_line(node))

    def attribute(self, node: yaml.Node, path: str) -> AttributeCondition:
        entries = self.mapping(node, path, ATTRIBUTE_KEYS)
        name = self.text(entries["attribute"][1], f"{path}.attribute")
        given = [k for k in ("equals", "not_equals", "in", "value") if k in entries]
        if len(given) != 1:
            raise self.fail(node, path, "an attribute condition needs exactly one of equals, not_equals, in, value")
        key = given[0]
        value_node = entries[key][1]
        if key == "value":
            op, number = self.comparison(value_node, f"{path}.value", integer=False)
            return AttributeCondition(name, op, (number,), line=_line(node))
        if key == "in":
            return AttributeCondition(name, "in", self.values(value_node, f"{path}.in"), line=_line(node))
        value = self.scalar(value_node, f"{path}.{key}")
        if value is None:
            raise self.fail(value_node, f"{path}.{key}", "expected a value (a missing attribute never matches)")
        return AttributeCondition(name, "in" if key == "equals" else "not_in", (value,), line=_line(node))

    def intent(self, node: yaml.Node, path: str) -> IntentCondition:
        entries = self.mapping(node, path, INTENT_KEYS)
        signal_type = self.text(entries["intent"][1], f"{path}.intent")
        until = "start"
        if "until" in entries:
            until = self.text(entries["until"][1], f"{path}.until")
            if until not in INTENT_UNTIL:
                raise self.fail(
                    entries["until"][1],
                    f"{path}.until",
                    f"expected one of {', '.join(INTENT_UNTIL)}, got {until!r}{suggest(until, INTENT_UNTIL)}",
                )
        lookback = None
        if "within_days_before_start" in entries:
            lookback = self.whole_number(entries["within_days_before_start"][1], f"{path}.within_days_before_start", 1)
        return IntentCondition(signal_type, until, lookback, line=_line(node))


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    value = _value(node)
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"


def parse_signal(text: str, source: str) -> SignalDefinition:
    """Parse a signal file's YAML text; errors name `source`, the line and the field."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if "chomping or indentation indicators" in problem:  # an unquoted `>= 3` starts a YAML block scalar
            problem += '; put comparisons in quotes: count: ">= 3"'
        raise SignalDefinitionError(source, mark.line + 1 if mark else None, "", f"not valid YAML: {problem}") from None
    if root is None:
        raise SignalDefinitionError(source, None, "", "the file is empty; expected `name:` and `when:`")
    parser = _Parser(source)
    entries = parser.mapping(root, "", TOP_LEVEL_KEYS) if isinstance(root, yaml.MappingNode) else None
    if entries is None:
        raise SignalDefinitionError(
            source, _line(root), "", f"expected a mapping with {', '.join(TOP_LEVEL_KEYS)}, got {_describe(root)}"
        )
    for required in ("name", "when"):
        if required not in entries:
            raise SignalDefinitionError(
                source, _line(root), required, "missing (every signal file needs `name:` and `when:`)"
            )
    name = parser.text(entries["name"][1], "name")
    description = parser.scalar(entries["description"][1], "description") if "description" in entries else None
    condition = parser.condition(entries["when"][1], "when")
    return SignalDefinition(
        name=name, description=None if description is None else str(description), condition=condition, source=source
    )


def parse_condition_json(canonical: str, source: str = "<canonical>") -> Condition:
    """Parse a condition from its canonical JSON (JSON is YAML, so this is the same parser)."""
    root = yaml.compose(canonical, Loader=yaml.SafeLoader)
    return _Parser(source).condition(root, "when")


# ------------------------------------------------------------------------------------------------
# Binding: names checked against the marts, defaults filled
# ------------------------------------------------------------------------------------------------
def _fail(source: str, cond: Condition, field_path: str, problem: str) -> SignalDefinitionError:
    return SignalDefinitionError(source, cond.line, field_path, problem)


def _bind(cond: Condition, vocab: Vocabulary, source: str, path: str) -> Condition:
    if isinstance(cond, (AllOf, AnyOf)):
        name = "all" if isinstance(cond, AllOf) else "any"
        children = tuple(_bind(c, vocab, source, f"{path}.{name}[{i}]") for i, c in enumerate(cond.children))
        return type(cond)(children, line=cond.line)
    if isinstance(cond, Not):
        return Not(_bind(cond.child, vocab, source, f"{path}.not"), line=cond.line)
    if isinstance(cond, EventCondition):
        return _bind_event(cond, vocab, source, path)
    if isinstance(cond, AttributeCondition):
        return _bind_attribute(cond, vocab, source, path)
    if isinstance(cond, IntentCondition):
        return _bind_intent(cond, vocab, source, path)
    raise TypeError(f"not a condition: {cond!r}")


def _bind_event(cond: EventCondition, vocab: Vocabulary, source: str, path: str) -> EventCondition:
    if cond.event not in vocab.events:
        raise _fail(
            source,
            cond,
            f"{path}.event",
            f"unknown event `{cond.event}`: no account has it in the marts{suggest(cond.event, vocab.events)} (see `beton events`)",
        )
    window = cond.window_days if cond.window_days is not None else vocab.observation_days
    if window not in vocab.windows:
        raise _fail(
            source,
            cond,
            f"{path}.within_days",
            f"{window} is not one of the marts' first-N-day windows ({', '.join(map(str, vocab.windows))}); "
            "windows come from beton.yaml discovery.first_n_days (up to windows.observation_days)",
        )
    if cond.property is not None:
        configured = sorted(p for (e, p) in vocab.properties if e == cond.event)
        if (cond.event, cond.property) not in vocab.properties:
            listed = ", ".join(f"{e}.{p}" for e, p in sorted(vocab.properties)) or "none"
            raise _fail(
                source,
                cond,
                f"{path}.property",
                f"property `{cond.property}` of `{cond.event}` is not a property feature in the marts{suggest(cond.property, configured)}; "
                f"configured: {listed} (beton.yaml discovery.property_features)",
            )
        seen = vocab.properties[(cond.event, cond.property)]
        for value in cond.values or ():
            if value not in seen:
                raise _fail(
                    source,
                    cond,
                    f"{path}.equals" if len(cond.values) == 1 else f"{path}.in",
                    f"`{cond.event}` never had {cond.property} = {value!r}{suggest(value, seen)}",
                )
    return EventCondition(cond.event, cond.op, cond.threshold, window, cond.property, cond.values, line=cond.line)


def _bind_attribute(cond: AttributeCondition, vocab: Vocabulary, source: str, path: str) -> AttributeCondition:
    if cond.attribute not in vocab.attributes:
        raise _fail(
            source,
            cond,
            f"{path}.attribute",
            f"unknown attribute `{cond.attribute}`{suggest(cond.attribute, vocab.attributes)}; known: {', '.join(sorted(vocab.attributes))}",
        )
    kind = ATTRIBUTE_TYPES[cond.attribute]
    if kind == "number":
        values = []
        for v in cond.values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise _fail(
                    source, cond, f"{path}", f"`{cond.attribute}` is a number; compare it with a number, got {v!r}"
                )
            values.append(float(v))
        op = cond.op
        if len(values) == 1 and op in ("in", "not_in"):  # equals / not_equals on a number: one comparison
            op = "==" if op == "in" else "!="
        return AttributeCondition(cond.attribute, op, tuple(sorted(set(values))), line=cond.line)
    if cond.op not in ("in", "not_in"):
        raise _fail(source, cond, f"{path}.value", f"`{cond.attribute}` is not a number; use equals, not_equals or in")
    if kind == "boolean":
        if not all(isinstance(v, bool) for v in cond.values):
            raise _fail(source, cond, f"{path}", f"`{cond.attribute}` is true or false, got {list(cond.values)!r}")
        return AttributeCondition(cond.attribute, cond.op, tuple(sorted(set(cond.values))), line=cond.line)
    values = tuple(sorted({str(v) for v in cond.values}))
    seen = vocab.attributes[cond.attribute]
    for value in values:
        if value not in seen:
            raise _fail(source, cond, f"{path}", f"no account has {cond.attribute} = {value!r}{suggest(value, seen)}")
    return AttributeCondition(cond.attribute, cond.op, values, line=cond.line)


def _bind_intent(cond: IntentCondition, vocab: Vocabulary, source: str, path: str) -> IntentCondition:
    if cond.signal_type not in vocab.intent_types:
        known = ", ".join(sorted(vocab.intent_types)) or "none"
        raise _fail(
            source,
            cond,
            f"{path}.intent",
            f"unknown intent signal `{cond.signal_type}`{suggest(cond.signal_type, vocab.intent_types)}; known: {known}",
        )
    lookback = cond.lookback_days if cond.lookback_days is not None else vocab.intent_lookback_days
    if lookback != vocab.intent_lookback_days:
        raise _fail(
            source,
            cond,
            f"{path}.within_days_before_start",
            f"the marts count intent signals in the {vocab.intent_lookback_days} days before start "
            f"(beton.yaml discovery.intent_lookback_days), not {lookback}",
        )
    return IntentCondition(cond.signal_type, cond.until, lookback, line=cond.line)


def canonical_form(cond: Condition) -> Any:
    """The condition as plain data in the signal-file syntax, defaults filled, `all`/`any` children sorted."""
    if isinstance(cond, (AllOf, AnyOf)):
        children = sorted((canonical_form(c) for c in cond.children), key=lambda c: json.dumps(c, sort_keys=True))
        return {"all" if isinstance(cond, AllOf) else "any": children}
    if isinstance(cond, Not):
        return {"not": canonical_form(cond.child)}
    if isinstance(cond, EventCondition):
        out: dict[str, Any] = {
            "event": cond.event,
            "count": f"{cond.op} {cond.threshold}",
            "within_days": cond.window_days,
        }
        if cond.property is not None:
            out["property"] = cond.property
            out["in"] = list(cond.values or ())
        return out
    if isinstance(cond, AttributeCondition):
        if cond.op == "in":
            return {"attribute": cond.attribute, "in": list(cond.values)}
        if cond.op == "not_in":  # from `not_equals`: always one value
            return {"attribute": cond.attribute, "not_equals": cond.values[0]}
        return {"attribute": cond.attribute, "value": f"{cond.op} {_number_text(cond.values[0])}"}
    if isinstance(cond, IntentCondition):
        return {"intent": cond.signal_type, "within_days_before_start": cond.lookback_days, "until": cond.until}
    raise TypeError(f"not a condition: {cond!r}")


def _number_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def describe(cond: Condition, observation_days: int | None = None) -> str:
    """Readable text, in discovery's wording: "`invited_teammate` >= 3 in the first 14 days AND NOT industry = Education"."""
    if isinstance(cond, (AllOf, AnyOf)):
        joiner = " AND " if isinstance(cond, AllOf) else " OR "
        parts = [describe(c, observation_days) for c in cond.children]
        parts = [
            f"({p})" if isinstance(c, (AllOf, AnyOf)) and len(c.children) > 1 else p
            for p, c in zip(parts, cond.children, strict=True)
        ]
        return joiner.join(parts)
    if isinstance(cond, Not):
        inner = describe(cond.child, observation_days)
        return f"NOT ({inner})" if isinstance(cond.child, (AllOf, AnyOf)) else f"NOT {inner}"
    if isinstance(cond, EventCondition):
        window = f"in the first {cond.window_days} days"
        if cond.window_days == observation_days:
            window += " (observation window)"
        subject = f"`{cond.event}`"
        if cond.property is not None:
            values = cond.values or ()
            subject += (
                f" with {cond.property} = {values[0]}"
                if len(values) == 1
                else f" with {cond.property} in ({', '.join(values)})"
            )
        return f"{subject} {cond.op} {cond.threshold} {window}"
    if isinstance(cond, AttributeCondition):
        shown = [_number_text(v) if isinstance(v, float) else str(v) for v in cond.values]
        if cond.op == "in":
            return f"{cond.attribute} = {shown[0]}" if len(shown) == 1 else f"{cond.attribute} in ({', '.join(shown)})"
        if cond.op == "not_in":
            return (
                f"{cond.attribute} != {shown[0]}"
                if len(shown) == 1
                else f"{cond.attribute} not in ({', '.join(shown)})"
            )
        return f"{cond.attribute} {cond.op} {_number_text(cond.values[0])}"
    if isinstance(cond, IntentCondition):
        if cond.until == "start":
            return f"{cond.signal_type} in the {cond.lookback_days} days before start"
        return f"{cond.signal_type} from {cond.lookback_days} days before start to the end of the observation window"
    raise TypeError(f"not a condition: {cond!r}")


def bind(definition: SignalDefinition, vocab: Vocabulary) -> BoundSignal:
    """Check every name against `vocab`, fill defaults, and derive the canonical form, key, id and text."""
    condition = _bind(definition.condition, vocab, definition.source, "when")
    canonical = json.dumps(canonical_form(condition), sort_keys=True, separators=(",", ":"))
    key = f"custom:condition:{canonical}"
    return BoundSignal(
        definition=definition,
        condition=condition,
        canonical=canonical,
        key=key,
        signal_id=signal_id(key),
        text=describe(condition, vocab.observation_days),
    )


# ------------------------------------------------------------------------------------------------
# Evaluation: one boolean per account
# ------------------------------------------------------------------------------------------------
def _compare(values: np.ndarray, op: str, threshold: float) -> np.ndarray:
    return {
        ">=": np.greater_equal,
        ">": np.greater,
        "<=": np.less_equal,
        "<": np.less,
        "==": np.equal,
        "!=": np.not_equal,
    }[op](values, threshold)


class _Evaluator:
    """Evaluates bound conditions on one `FeatureFrames`, aligned to `frames.accounts` row order."""

    def __init__(self, frames: FeatureFrames):
        self.frames = frames
        self.n = frames.accounts.height
        self.index = frames.accounts.select("account_id").with_row_index("_row")

    def _scatter(self, per_account: pl.DataFrame, value: str) -> np.ndarray:
        """Per-account values (account_id, value) as an array over all accounts, 0 where absent."""
        out = np.zeros(self.n, dtype=np.float64)
        joined = per_account.join(self.index, on="account_id", how="inner")
        out[joined.get_column("_row").to_numpy()] = joined.get_column(value).to_numpy()
        return out

    def __call__(self, cond: Condition) -> np.ndarray:
        if isinstance(cond, AllOf):
            return np.logical_and.reduce([self(c) for c in cond.children])
        if isinstance(cond, AnyOf):
            return np.logical_or.reduce([self(c) for c in cond.children])
        if isinstance(cond, Not):
            return ~self(cond.child)
        if isinstance(cond, EventCondition):
            column = f"n_first_{cond.window_days}d"
            if cond.property is None:
                rows = self.frames.events.filter(pl.col("event_name") == cond.event)
            else:
                rows = self.frames.properties.filter(
                    (pl.col("event_name") == cond.event)
                    & (pl.col("property_name") == cond.property)
                    & pl.col("property_value").is_in(list(cond.values or ()))
                )
            if column not in rows.columns:
                raise ValueError(f"the feature frames have no {column} column (windows: {cond.window_days})")
            counts = rows.group_by("account_id").agg(pl.col(column).sum().cast(pl.Float64).alias("n"))
            return _compare(self._scatter(counts, "n"), cond.op, cond.threshold)
        if isinstance(cond, AttributeCondition):
            column = pl.col(cond.attribute)
            if ATTRIBUTE_TYPES.get(cond.attribute) == "number":
                column = column.cast(pl.Float64)
            if cond.op == "in":
                expr = column.is_in(list(cond.values))
            elif cond.op == "not_in":
                expr = ~column.is_in(list(cond.values))
            else:
                expr = {
                    ">=": column >= cond.values[0],
                    ">": column > cond.values[0],
                    "<=": column <= cond.values[0],
                    "<": column < cond.values[0],
                    "==": column == cond.values[0],
                    "!=": column != cond.values[0],
                }[cond.op]
            # A missing value never matches a leaf.
            expr = pl.when(column.is_null()).then(False).otherwise(expr)
            return self.frames.accounts.select(expr.fill_null(False).alias("m")).get_column("m").to_numpy().astype(bool)
        if isinstance(cond, IntentCondition):
            column = "n_before_start" if cond.until == "start" else "n_before_window_end"
            rows = self.frames.intent.filter(pl.col("signal_type") == cond.signal_type)
            counts = rows.group_by("account_id").agg(pl.col(column).sum().cast(pl.Float64).alias("n"))
            return self._scatter(counts, "n") >= 1
        raise TypeError(f"not a condition: {cond!r}")


def evaluate(condition: Condition, frames: FeatureFrames) -> np.ndarray:
    """Whether a bound condition fires for each account of `frames.accounts` (same order), as a bool array."""
    return np.asarray(_Evaluator(frames)(condition), dtype=bool).reshape(frames.accounts.height)


def evaluate_many(conditions: list[Condition], frames: FeatureFrames) -> np.ndarray:
    """accounts × conditions boolean matrix (one column per condition, `frames.accounts` row order)."""
    evaluator = _Evaluator(frames)
    if not conditions:
        return np.zeros((frames.accounts.height, 0), dtype=bool)
    return np.column_stack([np.asarray(evaluator(c), dtype=bool).reshape(evaluator.n) for c in conditions])


# ------------------------------------------------------------------------------------------------
# Firing times: when a condition became true for each account (for daily health and scores)
# ------------------------------------------------------------------------------------------------
CRM_ATTRIBUTES = frozenset({"industry", "employee_band", "employee_count", "is_crm_company"})
"""Attributes read from the CRM: known at the account's start and fixed over its window."""

PLAN_ATTRIBUTES = frozenset({"plan_interval", "plan_annualized_amount"})
"""Attributes of the account's first subscription created before its window end (null until it exists)."""

WINDOW_ATTRIBUTES = frozenset({"n_events", "n_distinct_events", "n_users", "n_active_days"})
"""Attributes counted over the whole point-in-time window: known only at its end."""

FIRST_SUBSCRIPTION_LEAF = "plan:first_subscription"
"""The leaf time every plan attribute leaf reads: the creation of the account's first subscription."""

LEAF_SCHEMA = {
    "leaf": pl.String,
    "kind": pl.String,
    "event": pl.String,
    "property": pl.String,
    "values": pl.List(pl.String),
    "window_days": pl.Int64,
    "nth": pl.Int64,
    "signal_type": pl.String,
    "until": pl.String,
    "lookback_days": pl.Int64,
}
"""What the warehouse must look up for each timed leaf (`timed_leaves`)."""

LEAF_TIME_SCHEMA = {"leaf": pl.String, "account_id": pl.String, "at": pl.Datetime("us")}
"""Leaf times as the warehouse returns them: one row per leaf and account it has a time for."""

_NO_TIME = np.iinfo(np.int64).max


def leaf_id(cond: Condition) -> str:
    """The identifier of a leaf's time lookup: its canonical JSON (plan leaves share `FIRST_SUBSCRIPTION_LEAF`)."""
    if isinstance(cond, AttributeCondition) and cond.attribute in PLAN_ATTRIBUTES:
        return FIRST_SUBSCRIPTION_LEAF
    return json.dumps(canonical_form(cond), sort_keys=True, separators=(",", ":"))


def _monotone_count(cond: EventCondition) -> bool:
    """`count >= t` / `> t`: once true, true for the rest of the window."""
    return cond.op in (">=", ">")


def _nth(cond: EventCondition) -> int:
    """The occurrence that makes `count >= t` (the t-th) or `count > t` (the (t+1)-th) true."""
    return cond.threshold if cond.op == ">=" else cond.threshold + 1


def _leaves(cond: Condition) -> Iterable[Condition]:
    if isinstance(cond, (AllOf, AnyOf)):
        for child in cond.children:
            yield from _leaves(child)
    elif isinstance(cond, Not):
        yield from _leaves(cond.child)
    else:
        yield cond


def timed_leaves(conditions: Iterable[Condition]) -> pl.DataFrame:
    """The leaves of bound `conditions` whose time the warehouse supplies, once each (`LEAF_SCHEMA`).

    kind `event`: the `nth` occurrence of `event` (with `property` in `values`, when set) in the first
    `window_days` days; `intent`: the latest `signal_type` signal from `lookback_days` before the start
    until the start or the window end (`until`); `plan`: the account's first subscription. Other leaves
    need no lookup (their time is the start or the window end).
    """
    rows: dict[str, dict] = {}
    for cond in (leaf for c in conditions for leaf in _leaves(c)):
        if isinstance(cond, EventCondition) and _monotone_count(cond) and _nth(cond) > 0:
            row = {
                "kind": "event",
                "event": cond.event,
                "property": cond.property,
                "values": list(cond.values) if cond.property is not None else None,
                "window_days": cond.window_days,
                "nth": _nth(cond),
            }
        elif isinstance(cond, IntentCondition):
            row = {
                "kind": "intent",
                "signal_type": cond.signal_type,
                "until": cond.until,
                "lookback_days": cond.lookback_days,
            }
        elif isinstance(cond, AttributeCondition) and cond.attribute in PLAN_ATTRIBUTES:
            row = {"kind": "plan"}
        else:
            continue
        rows.setdefault(leaf_id(cond), row)
    return pl.DataFrame([{"leaf": k, **v} for k, v in rows.items()], schema=LEAF_SCHEMA)


@dataclass(frozen=True)
class ConditionFirings:
    """When each condition fired for each account of `frames.accounts` (same row order).

    `fired_at` is accounts × conditions (datetime64[us], NaT where the condition is false);
    `missing_leaf_times` counts (account, leaf) pairs where a leaf was true by the marts' counts but the
    warehouse gave no time for it: they took the window end (0 when the counts and the times agree).
    """

    fired_at: np.ndarray
    missing_leaf_times: int

    @property
    def fired(self) -> np.ndarray:
        """accounts × conditions: whether it fired (equal to `evaluate_many`)."""
        return ~np.isnat(self.fired_at)


class _Timer:
    """Firing times of bound conditions on one `FeatureFrames` (accounts need started_at and
    feature_window_end_at), from the leaf times the warehouse gave. Each node gives (true, time, fixed):
    `fixed` means its truth is decided at the start and cannot change over the window."""

    def __init__(self, frames: FeatureFrames, leaf_times: pl.DataFrame):
        self.evaluator = _Evaluator(frames)
        accounts = frames.accounts
        self.end = accounts.get_column("feature_window_end_at").cast(pl.Datetime("us")).to_numpy().astype(np.int64)
        start = accounts.get_column("started_at").cast(pl.Datetime("us")).to_numpy().astype(np.int64)
        self.start = np.minimum(start, self.end)
        self.times: dict[str, np.ndarray] = {}
        joined = leaf_times.cast(LEAF_TIME_SCHEMA).join(self.evaluator.index, on="account_id", how="inner")
        for (leaf,), group in joined.group_by("leaf"):  # one group per distinct leaf (few)
            out = np.full(self.evaluator.n, _NO_TIME, dtype=np.int64)
            out[group.get_column("_row").to_numpy()] = group.get_column("at").to_numpy().astype(np.int64)
            self.times[leaf] = out
        self.missing = 0

    def _looked_up(self, cond: Condition, true: np.ndarray) -> np.ndarray:
        at = self.times.get(leaf_id(cond), np.full(self.evaluator.n, _NO_TIME, dtype=np.int64))
        absent = true & (at == _NO_TIME)
        self.missing += int(absent.sum())
        return np.where(absent, self.end, np.minimum(at, self.end))

    def __call__(self, cond: Condition) -> tuple[np.ndarray, np.ndarray, bool]:
        if isinstance(cond, (AllOf, AnyOf)):
            parts = [self(c) for c in cond.children]
            fixed = all(p[2] for p in parts)
            if isinstance(cond, AllOf):
                true = np.logical_and.reduce([p[0] for p in parts])
                return true, np.maximum.reduce([p[1] for p in parts]), fixed  # the latest child
            true = np.logical_or.reduce([p[0] for p in parts])
            at = np.minimum.reduce([np.where(p[0], p[1], _NO_TIME) for p in parts])  # the earliest true child
            return true, at, fixed
        if isinstance(cond, Not):
            child_true, _, fixed = self(cond.child)
            return ~child_true, self.start if fixed else self.end, fixed
        true = np.asarray(self.evaluator(cond), dtype=bool).reshape(self.evaluator.n)
        if isinstance(cond, EventCondition):
            if not _monotone_count(cond):
                return true, self.end, False
            if _nth(cond) == 0:  # `count >= 0`: true from the start
                return true, self.start, True
            return true, self._looked_up(cond, true), False
        if isinstance(cond, AttributeCondition):
            if cond.attribute in CRM_ATTRIBUTES:
                return true, self.start, True
            if cond.attribute in PLAN_ATTRIBUTES:
                return true, np.maximum(self._looked_up(cond, true), self.start), False
            return true, self.end, False
        if isinstance(cond, IntentCondition):
            return true, self._looked_up(cond, true), cond.until == "start"
        raise TypeError(f"not a condition: {cond!r}")


def firing_times_many(conditions: list[Condition], frames: FeatureFrames, leaf_times: pl.DataFrame) -> ConditionFirings:
    """When each bound condition became true for each account of `frames.accounts`: the point-in-time
    firing time that daily health and scores use (a score on day D counts firings before D).

    An account fires exactly where `evaluate_many` is true. The time follows the condition's tree:

    | node | fired_at |
    |---|---|
    | event `count >= t` / `> t` | the t-th / (t+1)-th occurrence in the first `within_days` days (`leaf_times`) |
    | event `<`, `<=`, `==`, `!=` (not monotone) | the feature window end: only then is the count final |
    | CRM attribute (industry, employee band/count, CRM company) | the account's start |
    | plan attribute (plan interval, annualized amount: the first subscription's) | that subscription's creation (not before the start) |
    | activity attribute (n_events, n_users, ...: counted over the window) | the feature window end |
    | intent | the latest qualifying signal (`leaf_times`), as for discovered intent signals |
    | `all` | the latest child |
    | `any` | the earliest true child |
    | `not` | the start when the child is decided at the start (CRM attributes, intent before the start), else the window end |

    Every time is at most the account's `feature_window_end_at` (a firing is knowable when the signal
    is evaluated); a start after the window end (converted before the first event) is taken as the
    window end. `leaf_times` has `LEAF_TIME_SCHEMA`, keyed by `leaf_id` (see `timed_leaves`). The rules
    take the earliest moment at which the condition is known to hold, except `not` and the non-monotone
    leaves, which can only be known at the window end, and intent, which follows discovery's rule.
    """
    timer = _Timer(frames, leaf_times)
    n = frames.accounts.height
    fired_at = np.full((n, len(conditions)), np.datetime64("NaT"), dtype="datetime64[us]")
    for j, cond in enumerate(conditions):
        true, at, _ = timer(cond)
        fired_at[true, j] = at[true].astype("datetime64[us]")
    return ConditionFirings(fired_at=fired_at, missing_leaf_times=timer.missing)
