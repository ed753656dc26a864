"""Candidate keys: pair keys and their parts, the candidate matrix (against a row-by-row reference), its row subsets."""

import numpy as np
import polars as pl
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from beton_pipeline.core.candidates import (
    AUTO,
    CANDIDATE_SCHEMA,
    COUNT_GRID_RATIO,
    DENSE_COUNT_LIMIT,
    CandidateMatrix,
    FeatureFrames,
    FeatureSpec,
    candidate_hits,
    candidate_matrix,
    count_grid,
    pair_key,
    pair_parts,
    signal_id,
)
from tests.core.reference_candidates import reference_hits

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


# --- the sparse candidate matrix against a row-by-row reference ---------------------------------
WINDOWS = (3, 14)
COUNTS = st.one_of(st.none(), st.integers(0, 30))
PROPERTY_KEYS = {
    "account_id": pl.String,
    "event_name": pl.String,
    "property_name": pl.String,
    "property_value": pl.String,
}
"""The columns of `FeatureFrames.properties` before its count columns."""
INTENT_SCHEMA = {
    "account_id": pl.String,
    "signal_type": pl.String,
    "n_before_start": pl.Int64,
    "n_before_window_end": pl.Int64,
}


@st.composite
def feature_frames(draw) -> FeatureFrames:
    """Small frames with every kind of candidate: events (some of unknown accounts, some excluded, null
    counts), property values with `&` and `=` in them, attributes with nulls and a numeric column, intent."""
    n = draw(st.integers(0, 12))
    ids = [f"a{i}" for i in range(n)]
    accounts = pl.DataFrame(
        {
            "account_id": ids,
            "industry": [draw(st.sampled_from([None, "Fintech", "Retail"])) for _ in ids],
            "employee_band": [draw(st.sampled_from([None, 10, 50])) for _ in ids],
        },
        schema={"account_id": pl.String, "industry": pl.String, "employee_band": pl.Int64},
    )
    owners = ids + ["unknown"]
    event_rows = draw(
        st.lists(
            st.tuples(
                st.sampled_from(owners), st.sampled_from(["signup", "invite", "$pageview", "noise"]), COUNTS, COUNTS
            ),
            max_size=30,
            unique_by=lambda r: (r[0], r[1]),
        )
    )
    events = pl.DataFrame(
        [(a, e, c3, c14) for a, e, c3, c14 in event_rows],
        schema={"account_id": pl.String, "event_name": pl.String, "n_first_3d": pl.Int64, "n_first_14d": pl.Int64},
        orient="row",
    )
    property_rows = draw(
        st.lists(
            st.tuples(st.sampled_from(owners), st.sampled_from(["/a&b", "/pricing", "x=y"]), COUNTS, COUNTS),
            max_size=20,
            unique_by=lambda r: (r[0], r[1]),
        )
    )
    properties = pl.DataFrame(
        [(a, "$pageview", "$pathname", v, c3, c14) for a, v, c3, c14 in property_rows],
        schema={**PROPERTY_KEYS, "n_first_3d": pl.Int64, "n_first_14d": pl.Int64},
        orient="row",
    )
    intent_rows = draw(
        st.lists(
            st.tuples(st.sampled_from(owners), st.sampled_from(["funding", "hiring"]), COUNTS, COUNTS),
            max_size=10,
            unique_by=lambda r: (r[0], r[1]),
        )
    )
    intent = pl.DataFrame(intent_rows, schema=INTENT_SCHEMA, orient="row")
    return FeatureFrames(accounts=accounts, events=events, properties=properties, intent=intent)


def _fired(matrix: CandidateMatrix) -> set[tuple[str, str]]:
    coo = matrix.matrix.tocoo()
    keys = matrix.candidates.get_column("key").to_list()
    return {(str(matrix.account_ids[r]), keys[c]) for r, c in zip(coo.row, coo.col, strict=True)}


@settings(max_examples=150, deadline=None)
@given(feature_frames(), st.sampled_from([AUTO, (1, 2, 5), (4,)]), st.sampled_from([(), ("noise",)]))
def test_the_candidate_matrix_is_the_row_by_row_reference(frames, thresholds, excluded):
    spec = FeatureSpec(WINDOWS, thresholds, 14, 90, excluded)
    built = candidate_matrix(frames, spec)
    hits, described = reference_hits(frames, spec)
    assert _fired(built) == hits
    assert built.account_ids.tolist() == frames.accounts.get_column("account_id").to_list()
    assert built.matrix.shape == (frames.accounts.height, len(described))
    assert set(built.matrix.data.tolist()) <= {1.0}
    assert built.candidates.columns == [*CANDIDATE_SCHEMA, "signal_id"]
    assert built.candidates.drop("signal_id").to_dicts() == [described[k] for k in sorted(described)]
    assert built.candidates.get_column("signal_id").to_list() == [signal_id(k) for k in sorted(described)]
    long = candidate_hits(frames, spec)
    assert set(long.select("account_id", "key").iter_rows()) == hits and long.height == len(hits)


@settings(max_examples=100, deadline=None)
@given(feature_frames(), st.data())
def test_keys_keep_only_those_candidates_with_the_same_hits(frames, data):
    spec = FeatureSpec(WINDOWS, AUTO, 14, 90)
    everything = candidate_matrix(frames, spec)
    all_keys = everything.candidates.get_column("key").to_list()
    keys = data.draw(st.lists(st.sampled_from(all_keys), unique=True) if all_keys else st.just([]))
    some = candidate_matrix(frames, spec, keys=[*keys, "event:never:first_3d:>=1"])
    assert some.candidates.get_column("key").to_list() == sorted(keys)
    assert _fired(some) == {(a, k) for a, k in _fired(everything) if k in set(keys)}
    assert some.candidates.equals(everything.candidates.filter(pl.col("key").is_in(keys)))


def test_no_rows_give_no_candidates_and_keep_the_accounts():
    empty = FeatureFrames(
        accounts=pl.DataFrame({"account_id": ["a", "b"]}),
        events=pl.DataFrame(schema={"account_id": pl.String, "event_name": pl.String, "n_first_3d": pl.Int64}),
        properties=pl.DataFrame(schema={**PROPERTY_KEYS, "n_first_3d": pl.Int64}),
        intent=pl.DataFrame(schema=INTENT_SCHEMA),
    )
    built = candidate_matrix(empty, FeatureSpec((3,), AUTO, 3, 90))
    assert built.matrix.shape == (2, 0) and built.candidates.height == 0
    assert built.account_ids.tolist() == ["a", "b"]
