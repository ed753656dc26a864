"""Candidate keys: pair keys and their parts, the candidate matrix's row subsets."""

import numpy as np
import polars as pl
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from beton_pipeline.core.candidates import (
    COUNT_GRID_RATIO,
    DENSE_COUNT_LIMIT,
    CandidateMatrix,
    count_grid,
    pair_key,
    pair_parts,
)

KEY = st.text(alphabet="ab&:=/>1", min_size=1, max_size=12)


def test_pair_parts_splits_on_the_ampersand_whose_halves_are_known():
    known = {"event:x:first_7d:>=1", "property:$pageview:$current_url=/a&b"}
    assert pair_parts("pair:event:x:first_7d:>=1&property:$pageview:$current_url=/a&b", known) == (
        "event:x:first_7d:>=1",
        "property:$pageview:$current_url=/a&b",
    )
    assert pair_parts("pair:unknown&other", known) is None
    assert pair_parts("pair:event:x:first_7d:>=1", known) is None  # no second part


@given(KEY, KEY)
def test_pair_parts_round_trips_pair_key_even_with_ampersands_in_the_keys(a, b):
    if a == b:
        return
    assert pair_parts(pair_key(a, b), {a, b}) == (min(a, b), max(a, b))
    assert pair_key(a, b) == pair_key(b, a)


def test_take_rows_keeps_the_candidates_and_the_chosen_accounts():
    matrix = CandidateMatrix(
        account_ids=np.array(["a", "b", "c"]),
        candidates=pl.DataFrame({"key": ["k1", "k2"]}),
        matrix=sp.csr_matrix(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])),
    )
    sub = matrix.take_rows(np.array([0, 2]))
    assert sub.account_ids.tolist() == ["a", "c"]
    assert sub.matrix.toarray().tolist() == [[1.0, 0.0], [1.0, 1.0]]
    assert sub.candidates.equals(matrix.candidates)


@given(st.integers(0, 100_000))
def test_count_grid_is_every_small_integer_then_geometric_and_never_above_the_data(max_count):
    grid = count_grid(max_count)
    assert list(grid) == sorted(set(grid)) and all(1 <= t <= max_count for t in grid)
    assert grid[:DENSE_COUNT_LIMIT] == tuple(range(1, min(max_count, DENSE_COUNT_LIMIT) + 1))
    tail = np.array(grid[DENSE_COUNT_LIMIT - 1 :], dtype=float)
    if len(tail) > 1:  # about 25 % apart, so the largest count is never more than a step above the last point
        assert np.all(tail[1:] / tail[:-1] <= COUNT_GRID_RATIO + 0.1)
    if max_count > DENSE_COUNT_LIMIT:
        assert max_count / grid[-1] < COUNT_GRID_RATIO + 0.1
    assert count_grid(max_count + 1)[: len(grid)] == grid  # the same points whatever the data's largest count
