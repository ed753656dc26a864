"""Numbers and tables for people: asset metadata in the Dagster UI, `beton` output, messages.

One helper per job, so every surface prints a missing value, a lift or an ARR the same way:

    >>> fmt(1.23456, ".2f"), fmt(None), fmt(float("nan"), ".3f"), fmt(1234567.8, ",.0f")
    ('1.23', '—', '—', '1,234,568')
    >>> fmt_interval(0.91, 1.4, ".2f")
    '0.91–1.40'
    >>> print(markdown_table(["signal", "lift"], [["a", fmt(1.5, ".2f")]]))
    | signal | lift |
    |---|---|
    | a | 1.50 |
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

MISSING = "—"
"""What a missing (None or NaN) number prints as."""


def fmt(value: object, spec: str = ".3f") -> str:
    """`value` formatted with the format spec `spec`; None and NaN print as `MISSING`; text passes through."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, str):
        return value
    return format(value, spec)


def fmt_interval(low: object, high: object, spec: str = ".2f") -> str:
    """A confidence interval as `low–high` (each end through `fmt`)."""
    return f"{fmt(low, spec)}–{fmt(high, spec)}"


def fmt_estimate(value: object, low: object, high: object, spec: str = ".2f") -> str:
    """An estimate with its interval: `1.52 (1.10–2.03)`."""
    return f"{fmt(value, spec)} ({fmt_interval(low, high, spec)})"


def _cell(value: object) -> str:
    text = MISSING if value is None else str(value)
    return " ".join(text.splitlines()).replace("|", "\\|")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]], empty: str | None = None) -> str:
    """A GitHub-flavoured markdown table; cells are `str()`-ed (format numbers with `fmt` first), `|` escaped.

    With no rows, returns `empty` when given (e.g. "No signal enabled."), else the header alone.
    """
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    if not body and empty is not None:
        return empty
    head = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(head + body)
