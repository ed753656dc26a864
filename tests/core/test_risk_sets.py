"""The risk_set health rule: daily risk-set counts against a per-account-day loop, the conditional maximum
likelihood reference against statsmodels' ConditionalLogit and scipy's conditional odds ratio, the daily
likelihood ratios' invariants, and a tiny simulation (stable signals quiet, vanished ones flagged)."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.stats.contingency import odds_ratio
from statsmodels.discrete.conditional_models import ConditionalLogit

from beton_pipeline.core.monitoring import (
    HealthConfig,
    SignalCounts,
    fisher_noncentral_moments,
    health_over_days,
)
from beton_pipeline.core.risk_sets import (
    AGE_BANDS_DAYS,
    NEVER,
    age_band,
    conditional_log_odds_ratio,
    risk_set_counts,
    risk_set_evidence,
    risk_set_log_lr,
    simulate_rules,
)

RISK_SET = HealthConfig(method="risk_set")


def _accounts(seed: int, n: int = 200, n_days: int = 60):
    rng = np.random.default_rng(seed)
    start = rng.integers(-10, n_days, n)
    last = start + rng.integers(0, 45, n)
    converted = rng.random(n) < 0.5
    fired = np.where(rng.random(n) < 0.4, start + rng.integers(0, 12, n), NEVER)
    fired[:3] = last[:3]  # fired on the day it converted: still counted without the signal that day
    group = rng.integers(0, 2, n)
    return start, last, converted, fired, group


def _account_days(start, last, converted, fired, group, n_days):
    """Per-account-day rows (day, band, group, with the signal, converted that day): the definition, looped."""
    rows = []
    for i in range(start.size):
        for t in range(max(0, start[i]), min(n_days, last[i] + 1)):
            band = int(age_band(t - start[i]))
            rows.append((t, band, group[i], int(fired[i] < t), int(converted[i] and t == last[i])))
    return np.array(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_risk_set_counts_match_the_account_days(seed):
    n_days = 60
    accounts = _accounts(seed, n_days=n_days)
    counts = risk_set_counts(*accounts, n_groups=2, n_days=n_days)
    rows = _account_days(*accounts, n_days)
    expected = np.zeros((n_days, len(AGE_BANDS_DAYS), 2, 2, 2), dtype=np.int64)  # day, band, status, group, (n, d)
    np.add.at(expected[..., 0], (rows[:, 0], rows[:, 1], rows[:, 3], rows[:, 2]), 1)
    np.add.at(expected[..., 1], (rows[:, 0], rows[:, 1], rows[:, 3], rows[:, 2]), rows[:, 4])
    np.testing.assert_array_equal(counts.n_with, expected[:, :, 1, :, 0])
    np.testing.assert_array_equal(counts.n_without, expected[:, :, 0, :, 0])
    np.testing.assert_array_equal(counts.conversions_with, expected[:, :, 1, :, 1])
    np.testing.assert_array_equal(counts.conversions_without, expected[:, :, 0, :, 1])


def _conditional_logit(rows, group: int) -> tuple[float, float]:
    """statsmodels' conditional logistic regression of conversion on the signal, grouped by day × band."""
    mine = rows[rows[:, 2] == group]
    strata = mine[:, 0] * len(AGE_BANDS_DAYS) + mine[:, 1]
    model = ConditionalLogit(mine[:, 4], mine[:, 3:4].astype(np.float64), groups=strata)
    fit = model.fit(method="newton", disp=0, tol=1e-14, maxiter=200)
    return float(fit.params[0]), float(fit.bse[0])


@pytest.mark.filterwarnings("ignore::statsmodels.tools.sm_exceptions.ModelWarning")
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_reference_agrees_with_statsmodels_conditional_logit(seed):
    n_days = 60
    accounts = _accounts(seed, n=300, n_days=n_days)
    estimate = conditional_log_odds_ratio(risk_set_counts(*accounts, n_groups=2, n_days=n_days))
    rows = _account_days(*accounts, n_days)
    for group in (0, 1):
        beta, se = _conditional_logit(rows, group)
        assert estimate.log_odds_ratio[group] == pytest.approx(beta, abs=1e-9)
        assert estimate.se[group] == pytest.approx(se, rel=1e-6)  # statsmodels' Hessian is numerical
    # the conversions counted are those of strata with both sides at risk (the others carry no information)
    counts = risk_set_counts(*accounts, n_groups=2, n_days=n_days)
    m = counts.conversions_with + counts.conversions_without
    informative = (counts.n_with > 0) & (counts.n_without > 0) & (m < counts.n_with + counts.n_without)
    np.testing.assert_array_equal(estimate.conversions, np.where(informative, m, 0).sum(axis=(0, 1)))


def test_a_single_stratum_is_scipys_conditional_odds_ratio():
    table = np.array([[7, 33], [4, 96]])  # converted / not, with / without
    counts = SignalCounts(np.array([[7]]), np.array([[40]]), np.array([[4]]), np.array([[100]]))
    estimate = conditional_log_odds_ratio(counts)
    assert estimate.log_odds_ratio[0] == pytest.approx(
        np.log(odds_ratio(table, kind="conditional").statistic), abs=1e-9
    )
    # se = 1/√Var at the estimate, the variance of scipy's noncentral hypergeometric
    var = stats.nchypergeom_fisher.var(140, 40, 11, np.exp(estimate.log_odds_ratio[0]))
    assert estimate.se[0] == pytest.approx(1 / np.sqrt(var), rel=1e-9)


def _stack(*tables):
    return SignalCounts(*(np.array(x)[:, None] for x in zip(*tables, strict=True)))


def test_strata_without_information_change_nothing():
    base = [(3, 20, 2, 40), (1, 15, 4, 60), (2, 10, 1, 30)]
    reference = conditional_log_odds_ratio(_stack(*base))
    for extra in [
        (0, 25, 0, 50),
        (4, 12, 0, 0),
        (0, 0, 3, 30),
        (5, 5, 2, 2),
    ]:  # no conversions; all fired; none; all convert
        estimate = conditional_log_odds_ratio(_stack(*base, extra))
        assert estimate.log_odds_ratio[0] == reference.log_odds_ratio[0]
        assert estimate.se[0] == reference.se[0]


def test_one_sided_and_empty_references():
    all_fired = conditional_log_odds_ratio(_stack((2, 10, 0, 30), (1, 8, 0, 20)))
    assert all_fired.log_odds_ratio[0] == np.inf and np.isnan(all_fired.se[0])
    none_fired = conditional_log_odds_ratio(_stack((0, 10, 3, 30)))
    assert none_fired.log_odds_ratio[0] == -np.inf
    nothing = conditional_log_odds_ratio(_stack((0, 10, 0, 30)))
    assert np.isnan(nothing.log_odds_ratio[0]) and nothing.conversions[0] == 0


def test_moments_match_scipy():
    n1, n2, m = np.array([10, 40, 3, 5]), np.array([30, 100, 7, 0]), np.array([4, 11, 9, 2])
    mean, var = fisher_noncentral_moments(n1, n2, m, np.log(2.5))
    for i in range(4):
        dist = stats.nchypergeom_fisher(n1[i] + n2[i], n1[i], m[i], 2.5)
        assert mean[i] == pytest.approx(dist.mean(), abs=1e-9)
        assert var[i] == pytest.approx(dist.var(), abs=1e-9)


tables = st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(0, 6)).flatmap(
    lambda t: st.tuples(st.integers(0, min(t[0], t[2])), st.just(t[0]), st.just(t[1]), st.just(t[2]))
)


def _day_bands(draw_tables):
    """days × bands × 1 signal counts from (a, n1, n2, m) tuples, m clipped to what the day can hold."""
    a, n1, n2, m = (np.array(x, dtype=np.int64) for x in zip(*draw_tables, strict=True))
    m = np.minimum(m, n1 + n2)
    a = np.clip(a, np.maximum(0, m - n2), np.minimum(n1, m))
    shape = (len(draw_tables) // len(AGE_BANDS_DAYS), len(AGE_BANDS_DAYS), 1)
    return SignalCounts(*(x.reshape(shape) for x in (a, n1, m - a, n2)))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(tables, min_size=3 * len(AGE_BANDS_DAYS), max_size=3 * len(AGE_BANDS_DAYS)),
    st.floats(0.1, 2.0),
    st.floats(0.0, 0.9),
    st.permutations(range(len(AGE_BANDS_DAYS))),
)
def test_daily_log_lr_invariants(draw_tables, null, share, order):
    daily = _day_bands(draw_tables)
    lr = risk_set_log_lr(daily, np.array([null]), np.array([share * null]))
    # the product over bands of scipy's noncentral hypergeometric pmf ratios
    a, n1, c, n2 = dataclasses.astuple(daily)
    direct = stats.nchypergeom_fisher.logpmf(
        a, n1 + n2, n1, a + c, np.exp(share * null)
    ) - stats.nchypergeom_fisher.logpmf(a, n1 + n2, n1, a + c, np.exp(null))
    np.testing.assert_allclose(lr, np.nan_to_num(direct).sum(axis=1), atol=1e-9)
    # a day with no conversion carries no evidence
    no_conversion = (a + c).sum(axis=1)[:, 0] == 0
    assert np.all(lr[no_conversion, 0] == 0)
    # relabelling the age bands changes nothing
    relabelled = SignalCounts(*(x[:, list(order)] for x in dataclasses.astuple(daily)))
    np.testing.assert_allclose(risk_set_log_lr(relabelled, [null], [share * null]), lr, atol=1e-12)


def test_the_rule_needs_its_evidence_and_alarms_on_a_lost_effect():
    rng = np.random.default_rng(5)
    days, bands = 200, len(AGE_BANDS_DAYS)
    n1 = np.full((days, bands, 2), 60)
    n2 = np.full((days, bands, 2), 240)
    hazard = 0.01
    # signal 0 keeps a hazard odds ratio of about 3; signal 1 loses it from day 60
    odds = np.where(np.arange(days)[:, None, None] >= 60, np.array([3.0, 1.0]), 3.0)
    a = rng.binomial(n1, hazard * odds / (1 - hazard + hazard * odds))
    c = rng.binomial(n2, hazard)
    daily = SignalCounts(a, n1, c, n2)
    reference = conditional_log_odds_ratio(SignalCounts(a[:60], n1[:60], c[:60], n2[:60]))
    closures = SignalCounts(*(x.sum(axis=1) for x in dataclasses.astuple(daily)))
    with pytest.raises(ValueError, match="risk_set"):
        health_over_days(closures, 30, closures, RISK_SET)
    evidence = risk_set_evidence(daily, reference, RISK_SET, start=60)
    result = health_over_days(closures, 30, closures, RISK_SET, start=60, evidence=evidence)
    assert not result.flagged[:, 0].any()
    assert result.flagged[60:, 1].any() and not result.flagged[:60, 1].any()
    assert np.all(np.isneginf(evidence.degrading[:60]))  # nothing accumulates before the first monitoring day


def test_tiny_simulation_stable_signals_quiet_vanished_ones_flagged():
    rules = {"risk_set": RISK_SET}
    stable = simulate_rules(rules, n_signals=30, days=120, accounts_per_day=20, reference_accounts=2000, seed=11)
    assert stable.false_alarm_rate("risk_set") == 0.0
    vanished = simulate_rules(
        rules,
        n_signals=20,
        days=150,
        accounts_per_day=20,
        reference_accounts=2000,
        seed=12,
        lift_after=1.0,
        drift_day=60,
    )
    delays = vanished.detection_delays("risk_set")
    assert np.mean(np.isfinite(delays)) >= 0.9 and np.median(delays) < 45
