"""Scoring: decay, raw scores, calibration against statsmodels, deciles."""

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import statsmodels.api as sm

from beton_pipeline.core.scoring import (
    calibration_observations,
    calibration_table,
    contributions,
    fit_calibration,
    raw_scores,
)


def test_contribution_halves_every_half_life_and_ignores_later_firings():
    t0 = datetime(2025, 1, 1)
    firings = pl.DataFrame(
        {"account_id": ["a", "a", "b"], "signal_id": ["s1", "s2", "s1"], "fired_at": [t0, t0 + timedelta(days=20), t0]}
    )
    weights = pl.DataFrame({"signal_id": ["s1", "s2"], "weight": [np.log(2.0), np.log(3.0)]})
    obs = pl.DataFrame(
        {"obs_id": [0, 1], "account_id": ["a", "b"], "observed_at": [t0 + timedelta(days=14), t0 + timedelta(days=28)]}
    )
    c = contributions(firings, weights, obs, half_life_days=14.0)
    assert c.height == 2  # s2 fired after the observation
    np.testing.assert_allclose(
        sorted(c["contribution"].to_list()), sorted([np.log(2) * 0.5, np.log(2) * 0.25]), rtol=1e-12
    )
    np.testing.assert_allclose(raw_scores(obs, c), [np.log(2) * 0.5, np.log(2) * 0.25], rtol=1e-12)


def test_calibration_matches_statsmodels_logit():
    rng = np.random.default_rng(1)
    raw = rng.gamma(1.0, 1.0, 4000)
    age = rng.integers(1, 45, 4000)
    p = 1 / (1 + np.exp(-(-3 + 0.9 * raw + 0.2 * np.log1p(age))))
    y = rng.random(4000) < p
    cal = fit_calibration(raw, age, y)
    ref = sm.Logit(y.astype(float), sm.add_constant(np.column_stack([raw, np.log1p(age)]))).fit(disp=0)
    np.testing.assert_allclose([cal.intercept, cal.coef_raw, cal.coef_age], ref.params, rtol=1e-9)
    np.testing.assert_allclose(cal.probability(raw, age), ref.predict(), rtol=1e-9)


def test_calibration_with_one_class_is_the_base_rate():
    cal = fit_calibration(np.zeros(10), np.ones(10), np.zeros(10, bool))
    assert cal.coef_raw == 0 and cal.probability([5.0], [3])[0] < 1e-5


def test_observations_stop_at_conversion_and_window_end():
    t0 = datetime(2025, 1, 1)
    accounts = pl.DataFrame(
        {
            "account_id": ["a", "b"],
            "started_at": [t0, t0],
            "converted_at": [t0 + timedelta(days=5), None],
            "converted": [True, False],
            "conversion_window_days": [60, 60],
        }
    )
    obs = calibration_observations(accounts, (1, 3, 7, 14, 90))
    assert obs.filter(pl.col("account_id") == "a")["age_days"].to_list() == [1, 3]
    assert obs.filter(pl.col("account_id") == "b")["age_days"].to_list() == [1, 3, 7, 14]


def test_calibration_table_deciles():
    rng = np.random.default_rng(2)
    pred = rng.random(1000)
    obs = rng.random(1000) < pred
    table = calibration_table(pred, obs)
    assert table.height == 10 and table["n"].sum() == 1000
    assert (table["observed_ci_low"] <= table["observed_rate"]).all() and (
        table["observed_rate"] <= table["observed_ci_high"]
    ).all()
    assert np.corrcoef(table["predicted_rate"], table["observed_rate"])[0, 1] > 0.95
