"""Signal health rules: known cases, window counts, and the false-alarm rate under repeated daily looks."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from beton_pipeline.core.monitoring import (
    HealthConfig,
    assess_health,
    rolling_window_counts,
    simulate_false_alarms,
    window_counts,
)


def test_rules_on_known_cases():
    cfg = HealthConfig(alpha=0.05, looks_per_year=365, min_fired=30, min_conversions=10, min_lift=1.3)
    # healthy: window lift ~ reference; insufficient: 20 accounts; degrading: lift 1.0 vs reference 3.0 with plenty of data;
    # broken: lift 0.5, far below min_lift
    a = np.array([60, 5, 100, 50])
    n1 = np.array([300, 20, 1000, 1000])
    c = np.array([80, 50, 800, 800])
    n2 = np.array([1000, 1000, 8000, 8000])
    ref = np.array([2.5, 2.5, 3.0, 2.5])
    ref_se = np.array([0.1, 0.1, 0.05, 0.1])
    result = assess_health(a, n1, c, n2, ref, ref_se, cfg)
    assert list(result.health) == ["healthy", "insufficient_data", "degrading", "broken"]
    np.testing.assert_allclose(result.lift, (a / n1) / (c / n2), rtol=1e-12)


def test_katz_interval_matches_the_formula():
    a, n1, c, n2 = 40, 400, 90, 3600
    result = assess_health([a], [n1], [c], [n2], [2.0], [0.1])
    se = np.sqrt(1 / a - 1 / n1 + 1 / c - 1 / n2)
    rr = (a / n1) / (c / n2)
    np.testing.assert_allclose(result.lift_ci_low[0], rr * np.exp(-1.959963984540054 * se), rtol=1e-9)
    np.testing.assert_allclose(result.lift_ci_high[0], rr * np.exp(1.959963984540054 * se), rtol=1e-9)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=1, max_size=60), st.integers(1, 15))
def test_rolling_window_equals_brute_force(daily, window):
    x = np.array(daily, dtype=float)[:, None]
    got = rolling_window_counts(x, window)[:, 0]
    want = [x[max(0, i - window + 1) : i + 1, 0].sum() for i in range(len(x))]
    np.testing.assert_allclose(got, want)


def test_window_counts_equal_brute_force():
    rng = np.random.default_rng(0)
    n, days, k, window = 500, 40, 3, 7
    closure = rng.integers(-1, days, n)
    y = rng.random(n) < 0.2
    member = sp.csr_matrix(rng.random((n, k)) < 0.3, dtype=float)
    counts = window_counts(closure, y, member, days, window)
    dense = member.toarray().astype(bool)
    for d in (0, 6, 20, 39):
        inside = (closure >= 0) & (closure > d - window) & (closure <= d)
        for s in range(k):
            assert counts.n_with[d, s] == (inside & dense[:, s]).sum()
            assert counts.conversions_with[d, s] == (inside & dense[:, s] & y).sum()
            assert counts.n_without[d, s] == (inside & ~dense[:, s]).sum()
            assert counts.conversions_without[d, s] == (inside & ~dense[:, s] & y).sum()


def test_false_alarms_stay_below_alpha_over_a_year_of_daily_looks():
    """Stable signals checked every day for a year: the share ever flagged stays <= alpha (Bonferroni spending),
    while testing every look at alpha would flag a large share."""
    adjusted = simulate_false_alarms(n_signals=600, seed=5)
    naive = simulate_false_alarms(n_signals=600, seed=5, adjust_for_looks=False)
    assert adjusted <= 0.05
    assert naive > 0.2
    # does not grow with the number of looks: two years of looks at the same per-year budget
    two_years = simulate_false_alarms(n_signals=600, days=730, seed=6, config=HealthConfig(looks_per_year=730))
    assert two_years <= 0.05


@pytest.mark.parametrize("lift", [1.5, 3.0])
def test_false_alarm_rate_holds_for_weak_and_strong_signals(lift):
    assert simulate_false_alarms(n_signals=400, lift=lift, seed=int(lift * 10)) <= 0.05
