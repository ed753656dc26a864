"""The backtest page's visual builder: form rows → a custom signal's YAML (the language of `core.conditions`).

Each row is one leaf: an event done at least `count` times in the first `within_days` days, or an attribute
equal to a value; the rows are combined with `all` (and) or `any` (or). The YAML goes through the same parsing,
binding and backtest as a file in `signals/` or `beton backtest --file`, so a name the marts do not hold is
reported with the nearest known ones.
"""

from __future__ import annotations

from collections.abc import Mapping

import yaml

MAX_ROWS = 4
"""Rows the builder offers for each kind of leaf."""


def builder_rows(form: Mapping[str, str]) -> list[dict]:
    """The filled rows of the builder's form (`event_N`, `count_N`, `days_N`; `attribute_N`, `value_N`), as leaves."""
    leaves: list[dict] = []
    for n in range(1, MAX_ROWS + 1):
        event = (form.get(f"event_{n}") or "").strip()
        if event:
            leaf: dict = {"event": event, "count": f">= {(form.get(f'count_{n}') or '1').strip()}"}  # bound later
            days = (form.get(f"days_{n}") or "").strip()
            if days:
                leaf["within_days"] = int(days) if days.isdecimal() and days.isascii() else days
            leaves.append(leaf)
    for n in range(1, MAX_ROWS + 1):
        attribute = (form.get(f"attribute_{n}") or "").strip()
        if attribute:
            leaves.append({"attribute": attribute, "equals": (form.get(f"value_{n}") or "").strip()})
    return leaves


def condition_yaml(name: str, combine: str, leaves: list[dict]) -> str:
    """A signal file's text: `name` and `when` (one leaf alone, or `all`/`any` of them)."""
    when = leaves[0] if len(leaves) == 1 else {"any" if combine == "any" else "all": leaves}
    return yaml.safe_dump({"name": name or "Built in beton serve", "when": when}, sort_keys=False, allow_unicode=True)
