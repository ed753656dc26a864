"""The lead-score model reuses the last fit when its training data and settings are the same
(`training_key`): the same backtest as a new fit, no fit at all; anything the fit depends on changes the key."""

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from polars.testing import assert_frame_equal

from beton_pipeline.core import model
from beton_pipeline.core.candidates import FeatureFrames
from beton_pipeline.core.model import ModelConfig, backtest_lead_score, training_key
from tests.core.test_model import ENABLED, SPEC, synthetic_frames

CONFIG = ModelConfig(min_candidate_support=10, holdout_fraction=0.3)


@pytest.fixture(scope="module")
def frames():
    return synthetic_frames()


@pytest.fixture(scope="module")
def first(frames):
    return backtest_lead_score(frames, ENABLED, SPEC, CONFIG)


def _same_backtest(a, b) -> None:
    np.testing.assert_array_equal(a.model.coefficients, b.model.coefficients)
    assert a.model.intercept == b.model.intercept and a.model.regularization_c == b.model.regularization_c
    for name in ("metrics", "calibration", "confusion", "test_scores", "features"):
        assert_frame_equal(getattr(a, name), getattr(b, name))
    assert a.penalty_search == b.penalty_search


def test_a_new_fit_on_the_same_data_is_the_same_fit(frames, first):
    """What makes reuse sound: liblinear with a fixed random_state fits the same data to the same bits."""
    again = backtest_lead_score(frames, ENABLED, SPEC, CONFIG)
    assert not again.fit_reused and again.fit.key == first.fit.key
    _same_backtest(first, again)


def test_the_last_fit_of_the_same_training_data_is_reused(frames, first, monkeypatch):
    def no_fit(*args, **kwargs):
        raise AssertionError("fitted again")

    monkeypatch.setattr(model, "train_logistic", no_fit)
    reused = backtest_lead_score(frames, ENABLED, SPEC, CONFIG, last_fit=first.fit)
    assert reused.fit_reused and reused.fit is first.fit
    _same_backtest(first, reused)


def test_other_training_data_or_settings_are_fitted_anew(frames, first):
    """A training account's outcome flipped, or another setting: another key, a new fit (not the kept one)."""
    train_ids = set(first.test_scores["account_id"])
    flip = next(a for a in frames.accounts["account_id"] if a not in train_ids)
    accounts = frames.accounts.with_columns(
        pl.when(pl.col("account_id") == flip)
        .then(~pl.col("converted"))
        .otherwise(pl.col("converted"))
        .alias("converted")
    )
    flipped = backtest_lead_score(
        FeatureFrames(accounts, frames.events, frames.properties, frames.intent), ENABLED, SPEC, CONFIG, first.fit
    )
    assert not flipped.fit_reused and flipped.fit.key != first.fit.key
    other = backtest_lead_score(
        frames, ENABLED, SPEC, ModelConfig(min_candidate_support=10, holdout_fraction=0.3, cv_folds=3), first.fit
    )
    assert not other.fit_reused and other.fit.key != first.fit.key


def test_the_key_reads_the_matrix_in_canonical_form_and_every_input():
    rng = np.random.default_rng(3)
    dense = (rng.random((40, 6)) < 0.3) * rng.integers(1, 4, (40, 6))
    x, y, keys = sp.csr_matrix(dense.astype(float)), (rng.random(40) < 0.4).astype(int), tuple("abcdef")
    key = training_key(x, y, keys, CONFIG)
    rows, cols = dense.nonzero()
    order = rng.permutation(len(rows))  # the same entries, unsorted and with each value split in two
    values = dense[rows, cols].astype(float)
    split = sp.csr_matrix(
        (np.concatenate([values[order] / 2, values[order] / 2]), (np.tile(rows[order], 2), np.tile(cols[order], 2))),
        shape=dense.shape,
    )
    assert training_key(split, y, keys, CONFIG) == key
    assert training_key(x, 1 - y, keys, CONFIG) != key
    assert training_key(x, y, tuple("abcdeg"), CONFIG) != key
    assert training_key(x[:-1], y[:-1], keys, CONFIG) != key
    assert training_key(x, y, keys, ModelConfig(cv_folds=3)) != key
