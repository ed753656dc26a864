"""`core.power` against statsmodels (NormalIndPower, proportion_effectsize) to 1e-9, plus invariants."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_effectsize

from beton_pipeline.core.power import min_detectable_h, min_detectable_lift, two_proportion_power

CASES = [
    (100.0, 900.0, 0.05, 0.8),
    (30.0, 270.0, 0.01, 0.9),
    (500.0, 500.0, 0.05, 0.8),
    (12.5, 112.5, 0.10, 0.5),
    (2_000.0, 18_000.0, 0.001, 0.95),
]


@pytest.mark.parametrize(("n_with", "n_without", "alpha", "power"), CASES)
def test_power_matches_statsmodels(n_with, n_without, alpha, power):
    for h in (0.01, 0.1, 0.3, 1.0, -0.2):
        expected = NormalIndPower().power(h, n_with, alpha, ratio=n_without / n_with, alternative="two-sided")
        assert two_proportion_power(h, n_with, n_without, alpha) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("n_with", "n_without", "alpha", "power"), CASES)
def test_min_detectable_h_has_the_asked_power_by_statsmodels(n_with, n_without, alpha, power):
    h = min_detectable_h(n_with, n_without, alpha, power)
    achieved = NormalIndPower().power(h, n_with, alpha, ratio=n_without / n_with, alternative="two-sided")
    assert achieved == pytest.approx(power, abs=1e-9)
    # statsmodels' own solver agrees to its tolerance (it stops near 1e-7).
    solved = NormalIndPower().solve_power(nobs1=n_with, alpha=alpha, power=power, ratio=n_without / n_with)
    assert h == pytest.approx(solved, abs=1e-5)


@pytest.mark.parametrize(("n", "base_rate", "alpha"), [(1000, 0.1, 0.05), (300, 0.2, 0.05), (5000, 0.02, 0.01)])
def test_min_detectable_lift_is_the_lift_whose_effect_size_is_min_detectable_h(n, base_rate, alpha):
    lift = min_detectable_lift(n, base_rate, alpha, power=0.8, signal_share=0.1)
    h = min_detectable_h(0.1 * n, 0.9 * n, alpha, 0.8)
    assert proportion_effectsize(lift * base_rate, base_rate) == pytest.approx(h, abs=1e-9)
    achieved = NormalIndPower().power(
        proportion_effectsize(lift * base_rate, base_rate), 0.1 * n, alpha, ratio=9.0, alternative="two-sided"
    )
    assert achieved == pytest.approx(0.8, abs=1e-9)


def test_a_known_value():
    # 1,000 accounts, 100 with the signal, 10% base rate, alpha 0.05, 80% power: h = 0.29531265 (Cohen's
    # tables give h ≈ 0.295 for n_eff = 90), i.e. p1 = 20.46%, a lift of 2.046.
    assert min_detectable_h(100, 900, 0.05, 0.8) == pytest.approx(0.29531265, abs=1e-8)
    assert min_detectable_lift(1000, 0.1, 0.05) == pytest.approx(2.046272157, abs=1e-8)


def test_no_lift_when_it_cannot_be_detected():
    assert min_detectable_lift(5, 0.1, 0.05) is None  # fewer than one account with the signal
    assert min_detectable_lift(1000, 0.0, 0.05) is None  # nothing converts
    assert min_detectable_lift(1000, 1.0, 0.05) is None  # everything converts
    assert min_detectable_lift(20, 0.6, 0.05) is None  # the needed rate is above 100%
    assert min_detectable_h(1, 1, 0.05, 0.99) is None  # even h = π falls short


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="alpha"):
        two_proportion_power(0.1, 10, 10, 1.5)
    with pytest.raises(ValueError, match="group sizes"):
        min_detectable_h(0, 10, 0.05, 0.8)
    with pytest.raises(ValueError, match="power"):
        min_detectable_h(10, 10, 0.05, 0.01)
    with pytest.raises(ValueError, match="signal_share"):
        min_detectable_lift(100, 0.1, 0.05, signal_share=1.0)


sizes = st.integers(min_value=50, max_value=200_000)
rates = st.floats(min_value=0.01, max_value=0.5)
alphas = st.floats(min_value=0.001, max_value=0.2)


@settings(max_examples=60, deadline=None)
@given(n=sizes, extra=st.integers(min_value=1, max_value=100_000), rate=rates, alpha=alphas)
def test_more_accounts_never_need_a_larger_lift(n, extra, rate, alpha):
    small, large = min_detectable_lift(n, rate, alpha), min_detectable_lift(n + extra, rate, alpha)
    if small is None:
        return
    assert large is not None and large <= small + 1e-12


@settings(max_examples=60, deadline=None)
@given(n=sizes, rate=rates, alpha=alphas, more_power=st.floats(min_value=0.0, max_value=0.15))
def test_more_power_or_a_stricter_alpha_needs_a_larger_lift(n, rate, alpha, more_power):
    base = min_detectable_lift(n, rate, alpha, power=0.8)
    stronger = min_detectable_lift(n, rate, alpha, power=0.8 + more_power)
    stricter = min_detectable_lift(n, rate, alpha / 2, power=0.8)
    if base is None:
        return
    assert stronger is None or stronger >= base - 1e-12
    assert stricter is None or stricter >= base - 1e-12


@settings(max_examples=60, deadline=None)
@given(n=sizes, rate=rates, alpha=alphas, share=st.floats(min_value=0.01, max_value=0.99))
def test_the_lift_is_above_one_and_its_power_is_the_asked_power(n, rate, alpha, share):
    lift = min_detectable_lift(n, rate, alpha, power=0.8, signal_share=share)
    if lift is None:
        return
    assert lift > 1 and lift * rate <= 1 + 1e-12
    h = 2 * math.asin(math.sqrt(min(1.0, lift * rate))) - 2 * math.asin(math.sqrt(rate))
    assert two_proportion_power(h, share * n, (1 - share) * n, alpha) == pytest.approx(0.8, abs=1e-9)
