"""Readout statistics against independent implementations (statsmodels, scipy), and the required cases:
100/1000 vs 150/1000 significant, 100/1000 vs 105/1000 not, 0/100 vs 0/100 without a crash,
50 vs 50 exposures warns small sample, 1000 vs 200 exposures flags a sample-ratio mismatch."""

import gc
from datetime import date, datetime

import numpy as np
import polars as pl
import pytest
from scipy import stats as sp_stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from beton_pipeline.core.playbooks import Experiment
from beton_pipeline.core.readouts import (
    assignment_counts,
    experiment_notes,
    experiment_readout,
    experiment_readout_from_counts,
    treatment_readout,
)
from beton_pipeline.core.stats import holm_adjust

TOL = 1e-9


def _z_p(a, n1, c, n2):
    return proportions_ztest([a, c], [n1, n2], prop_var=False)[1]


def test_treatment_100_vs_150_of_1000_is_significant():
    r = treatment_readout(150, 1000, 100, 1000, expected_holdout_fraction=0.5)
    assert r.significant and r.p_value == pytest.approx(_z_p(150, 1000, 100, 1000), rel=TOL, abs=TOL)
    assert r.p_value < 0.001
    assert r.lift == pytest.approx(1.5, rel=TOL) and r.rate_diff == pytest.approx(0.05, abs=TOL)
    low, high = confint_proportions_2indep(150, 1000, 100, 1000, compare="diff", method="newcomb")
    assert (r.diff_ci_low, r.diff_ci_high) == (pytest.approx(low, abs=TOL), pytest.approx(high, abs=TOL))
    low, high = confint_proportions_2indep(150, 1000, 100, 1000, compare="ratio", method="log")
    assert (r.lift_ci_low, r.lift_ci_high) == (pytest.approx(low, rel=TOL), pytest.approx(high, rel=TOL))
    assert r.method.startswith("z-test (pooled)")
    assert not r.srm_flag and not r.small_sample and r.warnings == ()


def test_treatment_100_vs_105_of_1000_is_not_significant():
    r = treatment_readout(105, 1000, 100, 1000, expected_holdout_fraction=0.5)
    assert not r.significant and r.p_value == pytest.approx(_z_p(105, 1000, 100, 1000), rel=TOL)
    assert r.p_value > 0.5 and r.lift_ci_low < 1 < r.lift_ci_high and r.diff_ci_low < 0 < r.diff_ci_high


def test_treatment_zero_of_100_vs_zero_of_100_does_not_crash():
    r = treatment_readout(0, 100, 0, 100, expected_holdout_fraction=0.5)
    assert r.p_value == pytest.approx(sp_stats.fisher_exact([[0, 100], [0, 100]])[1])  # = 1
    assert np.isnan(r.lift) and r.rate_diff == 0 and not r.significant
    assert np.isfinite(r.lift_ci_low) and np.isfinite(r.lift_ci_high)  # Haldane-Anscombe corrected interval
    assert r.small_sample and any("0 conversions" in w for w in r.warnings)


def test_treatment_empty_arms_and_no_holdout():
    empty = treatment_readout(0, 0, 0, 0, expected_holdout_fraction=0.1)
    assert np.isnan(empty.p_value) and np.isnan(empty.srm_pvalue) and empty.small_sample
    none_held = treatment_readout(10, 200, 0, 0, expected_holdout_fraction=0.0)
    assert np.isnan(none_held.p_value) and any("no control group" in w for w in none_held.warnings)


def test_treatment_srm_uses_the_designed_holdout_share():
    ok = treatment_readout(100, 900, 10, 100, expected_holdout_fraction=0.1)
    assert ok.srm_pvalue == pytest.approx(1.0) and not ok.srm_flag
    bad = treatment_readout(100, 1000, 20, 200, expected_holdout_fraction=0.5)
    assert bad.srm_pvalue == pytest.approx(sp_stats.chisquare([1000, 200], [600, 600]).pvalue, rel=TOL)
    assert bad.srm_flag and any("sample-ratio mismatch" in w for w in bad.warnings)


def test_small_sample_warning_50_vs_50():
    r = treatment_readout(10, 50, 5, 50, expected_holdout_fraction=0.5)
    assert r.small_sample and "50 units" in r.warnings[0]
    e = experiment_readout("e", "goal", ["control", "test"], [50, 50], [5, 9])
    assert e.small_sample and e.table["small_sample"].to_list() == [True, True] and "small sample" in e.summary


def test_imbalance_1000_vs_200_exposures_is_flagged():
    e = experiment_readout("e", "goal", ["control", "test"], [1000, 200], [100, 20])
    assert e.srm_pvalue == pytest.approx(sp_stats.chisquare([1000, 200]).pvalue, rel=TOL)
    assert e.srm_flag and "do not read" in e.summary


@pytest.fixture
def fast_multipletests(monkeypatch):
    """statsmodels' `multipletests(method="holm")` calls `gc.collect()` on every call: 0.15-0.3 s each in a
    test worker holding a large heap (15-30 s for this file's 50 reference cases). The reference values do
    not depend on it, so the collection is skipped while the test runs."""
    monkeypatch.setattr(gc, "collect", lambda generation=2: 0)


def test_holm_matches_statsmodels(fast_multipletests):
    rng = np.random.default_rng(3)
    for _ in range(50):
        p = rng.random(rng.integers(1, 8)) ** 3
        np.testing.assert_allclose(holm_adjust(p), multipletests(p, method="holm")[1], rtol=1e-12, atol=1e-15)
    with_nan = holm_adjust([0.01, np.nan, 0.04])
    np.testing.assert_allclose(with_nan[[0, 2]], multipletests([0.01, 0.04], method="holm")[1])
    assert np.isnan(with_nan[1])


def test_experiment_three_variants_against_statsmodels(fast_multipletests):
    variants, n, k = ["variant-a", "control", "variant-b"], [3000, 3100, 2950], [330, 300, 310]
    e = experiment_readout("ai-assistant", "api_key_created", variants, n, k, control="control")
    t = e.table
    assert t["variant"].to_list() == ["control", "variant-a", "variant-b"] and t["is_control"].to_list() == [
        True,
        False,
        False,
    ]
    raw = [_z_p(330, 3000, 300, 3100), _z_p(310, 2950, 300, 3100)]
    np.testing.assert_allclose(t["p_value"].to_list()[1:], raw, rtol=1e-9)
    np.testing.assert_allclose(t["p_value_holm"].to_list()[1:], multipletests(raw, method="holm")[1], rtol=1e-9)
    assert np.isnan(t["p_value"][0]) and t["lift"][0] is None or np.isnan(t["lift"][0])
    low, high = confint_proportions_2indep(330, 3000, 300, 3100, compare="ratio", method="log")
    assert (t["lift_ci_low"][1], t["lift_ci_high"][1]) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))
    assert e.srm_pvalue == pytest.approx(sp_stats.chisquare(np.array([3100, 3000, 2950])).pvalue, rel=1e-9)
    assert set(t.columns) >= {
        "exposures",
        "conversions",
        "rate",
        "rate_ci_low",
        "diff_ci_low",
        "significant",
        "summary",
    }
    again = experiment_readout("ai-assistant", "api_key_created", variants, n, k, control="control")
    assert again.summary == e.summary
    assert (
        e.summary.splitlines()[0] == "Experiment ai-assistant (goal: api_key_created): 3 variants, 9,050 exposed users."
    )


def test_experiment_significant_winner_and_weights():
    e = experiment_readout("onb", "goal", ["control", "test"], [2000, 1000], [200, 150], expected_shares=[2, 1])
    assert not e.srm_flag and e.table["significant"].to_list() == [False, True]
    assert "Verdict: test beats control." in e.summary


def test_experiment_without_control_exposures():
    e = experiment_readout("x", "goal", ["test"], [500], [50], control="control")
    assert e.table["variant"].to_list() == ["control", "test"] and np.isnan(e.table["p_value"][1])
    assert any("no exposures" in w for w in e.warnings)


def test_experiment_input_validation():
    with pytest.raises(ValueError):
        experiment_readout("x", "g", ["control", "t"], [10, 10], [11, 0])
    with pytest.raises(ValueError):
        experiment_readout("x", "g", ["control", "control"], [10, 10], [1, 1])


def test_assignment_counts_windows_and_exclusions():
    frame = pl.DataFrame(
        {
            "account_id": ["a", "b", "c", "d", "e", "f", "g"],
            "held_out": [False, False, True, True, False, False, True],
            "first_day": [date(2026, 1, 1)] * 5 + [date(2026, 3, 20), date(2026, 1, 1)],
            "converted_at": [
                datetime(2026, 1, 10),
                None,
                datetime(2026, 2, 15),
                datetime(2025, 12, 31),
                datetime(2026, 1, 1),
                None,
                None,
            ],
            "known_account": [True, True, True, True, True, True, False],
        }
    )
    c = assignment_counts(frame, datetime(2026, 4, 1), window_days=30)
    # a converts in window; b no; c converts after 30 days (no); d converted before (left out);
    # e converts on the first day (counts); f is still inside its window (awaiting); g unknown
    assert (c.n_treated, c.conversions_treated, c.n_held_out, c.conversions_held_out) == (3, 2, 1, 0)
    assert (c.n_awaiting_outcome, c.n_converted_before, c.n_unknown_account) == (1, 1, 1)


def test_experiment_readout_from_counts_fills_missing_variants_and_notes_the_rest():
    counts = pl.DataFrame(
        {"variant": ["control", "rogue", "test"], "exposures": [500, 7, 480], "conversions": [50, 1, 70]}
    )
    exp = Experiment(name="onb", flag="f", goal_event="goal", variants=("control", "test", "b"), weights=(2, 1, 1))
    r = experiment_readout_from_counts(exp, counts, {"saw_several_variants": 3, "awaiting_window": 0}, 0.9)
    direct = experiment_readout(
        "onb",
        "goal",
        ["control", "test", "b"],
        [500, 480, 0],
        [50, 70, 0],
        control="control",
        expected_shares=[2, 1, 1],
        confidence_level=0.9,
        notes=[
            "3 user(s) saw more than one variant (counted in their first)",
            "unexpected variant(s) left out: rogue (7)",
        ],
    )
    assert r.table.equals(direct.table) and r.summary == direct.summary
    # without configured variants: every variant seen, plus the control
    seen = experiment_readout_from_counts(
        Experiment(name="onb", flag="f", goal_event="goal"),
        counts.filter(pl.col("variant") != "control"),
        {"saw_several_variants": 0, "awaiting_window": 2},
    )
    assert seen.table["variant"].to_list() == ["control", "rogue", "test"] and seen.table["exposures"][0] == 0
    assert experiment_notes(
        counts, {"saw_several_variants": 0, "awaiting_window": 2}, ["control", "rogue", "test"]
    ) == ["2 user(s) exposed too recently to count (inside the conversion window)"]
