"""Scoring: decay, raw scores, calibration against statsmodels, deciles, and the health weighting (known
cases, a brute-force run finder, and hypothesis invariants: a broken signal never contributes, the factor
never rises from healthy to degrading to broken)."""

from datetime import date, datetime, timedelta

import numpy as np
import polars as pl
import pytest
import statsmodels.api as sm
from hypothesis import given, settings
from hypothesis import strategies as st

from beton_pipeline.core.scoring import (
    ScoringConfig,
    calibration_observations,
    calibration_table,
    contributions,
    fit_calibration,
    health_runs,
    raw_scores,
    weigh_by_health,
)

STATES = ("healthy", "insufficient_data", "degrading", "broken")


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


# ------------------------------------------------------------------------------------------------
# Health feeds the scores
# ------------------------------------------------------------------------------------------------
D0 = date(2026, 5, 1)


def _health(states: dict[str, list[str | None]]) -> pl.DataFrame:
    """Health rows from per-signal state lists (day i = D0 + i; None = no row that day)."""
    rows = [
        (D0 + timedelta(days=i), sid, state)
        for sid, seq in states.items()
        for i, state in enumerate(seq)
        if state is not None
    ]
    return pl.DataFrame(rows, schema={"day": pl.Date, "signal_id": pl.String, "health": pl.String}, orient="row")


def _contribs(days: list[date], signal_ids: list[str], values: list[float]) -> pl.DataFrame:
    return pl.DataFrame(
        {"obs_id": list(range(len(days))), "day": days, "signal_id": signal_ids, "contribution": values},
        schema={"obs_id": pl.UInt32, "day": pl.Date, "signal_id": pl.String, "contribution": pl.Float64},
    )


def test_weights_follow_the_health_of_the_day_scored_and_say_why():
    health = _health(
        {
            "s": ["healthy", "degrading", "degrading", "broken", "healthy"],
            "t": ["insufficient_data", "insufficient_data", None, "healthy", "healthy"],
        }
    )
    days = [D0 + timedelta(days=i) for i in range(5)]
    got = weigh_by_health(_contribs(days + days, ["s"] * 5 + ["t"] * 5, [0.8] * 10), health, 0.5).sort("obs_id")
    assert got["weight_factor"].to_list() == [1.0, 0.5, 0.5, 0.0, 1.0] + [1.0] * 5
    np.testing.assert_allclose(got["contribution"], [0.8, 0.4, 0.4, 0.0, 0.8] + [0.8] * 5, rtol=0, atol=0)
    assert got["weight_note"].to_list()[:5] == [
        None,
        "weight halved: degrading since 2026-05-02",
        "weight halved: degrading since 2026-05-02",
        "weight zero: broken since 2026-05-04",
        None,
    ]
    assert got["weight_note"].to_list()[5:] == [None] * 5  # insufficient_data and a day without a row: full weight
    assert got["health"].to_list()[5:] == ["insufficient_data", "insufficient_data", None, "healthy", "healthy"]
    other = weigh_by_health(_contribs([days[1]], ["s"], [1.0]), health, 0.25)
    assert other["contribution"].to_list() == [0.25]
    assert other["weight_note"].to_list() == ["weight × 0.25: degrading since 2026-05-02"]
    assert weigh_by_health(_contribs([days[1]], ["s"], [1.0]), health, 1.0)["weight_note"].to_list() == [None]


def test_config_rejects_a_degrading_weight_outside_0_1():
    assert ScoringConfig().degrading_weight == 0.5
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError):
            ScoringConfig(degrading_weight=bad)


def _runs_by_hand(health: pl.DataFrame) -> dict[tuple[date, str], date]:
    since: dict[tuple[date, str], date] = {}
    for sid in set(health["signal_id"]):
        rows = sorted((r["day"], r["health"]) for r in health.iter_rows(named=True) if r["signal_id"] == sid)
        start = None
        for i, (day, state) in enumerate(rows):
            if i == 0 or rows[i - 1][1] != state:
                start = day
            since[(day, sid)] = start
    return since


health_sequences = st.dictionaries(
    st.sampled_from(["a", "b", "c"]),
    st.lists(st.one_of(st.none(), st.sampled_from(STATES)), min_size=1, max_size=30),
    min_size=1,
)


@settings(max_examples=150, deadline=None)
@given(health_sequences)
def test_health_since_is_the_start_of_the_run_of_rows_in_the_same_state(states):
    health = _health(states)
    got = health_runs(health)
    want = _runs_by_hand(health)
    assert got.height == health.height
    assert {(r["day"], r["signal_id"]): r["health_since"] for r in got.iter_rows(named=True)} == want


@settings(max_examples=200, deadline=None)
@given(
    health_sequences,
    st.floats(0, 1),
    st.lists(st.tuples(st.integers(0, 29), st.sampled_from(["a", "b", "c"]), st.floats(-5, 5)), max_size=40),
)
def test_a_broken_signal_never_contributes_and_the_factor_follows_the_state(states, degrading_weight, picks):
    health = _health(states)
    days = [D0 + timedelta(days=d) for d, _, _ in picks]
    contribs = _contribs(days, [s for _, s, _ in picks], [v for _, _, v in picks])
    got = weigh_by_health(contribs, health, degrading_weight).sort("obs_id")
    state_of = {(r["day"], r["signal_id"]): r["health"] for r in health.iter_rows(named=True)}
    factor_of = {"broken": 0.0, "degrading": degrading_weight}
    for row, (offset, sid, value) in zip(got.iter_rows(named=True), picks, strict=True):
        state = state_of.get((D0 + timedelta(days=offset), sid))
        assert row["health"] == state
        assert row["weight_factor"] == factor_of.get(state, 1.0)
        assert row["contribution"] == value * factor_of.get(state, 1.0)
        if state == "broken":
            assert row["contribution"] == 0
        assert (row["weight_note"] is not None) == (row["weight_factor"] < 1)


@settings(max_examples=100, deadline=None)
@given(st.floats(0, 1), st.lists(st.floats(0, 10), min_size=1, max_size=10))
def test_weights_are_monotone_in_the_state(degrading_weight, values):
    """Moving a signal from healthy (or insufficient_data) to degrading to broken never raises its weight, nor
    the raw score of an account whose signals have positive weights (log lift > 0, as every enabled signal)."""
    n = len(values)
    obs = pl.DataFrame({"obs_id": [0] * n}, schema={"obs_id": pl.UInt32}).unique()
    totals = []
    for state in STATES:
        health = _health({f"s{i}": [state] for i in range(n)})
        weighted = weigh_by_health(_contribs([D0] * n, [f"s{i}" for i in range(n)], values), health, degrading_weight)
        weighted = weighted.with_columns(pl.lit(0, dtype=pl.UInt32).alias("obs_id"))
        totals.append((weighted["weight_factor"].to_list(), raw_scores(obs, weighted)[0]))
    (f_h, r_h), (f_i, r_i), (f_d, r_d), (f_b, r_b) = totals
    assert f_h == f_i and r_h == r_i
    assert all(h >= d >= b == 0 for h, d, b in zip(f_h, f_d, f_b, strict=True))
    assert r_h >= r_d >= r_b == 0
