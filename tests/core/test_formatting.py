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
