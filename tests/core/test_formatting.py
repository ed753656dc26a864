import doctest
import math
import re

from hypothesis import given
from hypothesis import strategies as st

from beton_pipeline.core import formatting
from beton_pipeline.core.formatting import MISSING, fmt, fmt_estimate, markdown_table


def test_docstring_examples():
    assert doctest.testmod(formatting).failed == 0


def test_missing_values_print_the_same_everywhere():
    assert fmt(None) == fmt(math.nan) == fmt(float("nan"), ",.0f") == MISSING
    assert fmt_estimate(None, 1.0, math.nan) == f"{MISSING} (1.00–{MISSING})"


def test_markdown_table_escapes_pipes_and_handles_no_rows():
    table = markdown_table(["a", "b"], [["x|y", None]])
    assert table.splitlines() == ["| a | b |", "|---|---|", f"| x\\|y | {MISSING} |"]
    assert markdown_table(["a"], [], empty="nothing") == "nothing"
    assert markdown_table(["a"], []) == "| a |\n|---|"


@given(st.lists(st.lists(st.text(max_size=5), min_size=3, max_size=3), max_size=5))
def test_markdown_table_has_one_line_per_row_and_constant_columns(rows):
    lines = markdown_table(["a", "b", "c"], rows).splitlines()
    assert len(lines) == len(rows) + 2
    assert all(len(re.findall(r"(?<!\\)\|", line)) == 4 for line in lines)


def test_fmt_ago_says_it_as_a_person_would():
    from datetime import date, datetime

    from beton_pipeline.core.formatting import fmt_ago

    today = date(2026, 3, 31)
    cases = {
        "2026-03-31T23:59:00Z": "today",
        "2026-03-30T00:00:00+02:00": "yesterday",
        "2026-03-29": "2 days ago",
        "2026-03-18": "13 days ago",
        "2026-03-17": "2 weeks ago",
        "2026-01-31": "8 weeks ago",
        "2026-01-30": "2 months ago",
        "2024-04-01": "24 months ago",
        "2024-03-31": "2 years ago",
        "2026-04-02": "2026-04-02",
        "not a date": MISSING,
    }
    assert {k: fmt_ago(k, today) for k in cases} == cases
    assert fmt_ago(None, today) == MISSING
    assert fmt_ago(datetime(2026, 3, 28, 12), today) == fmt_ago(date(2026, 3, 28), today) == "3 days ago"


def test_plain_table_aligns_columns_and_keeps_one_line_per_row():
    from beton_pipeline.core.formatting import plain_table

    long = "Invited teammate 3+ times in their first 14 days, and industry: Fintech " * 3
    text = plain_table(
        ["id", "lift", "name"], [["sig_a", "12.50", long], ["b", None, "two\nlines\tand tab"]], right=["lift"]
    )
    assert text.splitlines() == [
        "id      lift  name",
        f"sig_a  12.50  {' '.join(long.split())}",
        f"b          {MISSING}  two lines and tab",
    ]
    assert text.splitlines()[1].endswith(" ".join(long.split()))  # never wrapped or cut, whatever the width
    assert plain_table(["a", "b"], []) == "a  b"


@given(st.lists(st.lists(st.text(alphabet="ab c\n\t|", max_size=6), min_size=3, max_size=3), max_size=6))
def test_plain_table_columns_start_at_the_same_offset_on_every_line(rows):
    from beton_pipeline.core.formatting import plain_table

    lines = plain_table(["x", "yy", "z"], rows).split("\n")
    assert len(lines) == len(rows) + 1
    start = lines[0].index("z")
    for line, row in zip(lines[1:], rows, strict=True):
        assert line[start:] == " ".join(row[2].split())
