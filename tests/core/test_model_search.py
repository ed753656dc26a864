"""The lead-score model's C search (`core.model.search_penalty`, `walk_up`, `cv_log_loss`, `search_sample`)
and refit (`train_logistic`) against scikit-learn's `LogisticRegressionCV` over the whole grid and a plain
`LogisticRegression` refit."""

from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold, cross_val_score

from benchmarks.model_search import grid_reference as whole_grid
from benchmarks.model_search import synthetic_design
from beton_pipeline.core.model import (
    ModelConfig,
    ModelDataError,
    cv_log_loss,
    search_penalty,
    search_sample,
    search_size,
    train_logistic,
    walk_up,
)

CONFIG = ModelConfig()

DESIGNS = {
    # many weak features, 3 % converting: the CV loss is lowest at a middle C, so the walk stops early
    "weak_3pct": dict(n=4000, n_features=200, n_effects=40, effect=0.4, base_rate=0.02, seed=11),
    # a few strong features among noise, 10 % converting
    "strong_10pct": dict(n=3000, n_features=100, n_effects=6, effect=1.0, base_rate=0.10, seed=12),
    # the same shape, 20 % converting, with fewer accounts
    "strong_20pct": dict(n=1500, n_features=60, n_effects=4, effect=1.2, base_rate=0.20, seed=13),
}


@pytest.fixture(scope="module", params=list(DESIGNS))
def design(request):
    x, y = synthetic_design(**DESIGNS[request.param])
    return request.param, x, y, whole_grid(x, y, CONFIG)


# --- the walk over the grid ----------------------------------------------------------------------
def quasi_convex(draw_left, draw_right, low):
    """Non-increasing values down to `low`, then non-decreasing ones (plateaus allowed)."""
    left = low + np.cumsum(np.asarray(draw_left, dtype=np.float64)[::-1])[::-1]
    right = low + np.cumsum(np.asarray(draw_right, dtype=np.float64))
    return np.concatenate([left, [low], right])


steps = st.lists(st.sampled_from([0.0, 0.0, 0.5, 1.0, 3.0]), max_size=6)


@given(left=steps, right=steps, low=st.floats(0.01, 1.0), patience=st.integers(1, 3))
def test_walk_finds_the_first_minimum_of_a_curve_with_one_minimum(left, right, low, patience):
    values = quasi_convex(left, right, low)
    tried = walk_up(lambda i: values[i], len(values), patience)
    assert int(np.nanargmin(tried)) == int(np.argmin(values))
    reached = ~np.isnan(tried)
    n = int(reached.sum())
    assert reached[:n].all() and not reached[n:].any()  # a prefix of the grid, each value as given
    np.testing.assert_array_equal(tried[:n], values[:n])


@given(values=st.lists(st.sampled_from([0.1, 0.2, 0.3, 0.5]), min_size=1, max_size=9), patience=st.integers(1, 4))
def test_walk_stops_exactly_after_patience_rises(values, patience):
    values = np.asarray(values)
    tried = walk_up(lambda i: values[i], len(values), patience)
    n = int((~np.isnan(tried)).sum())
    # replay: the count of consecutive values above the running minimum, reset by a new minimum or a tie
    best, rises, stop = values[0], 0, len(values)
    for i, v in enumerate(values):
        if v < best:
            best, rises = v, 0
        elif v > best:
            rises += 1
            if rises == patience:
                stop = i + 1
                break
        else:
            rises = 0
    assert n == stop
    assert np.nanmin(tried) == values[:n].min()
    # with patience as long as the grid nothing is skipped: the whole grid's first minimum
    everything = walk_up(lambda i: values[i], len(values), len(values))
    assert int(np.nanargmin(everything)) == int(np.argmin(values))


def test_walk_refuses_zero_patience():
    with pytest.raises(ValueError, match="patience"):
        walk_up(lambda i: 0.0, 3, 0)


# --- against scikit-learn ------------------------------------------------------------------------
def test_cv_log_loss_equals_cross_val_score_and_the_whole_grids_scores(design):
    _, x, y, grid = design
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    folds = list(cv.split(np.zeros(len(y)), y))
    exact = replace(CONFIG, cv_tol=1e-4)
    whole = -grid.scores_[:, 0, :].mean(axis=0)  # folds × Cs → mean held-out log loss per C
    for c, loss in zip(grid.Cs_, whole, strict=True):
        estimator = LogisticRegression(C=c, l1_ratio=1.0, solver="liblinear", max_iter=5000, random_state=0)
        expected = -cross_val_score(estimator, x, y, cv=cv, scoring="neg_log_loss").mean()
        assert cv_log_loss(x, y, c, folds, exact) == pytest.approx(expected, rel=0, abs=1e-9)
        # LogisticRegressionCV draws liblinear's seed for each C from one stream per fold, so its fits
        # stop at slightly different points: equal to about the solver's tolerance (1e-4), not to 1e-9
        assert cv_log_loss(x, y, c, folds, exact) == pytest.approx(loss, rel=0, abs=1e-4)


def test_search_picks_the_whole_grids_c(design):
    label, x, y, grid = design
    search = search_penalty(x, y, CONFIG)
    assert search.c == pytest.approx(float(np.ravel(grid.C_)[0]), rel=1e-12), label
    assert search.cs == tuple(sorted(CONFIG.cs)) and search.n_folds == 5
    # the C walked past are the largest ones and none of them would have been better
    full = -grid.scores_[:, 0, :].mean(axis=0)
    tried = np.asarray(search.cv_log_loss)
    assert np.isnan(tried[search.n_tried :]).all() and not np.isnan(tried[: search.n_tried]).any()
    np.testing.assert_allclose(tried[: search.n_tried], full[: search.n_tried], rtol=0, atol=2e-3)  # tol 1e-3


def test_search_stops_early_where_the_loss_turns_up():
    x, y = synthetic_design(**DESIGNS["weak_3pct"])
    search = search_penalty(x, y, CONFIG)
    assert search.n_tried < len(CONFIG.cs)  # the walk skipped the largest C(s): this test can fail
    last = np.asarray(search.cv_log_loss)[search.n_tried - 1]
    assert last > min(search.cv_log_loss[: search.n_tried])


def test_refit_equals_logistic_regression_at_the_chosen_c(design):
    _, x, y, grid = design
    fit = train_logistic(x, y, CONFIG)
    reference = LogisticRegression(C=fit.search.c, l1_ratio=1.0, solver="liblinear", max_iter=5000, random_state=0)
    reference.fit(x, y)
    np.testing.assert_allclose(fit.estimator.coef_, reference.coef_, rtol=0, atol=1e-9)
    np.testing.assert_allclose(fit.estimator.intercept_, reference.intercept_, rtol=0, atol=1e-9)
    # and, at the same C, the model the whole grid refitted (liblinear ignores its initial coefficients)
    np.testing.assert_allclose(fit.estimator.coef_, grid.coef_, rtol=0, atol=1e-9)
    assert np.count_nonzero(fit.estimator.coef_) > 0


# --- tiny training sets --------------------------------------------------------------------------
@pytest.mark.parametrize("n_pos", [2, 3, 4, 5, 6])
def test_tiny_folds_never_error(n_pos):
    rng = np.random.default_rng(n_pos)
    n = 40
    x = sp.csr_matrix((rng.random((n, 6)) < 0.3).astype(np.float64))
    y = np.zeros(n, np.int64)
    y[rng.choice(n, n_pos, replace=False)] = 1
    fit = train_logistic(x, y, CONFIG)
    assert fit.search.n_folds == min(5, n_pos)
    assert fit.search.c in fit.search.cs and 1 <= fit.search.n_tried <= len(CONFIG.cs)
    assert float(fit.search.c) == pytest.approx(float(np.ravel(whole_grid(x, y, CONFIG, tol=1e-3).C_)[0]), rel=1e-12)


@pytest.mark.parametrize("n_pos", [0, 1, 39, 40])
def test_fewer_than_two_of_a_class_is_a_clear_error(n_pos):
    x = sp.csr_matrix(np.eye(40, 5))
    y = np.r_[np.ones(n_pos, np.int64), np.zeros(40 - n_pos, np.int64)]
    with pytest.raises(ModelDataError, match="need at least 2 of each"):
        train_logistic(x, y, CONFIG)


def test_no_feature_is_a_clear_error():
    y = np.r_[np.ones(5, np.int64), np.zeros(20, np.int64)]
    with pytest.raises(ModelDataError, match="no candidate feature"):
        train_logistic(sp.csr_matrix((25, 0)), y, CONFIG)


def test_search_is_deterministic():
    x, y = synthetic_design(**DESIGNS["strong_20pct"])
    first, second = search_penalty(x, y, CONFIG), search_penalty(x, y, CONFIG)
    assert first.c == second.c and first.n_folds == second.n_folds
    assert np.array_equal(np.asarray(first.cv_log_loss), np.asarray(second.cv_log_loss), equal_nan=True)


# --- the search on a stratified subsample (`search_max_accounts`) ----------------------------------
@given(
    n_pos=st.integers(0, 400),
    n_neg=st.integers(0, 2000),
    max_rows=st.integers(20, 1500),
    min_per_class=st.integers(0, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_search_sample_is_proportional_distinct_and_seeded(n_pos, n_neg, max_rows, min_per_class, seed):
    y = np.random.default_rng(seed).permutation(np.r_[np.ones(n_pos, np.int64), np.zeros(n_neg, np.int64)])
    rows = search_sample(y, max_rows, seed, min_per_class)
    np.testing.assert_array_equal(rows, search_sample(y, max_rows, seed, min_per_class))  # deterministic
    n = len(y)
    if n <= max_rows:
        np.testing.assert_array_equal(rows, np.arange(n))
        return
    assert len(rows) == max_rows and np.all(np.diff(rows) > 0) and rows[0] >= 0 and rows[-1] < n
    taken = np.array([np.sum(y[rows] == 0), np.sum(y[rows] == 1)])
    counts = np.array([n_neg, n_pos])
    proportional = max_rows * counts / n
    floor = np.minimum(counts, min_per_class)
    if np.all(np.floor(proportional) >= floor):  # the floor does not bind: proportional to within one row
        assert np.all(np.abs(taken - proportional) < 1), (taken, proportional)
    else:
        assert np.all(taken >= floor) and np.all(taken <= counts)


def test_search_sample_draws_other_rows_with_another_seed_and_keeps_the_share():
    y = (np.random.default_rng(3).random(5000) < 0.07).astype(np.int64)
    first, second = search_sample(y, 1000, 0), search_sample(y, 1000, 1)
    assert not np.array_equal(first, second)
    for rows in (first, second):  # the rate of the subsample is the rate of all rows, to one row in 1,000
        assert abs(y[rows].sum() - 1000 * y.mean()) < 1


def test_search_sample_keeps_enough_of_a_rare_class_for_the_folds():
    y = np.r_[np.ones(6, np.int64), np.zeros(9994, np.int64)]  # 6 in 10,000: proportional would keep 1 of 2,000
    rows = search_sample(y, 2000, 0, min_per_class=5)
    assert len(rows) == 2000 and y[rows].sum() == 5


def test_search_sample_refuses_a_bound_below_the_floors():
    with pytest.raises(ValueError, match="cannot hold"):
        search_sample(np.r_[np.ones(50), np.zeros(50)], 9, 0, min_per_class=5)


@pytest.mark.parametrize("bound", [None, 1500, 10**9])
def test_at_or_below_the_bound_the_search_is_the_one_on_all_rows(bound):
    x, y = synthetic_design(**DESIGNS["strong_20pct"])  # 1,500 accounts
    everything = search_penalty(x, y, replace(CONFIG, search_max_accounts=None))
    bounded = search_penalty(x, y, replace(CONFIG, search_max_accounts=bound))
    assert bounded.c == everything.c and not bounded.subsampled
    assert bounded.n_searched == bounded.n_training == len(y)
    np.testing.assert_array_equal(np.asarray(bounded.cv_log_loss), np.asarray(everything.cv_log_loss))


# A problem large enough that the bound matters: 28,000 training accounts (about 9 % converting), searched on
# the bound of 8,000 raised to keep 1,000 conversions (about 11,000). The subsample's C must be one the whole
# grid on all rows would accept: within one grid step of the whole grid's C, and not worse on the whole grid's
# own folds by more than two standard errors of the per-fold differences (the fold-to-fold noise that already
# separates neighbouring grid points), and its refit's test log loss within 0.5 % of the whole grid's refit.
LARGE = dict(n=40000, n_features=100, n_effects=10, effect=0.6, base_rate=0.08, seed=51)
SEARCH_BOUND = 8000


@pytest.fixture(scope="module")
def large_problem():
    x, y = synthetic_design(**LARGE)
    cut = int(0.7 * len(y))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def test_search_size_keeps_enough_of_the_rarer_outcome():
    y = np.r_[np.ones(300, np.int64), np.zeros(9700, np.int64)]  # 3 % converting
    config = replace(CONFIG, search_max_accounts=2000, search_min_per_class=100)
    assert search_size(y, config) == 3334  # ⌈100 · 10,000 / 300⌉: 2,000 would hold only 60 conversions
    assert search_size(y, replace(config, search_min_per_class=10)) == 2000
    assert search_size(y, replace(config, search_min_per_class=300)) is None  # every conversion is needed
    assert search_size(y, replace(config, search_max_accounts=None)) is None
    assert search_size(1 - y, config) == 3334  # the rarer outcome, whichever it is


def test_above_the_bound_the_search_runs_on_the_stratified_subsample(large_problem):
    x, y, _, _ = large_problem
    config = replace(CONFIG, search_max_accounts=SEARCH_BOUND)
    search = search_penalty(x, y, config)
    size = search_size(y, config)
    assert SEARCH_BOUND < size < len(y)
    assert search.subsampled and search.n_searched == size and search.n_training == len(y)
    rows = search_sample(y, size, config.random_state, config.cv_folds)
    assert y[rows].sum() >= config.search_min_per_class
    on_rows = search_penalty(x[rows], y[rows], replace(config, search_max_accounts=None))
    assert (search.c, search.n_folds) == (on_rows.c, on_rows.n_folds)
    np.testing.assert_array_equal(np.asarray(search.cv_log_loss), np.asarray(on_rows.cv_log_loss))


def test_above_the_bound_the_chosen_c_is_one_the_whole_grid_accepts(large_problem):
    x, y, x_test, y_test = large_problem
    fit = train_logistic(x, y, replace(CONFIG, search_max_accounts=SEARCH_BOUND))
    assert fit.search.subsampled
    grid = whole_grid(x, y, CONFIG)
    cs = [float(c) for c in grid.Cs_]
    fold_loss = -grid.scores_[:, 0, :]
    best, chosen = int(np.argmin(fold_loss.mean(axis=0))), cs.index(fit.search.c)
    assert abs(chosen - best) <= 1, (fit.search.c, cs[best])
    worse = fold_loss[:, chosen] - fold_loss[:, best]
    assert worse.mean() <= 2 * worse.std(ddof=1) / np.sqrt(len(worse)) + 1e-12, worse
    ours = log_loss(y_test, fit.estimator.predict_proba(x_test)[:, 1])
    theirs = log_loss(y_test, grid.predict_proba(x_test)[:, 1])
    assert ours <= theirs * 1.005, (ours, theirs)
    # the refit is on every training row
    reference = LogisticRegression(C=fit.search.c, l1_ratio=1.0, solver="liblinear", max_iter=5000, random_state=0)
    np.testing.assert_allclose(fit.estimator.coef_, reference.fit(x, y).coef_, rtol=0, atol=1e-9)


def test_the_subsampled_search_is_deterministic(large_problem):
    x, y, _, _ = large_problem
    config = replace(CONFIG, search_max_accounts=SEARCH_BOUND)
    first, second = search_penalty(x, y, config), search_penalty(x, y, config)
    assert first.c == second.c
    np.testing.assert_array_equal(np.asarray(first.cv_log_loss), np.asarray(second.cv_log_loss))
