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
from datetime import date, datetime

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


def fmt_ago(then: date | datetime | str | None, today: date) -> str:
    """How long before `today` something happened, as a person says it: "today", "yesterday", "3 days ago",
    "2 weeks ago", "4 months ago"; a date after `today` prints as the date; None or unreadable text as `MISSING`.

    `then` may be ISO text (`2026-01-31T09:00:00Z`); only its calendar day counts.
    """
    if isinstance(then, str):
        try:
            then = datetime.fromisoformat(then.replace("Z", "+00:00"))
        except ValueError:
            return MISSING
    if then is None:
        return MISSING
    day = then.date() if isinstance(then, datetime) else then
    days = (today - day).days
    if days < 0:
        return day.isoformat()
    if days <= 1:
        return ("today", "yesterday")[days]
    if days < 14:
        return f"{days} days ago"
    if days < 60:
        return f"{days // 7} weeks ago"
    if days < 730:
        return f"{days // 30} months ago"
    return f"{days // 365} years ago"


def plain_table(headers: Sequence[str], rows: Iterable[Sequence[object]], right: Iterable[str] = ()) -> str:
    """Aligned plain text for pipes and files: a header line, then one line per row, columns two spaces
    apart, never wrapped (the last column is left ragged, so put long text there). Cells are `str()`-ed
    (format numbers with `fmt` first; None prints as `MISSING`), line breaks and tabs become spaces;
    columns named in `right` are right-aligned.
    """
    right = set(right)
    cells = [[" ".join(_text(v).split()) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        padded = [
            v.rjust(w) if h in right else (v if i == len(values) - 1 else v.ljust(w))
            for i, (v, w, h) in enumerate(zip(values, widths, headers, strict=True))
        ]
        return "  ".join(padded).rstrip()

    return "\n".join([line(list(headers)), *(line(r) for r in cells)])


def _text(value: object) -> str:
    return MISSING if value is None else str(value)
