"""Signal health rules: known cases, window counts, the sequential statistic against independent
computations, and the false-alarm rate and detection delay under repeated daily looks."""

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from statsmodels.stats.contingency_tables import Table2x2

from beton_pipeline.core.monitoring import (
    HealthConfig,
    SignalCounts,
    assess_health,
    daily_counts,
    fisher_noncentral_log_lr,
    health_over_days,
    log_odds_ratio_and_se,
    rolling_window_counts,
    sequential_evidence,
    shiryaev_roberts_log,
    simulate_false_alarms,
    simulate_monitoring,
    window_counts,
)
from beton_pipeline.settings import Settings

BONFERRONI = HealthConfig(method="bonferroni")
SEQUENTIAL = HealthConfig(method="sequential")


def test_rules_on_known_cases():
    cfg = HealthConfig(
        alpha=0.05, looks_per_year=365, min_fired=30, min_conversions=10, min_lift=1.3, method="bonferroni"
    )
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
    adjusted = simulate_false_alarms(n_signals=600, seed=5, config=BONFERRONI)
    naive = simulate_false_alarms(n_signals=600, seed=5, adjust_for_looks=False, config=BONFERRONI)
    assert adjusted <= 0.05
    assert naive > 0.2
    # does not grow with the number of looks: two years of looks at the same per-year budget
    two_years = simulate_false_alarms(
        n_signals=600, days=730, seed=6, config=HealthConfig(looks_per_year=730, method="bonferroni")
    )
    assert two_years <= 0.05


@pytest.mark.parametrize("lift", [1.5, 3.0])
def test_false_alarm_rate_holds_for_weak_and_strong_signals(lift):
    assert simulate_false_alarms(n_signals=400, lift=lift, seed=int(lift * 10), config=BONFERRONI) <= 0.05


# --- the sequential rule ---------------------------------------------------------------------------------


def _random_tables(rng, n):
    n1 = rng.integers(0, 40, n)
    n2 = rng.integers(0, 60, n)
    m = np.array([rng.integers(0, a + b + 1) for a, b in zip(n1, n2, strict=True)])
    lo, hi = np.maximum(0, m - n2), np.minimum(n1, m)
    a = np.array([rng.integers(x, y + 1) for x, y in zip(lo, hi, strict=True)])
    return a, n1, n2, m


def test_noncentral_hypergeometric_log_lr_matches_scipy():
    rng = np.random.default_rng(11)
    a, n1, n2, m = _random_tables(rng, 400)
    l0 = rng.normal(1.0, 0.6, a.size)
    l1 = rng.normal(0.0, 0.6, a.size)
    got = fisher_noncentral_log_lr(a, n1, n2, m, l0, l1)
    for i in range(a.size):
        M, n, N = n1[i] + n2[i], n1[i], m[i]
        if M == 0:
            assert got[i] == 0.0
            continue
        want = stats.nchypergeom_fisher.logpmf(a[i], M, n, N, np.exp(l1[i])) - stats.nchypergeom_fisher.logpmf(
            a[i], M, n, N, np.exp(l0[i])
        )
        np.testing.assert_allclose(got[i], want, rtol=1e-9, atol=1e-9)


def test_noncentral_hypergeometric_log_lr_on_large_days_matches_scipy():
    """Hundreds of conversions a day (support widths in the hundreds), chunked grids included."""
    a, n1, n2, m = np.array([150, 40]), np.array([900, 2000]), np.array([2600, 5000]), np.array([400, 90])
    got = fisher_noncentral_log_lr(a, n1, n2, m, np.log(2.5), np.log(1.2))
    want = [
        stats.nchypergeom_fisher.logpmf(a[i], n1[i] + n2[i], n1[i], m[i], 1.2)
        - stats.nchypergeom_fisher.logpmf(a[i], n1[i] + n2[i], n1[i], m[i], 2.5)
        for i in range(2)
    ]
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_days_without_information_have_likelihood_ratio_one():
    # no closures, no conversions, no holders of the signal, nobody without it, everyone converted
    a, n1, n2, m = (
        np.array([0, 0, 0, 0, 3]),
        np.array([0, 10, 0, 5, 3]),
        np.array([0, 30, 12, 0, 0]),
        np.array([0, 0, 2, 4, 3]),
    )
    a[3] = 4
    np.testing.assert_array_equal(fisher_noncentral_log_lr(a, n1, n2, m, 1.0, 0.0), 0.0)
    with pytest.raises(ValueError, match="outside the support"):
        fisher_noncentral_log_lr([5], [3], [10], [5], 1.0, 0.0)


def test_woolf_log_odds_ratio_matches_statsmodels():
    for a, n1, c, n2 in [(40, 400, 90, 3600), (0, 25, 30, 300), (25, 25, 30, 300), (3, 8, 0, 7)]:
        log_or, se = log_odds_ratio_and_se([a], [n1], [c], [n2])
        cells = np.array([[a, n1 - a], [c, n2 - c]], dtype=float)
        # Haldane–Anscombe: 0.5 on every cell of a table with a zero cell (statsmodels' shift_zeros shifts
        # the zero cells only, so the shift is applied here)
        table = Table2x2(cells + 0.5 * (cells.min() == 0), shift_zeros=False)
        np.testing.assert_allclose(log_or[0], table.log_oddsratio, rtol=1e-9)
        np.testing.assert_allclose(se[0], table.log_oddsratio_se, rtol=1e-9)
    log_or, se = log_odds_ratio_and_se([0], [0], [3], [10])
    assert np.isnan(log_or[0]) and np.isnan(se[0])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-3, 3), min_size=1, max_size=80), st.integers(0, 10))
def test_shiryaev_roberts_equals_its_recursion(increments, start):
    x = np.array(increments)[:, None]
    got = shiryaev_roberts_log(x, start)[:, 0]
    r, want = 0.0, []
    for t, v in enumerate(increments):
        if t < start:
            want.append(-np.inf)
            continue
        r = (1.0 + r) * np.exp(v)
        want.append(np.log(r))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    # never below the best single change day, max_s Σ_{j=s..t} x_j (the CUSUM before its floor at 0):
    # a sum over change days is at least their maximum
    best, best_change = -np.inf, []
    for v in increments[start:]:
        best = max(best, 0.0) + v
        best_change.append(best)
    assert np.all(got[start:] >= np.array(best_change) - 1e-9)


def test_sequential_evidence_is_the_mixture_of_the_two_alternatives():
    rng = np.random.default_rng(3)
    days, k = 50, 3
    n1 = rng.poisson(5, (days, k))
    n2 = rng.poisson(15, (days, k))
    a, c = rng.binomial(n1, 0.2), rng.binomial(n2, 0.08)
    reference = SignalCounts(
        np.array([200, 60, 20]), np.array([1000, 900, 500]), np.array([240, 240, 30]), np.array([3000, 3000, 600])
    )
    cfg = SEQUENTIAL
    got = sequential_evidence(SignalCounts(a, n1, c, n2), reference, cfg, start=5)
    log_or, se = log_odds_ratio_and_se(*dataclasses.astuple(reference))
    null = log_or - stats.norm.isf(cfg.alpha / 2) * se
    for s in range(k):
        if null[s] <= 0:  # the third reference cannot tell its signal from no effect: no degrading test
            assert np.all(got.degrading[:, s] == -np.inf) and not got.has_degrading_test[s]
            continue
        stats_k = []
        for alt in (0.0, 0.5 * null[s]):
            r, path = 0.0, []
            for t in range(days):
                if t < 5:
                    path.append(0.0)
                    continue
                inc = stats.nchypergeom_fisher.logpmf(
                    a[t, s], n1[t, s] + n2[t, s], n1[t, s], a[t, s] + c[t, s], np.exp(alt)
                )
                inc -= stats.nchypergeom_fisher.logpmf(
                    a[t, s], n1[t, s] + n2[t, s], n1[t, s], a[t, s] + c[t, s], np.exp(null[s])
                )
                r = (1 + r) * np.exp(inc)
                path.append(r)
            stats_k.append(np.array(path))
        want = np.log((stats_k[0][5:] + stats_k[1][5:]) / 2)
        np.testing.assert_allclose(got.degrading[5:, s], want, rtol=1e-9)
    assert not got.has_degrading_test[2] and got.has_degrading_test[0]


def test_sequential_states_follow_the_rules():
    """A signal whose effect vanishes turns degrading, then broken (once credibly below min_lift); a stable
    one stays healthy; a thin one is insufficient_data; the state never depends on days after it."""
    days = 400
    n1 = np.full((days, 3), 40)
    n2 = np.full((days, 3), 120)
    a = np.tile([12, 12, 0], (days, 1))
    c = np.tile([12, 12, 0], (days, 1))
    a[200:, 0] = 4  # from day 200 the first signal converts at the base rate (lift 1)
    n1[:, 2], n2[:, 2] = 0, 1  # the third has no holders at all
    reference = SignalCounts(np.full(3, 300), np.full(3, 1000), np.full(3, 300), np.full(3, 3000))
    result = health_over_days(SignalCounts(a, n1, c, n2), 90, reference, SEQUENTIAL)
    states = result.health
    assert set(states[90:200, 0]) == {"healthy"} and set(states[90:, 1]) == {"healthy"}
    assert set(states[:, 2]) == {"insufficient_data"}
    first_degrading = 200 + int(np.argmax(states[200:, 0] != "healthy"))
    assert states[first_degrading, 0] == "degrading" and first_degrading < 230
    assert "broken" in set(states[first_degrading:, 0])
    first_broken = int(np.argmax(states[:, 0] == "broken"))
    assert (
        result.broken_evidence[first_broken, 0]
        >= SEQUENTIAL.alarm_threshold
        > result.broken_evidence[first_broken - 1, 0]
    )
    truncated = health_over_days(SignalCounts(a[:250], n1[:250], c[:250], n2[:250]), 90, reference, SEQUENTIAL)
    np.testing.assert_array_equal(truncated.health, states[:250])
    np.testing.assert_allclose(truncated.degrading_evidence, result.degrading_evidence[:250])


def test_config_validates_and_states_its_thresholds():
    cfg = HealthConfig(alpha=0.05, looks_per_year=365, method="sequential")
    assert cfg.alarm_threshold == pytest.approx(np.log(2 * 365 / 0.05), rel=1e-12)
    assert cfg.reference_z == pytest.approx(stats.norm.isf(0.025), rel=1e-12)
    assert cfg.alpha_per_look == pytest.approx(0.05 / 730) and BONFERRONI.alpha_per_look == pytest.approx(0.05 / 365)
    for bad in ({"method": "cusum"}, {"alpha": 0.0}, {"looks_per_year": 0}, {"degraded_effect_share": 1.0}):
        with pytest.raises(ValueError):
            HealthConfig(**bad)


def test_daily_counts_sum_to_the_window_counts():
    rng = np.random.default_rng(1)
    n, days, k = 300, 30, 2
    closure = rng.integers(-1, days, n)
    y = rng.random(n) < 0.2
    member = sp.csr_matrix(rng.random((n, k)) < 0.3, dtype=float)
    daily = daily_counts(closure, y, member, days)
    window = window_counts(closure, y, member, days, 7)
    for got, want in zip(dataclasses.astuple(daily.rolling(7)), dataclasses.astuple(window), strict=True):
        np.testing.assert_array_equal(got, want)
    assert daily.n_with[:, 0].sum() + daily.n_without[:, 0].sum() == (closure >= 0).sum()


def test_sequential_false_alarms_stay_below_alpha():
    """The guarantee on stable signals, where it is tightest: a reference from 10⁹ accounts (its bound sits
    on the truth, so the statistic's own α/2 is what is left) and a large α so the rate is measurable
    (about 12 % against 15 %); spending the budget on one look breaks it; the sequential rule at the default alpha."""
    cfg = HealthConfig(alpha=0.3, method="sequential")
    sim = simulate_monitoring(n_signals=600, days=365, reference_accounts=10**9, config=cfg, seed=21)
    assert 0 < sim.false_alarm_rate <= 0.3 / 2 + 3 * sim.false_alarm_se
    naive = simulate_monitoring(
        n_signals=600, days=365, reference_accounts=10**9, config=cfg, seed=21, adjust_for_looks=False
    )
    assert naive.false_alarm_rate > 0.5
    default = simulate_monitoring(n_signals=600, days=365, config=SEQUENTIAL, seed=22)
    assert default.false_alarm_rate <= 0.05 + 3 * default.false_alarm_se


def test_sequential_detects_a_vanished_lift_sooner_than_bonferroni():
    kw = dict(n_signals=200, days=300, lift_after=1.0, drift_day=100, seed=9)
    sequential = simulate_monitoring(config=SEQUENTIAL, **kw).detection_delays
    bonferroni = simulate_monitoring(config=BONFERRONI, **kw).detection_delays
    assert np.isfinite(sequential).mean() > 0.9
    assert np.median(sequential) < 0.9 * np.median(bonferroni)
    assert np.percentile(sequential, 25) < np.percentile(bonferroni, 25)


def test_days_without_closures_leave_every_signal_insufficient_and_unflagged():
    zeros = np.zeros((60, 2), dtype=np.int64)
    reference = SignalCounts(np.array([200, 5]), np.array([1000, 50]), np.array([240, 40]), np.array([3000, 950]))
    result = health_over_days(SignalCounts(zeros, zeros, zeros, zeros), 30, reference, SEQUENTIAL, start=10)
    assert set(result.health.ravel()) == {"insufficient_data"}
    # no evidence either way: R grows by one start a day (R_t = t − start + 1), far below the level
    np.testing.assert_allclose(result.degrading_evidence[10:, 0], np.log(np.arange(1, 51)), rtol=1e-12)
    assert np.all(result.degrading_evidence[:10] == -np.inf)


def test_settings_choose_the_rule_and_risk_set_is_the_default():
    # the settings default to the risk-set rule; the core config (no risk sets needed) to bonferroni
    assert Settings().health_config() == HealthConfig(method="risk_set")
    assert HealthConfig() == BONFERRONI
    chosen = Settings.model_validate({"monitoring": {"method": "sequential", "degraded_effect_share": 0.25}})
    assert chosen.health_config() == HealthConfig(method="sequential", degraded_effect_share=0.25)
    with pytest.raises(ValueError):
        Settings.model_validate({"monitoring": {"method": "cusum"}})
