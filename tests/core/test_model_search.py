"""The lead-score model's C search (`core.model.search_penalty`, `walk_up`, `cv_log_loss`) and refit
(`train_logistic`) against scikit-learn's `LogisticRegressionCV` over the whole grid and a plain
`LogisticRegression` refit."""

from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score

from benchmarks.model_search import grid_reference as whole_grid
from benchmarks.model_search import synthetic_design
from beton_pipeline.core.model import (
    ModelConfig,
    ModelDataError,
    cv_log_loss,
    search_penalty,
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
