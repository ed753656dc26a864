"""Backtest metrics against independent implementations: scikit-learn (precision, recall),
statsmodels (lift CI, Newcombe interval, Cochran's Q), and the verdict rule on constructed data."""

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from sklearn.metrics import precision_score, recall_score
from statsmodels.stats.meta_analysis import combine_effects
from statsmodels.stats.proportion import confint_proportions_2indep

from beton_pipeline.core.backtest import BacktestConfig, backtest, backtest_periods, cochran_q, verdicts
from beton_pipeline.core.stats import log_lift_and_variance

MONTHS = np.array(["2025-01", "2025-02", "2025-03", "2025-04", "2025-05", "2025-06"])


def random_accounts(n: int = 6000, n_signals: int = 5, seed: int = 11):
    rng = np.random.default_rng(seed)
    period = rng.choice(MONTHS, size=n)
    fired = rng.random((n, n_signals)) < rng.uniform(0.05, 0.5, n_signals)
    logit = -2.5 + fired @ rng.normal(0.6, 0.5, n_signals)
    converted = rng.random(n) < 1 / (1 + np.exp(-logit))
    arr = np.where(converted, rng.choice([6000.0, 12000.0, 24000.0], size=n), np.nan)
    return fired, period, converted, arr


@pytest.fixture(scope="module")
def data():
    return random_accounts()


@pytest.fixture(scope="module")
def periods(data):
    fired, period, converted, arr = data
    ids = [f"sig_{j}" for j in range(fired.shape[1])]
    return backtest_periods(
        fired, ids, period, converted, arr, BacktestConfig(), holdout_periods=("2025-05", "2025-06")
    )


def test_one_row_per_signal_and_period_with_the_split(periods, data):
    fired = data[0]
    assert periods.height == fired.shape[1] * len(MONTHS)
    assert periods.group_by("signal_id").len().get_column("len").to_list() == [len(MONTHS)] * fired.shape[1]
    assert periods.filter(pl.col("split") == "holdout").get_column("cohort_month").unique().sort().to_list() == [
        "2025-05",
        "2025-06",
    ]
    assert (periods["fired"] + periods["not_fired"] == periods["cohort_accounts"]).all()
    assert (periods["converted"] + periods["converted_not_fired"] == periods["cohort_conversions"]).all()


def test_precision_and_recall_match_scikit_learn(periods, data):
    fired, period, converted, _ = data
    checked = 0
    for row in periods.iter_rows(named=True):
        j = int(row["signal_id"].split("_")[1])
        rows = period == row["cohort_month"]
        assert row["precision"] == pytest.approx(precision_score(converted[rows], fired[rows, j]), abs=1e-9)
        assert row["recall"] == pytest.approx(recall_score(converted[rows], fired[rows, j]), abs=1e-9)
        assert row["fired"] == int(fired[rows, j].sum()) and row["converted"] == int(
            (fired[rows, j] & converted[rows]).sum()
        )
        checked += 1
    assert checked == periods.height


def test_lift_ci_and_projected_arr_ci_match_statsmodels(periods, data):
    _, period, converted, arr = data
    for row in periods.iter_rows(named=True):
        a, n1, c, n2 = row["converted"], row["fired"], row["converted_not_fired"], row["not_fired"]
        assert row["lift"] == pytest.approx((a / n1) / (c / n2), rel=1e-12)
        low, high = confint_proportions_2indep(a, n1, c, n2, compare="ratio", method="log")
        assert row["lift_ci_low"] == pytest.approx(low, rel=1e-9) and row["lift_ci_high"] == pytest.approx(
            high, rel=1e-9
        )
        d_low, d_high = confint_proportions_2indep(a, n1, c, n2, compare="diff", method="newcomb")
        scale = n1 * 12 * row["arr_per_conversion"]
        assert row["projected_arr"] == pytest.approx((a / n1 - c / n2) * scale, rel=1e-9)
        assert row["projected_arr_ci_low"] == pytest.approx(d_low * scale, rel=1e-9)
        assert row["projected_arr_ci_high"] == pytest.approx(d_high * scale, rel=1e-9)
    # ARR per conversion: the mean ARR of the period's converted fired accounts.
    first = periods.row(0, named=True)
    rows = (period == first["cohort_month"]) & data[0][:, 0] & converted
    assert first["arr_per_conversion"] == pytest.approx(np.nanmean(arr[rows]), rel=1e-12)


def test_sparse_and_one_dimensional_inputs_give_the_same_rows(data, periods):
    fired, period, converted, arr = data
    ids = [f"sig_{j}" for j in range(fired.shape[1])]
    sparse = backtest_periods(sp.csr_matrix(fired), ids, period, converted, arr, holdout_periods=("2025-05", "2025-06"))
    assert sparse.equals(periods)
    single = backtest_periods(fired[:, 2], ["sig_2"], period, converted, arr, holdout_periods=("2025-05", "2025-06"))
    assert single.equals(periods.filter(pl.col("signal_id") == "sig_2"))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # statsmodels' random-effects part, not used here
def test_cochran_q_matches_statsmodels_meta_analysis(periods):
    for sid, group in periods.group_by("signal_id"):
        lr, var = log_lift_and_variance(
            group["converted"], group["fired"], group["converted_not_fired"], group["not_fired"]
        )
        q, df, p = cochran_q(lr, var, np.zeros(len(lr), dtype=np.int64), 1)
        ref = combine_effects(lr, var, method_re="chi2")
        assert q[0] == pytest.approx(ref.q, rel=1e-9), sid
        assert df[0] == ref.df_resid


def _constructed(lifts_by_period: list[tuple[int, int, int, int]]):
    """Accounts built so that each period has exactly (fired, converted, not_fired, converted_not_fired)."""
    fired, period, converted = [], [], []
    for i, (n1, a, n2, c) in enumerate(lifts_by_period):
        month = f"2025-{i + 1:02d}"
        fired += [True] * n1 + [False] * n2
        converted += [True] * a + [False] * (n1 - a) + [True] * c + [False] * (n2 - c)
        period += [month] * (n1 + n2)
    return np.array(fired), np.array(period), np.array(converted), np.full(len(fired), 10_000.0)


@pytest.mark.parametrize(
    "cells, verdict",
    [
        ([(200, 40, 800, 80)] * 6, "consistent"),  # lift 2 everywhere
        ([(200, 40, 800, 80)] * 3 + [(200, 10, 800, 80)] * 3, "unstable"),  # lift 2, then 0.5
        ([(200, 40, 800, 80)] * 5 + [(200, 22, 800, 80)], "consistent"),  # one weak month (lift 1.1)
        ([(200, 60, 800, 80)] * 3 + [(200, 21, 800, 80)] * 3, "unstable"),  # lift 3 then 1.05: > 1 always, but fading
        ([(200, 40, 800, 80)] * 2 + [(5, 2, 800, 80)] * 4, "insufficient_data"),  # only 2 periods with ≥ 10 fired
        ([(200, 0, 800, 0)] * 6, "insufficient_data"),  # no conversion at all
        ([(200, 40, 800, 0)] * 4, "consistent"),  # nobody without the signal converted: an infinite lift counts as > 1
    ],
)
def test_verdict_rule(cells, verdict):
    fired, period, converted, arr = _constructed(cells)
    rows = backtest(fired, ["s"], period, converted, arr)
    assert rows["verdict"].unique().to_list() == [verdict], rows["verdict_reason"][0]


def test_verdict_summary_counts_and_reasons():
    fired, period, converted, arr = _constructed([(200, 40, 800, 80)] * 3 + [(200, 10, 800, 80)] * 3)
    summary = verdicts(backtest_periods(fired, ["s"], period, converted, arr))
    row = summary.row(0, named=True)
    assert (row["periods"], row["periods_with_data"], row["periods_lift_above_1"]) == (6, 6, 3)
    assert row["verdict_reason"].startswith("lift > 1 in 3 of 6 periods with enough data")
    assert row["precision_total"] == pytest.approx(150 / 1200) and row["recall_total"] == pytest.approx(150 / 630)


def test_empty_inputs_give_empty_frames():
    assert backtest_periods(np.zeros((0, 0), dtype=bool), [], np.array([]), np.array([]), np.array([])).is_empty()
    with pytest.raises(ValueError, match="signal ids"):
        backtest_periods(np.zeros((3, 2), dtype=bool), ["a"], np.array(["m"] * 3), np.zeros(3), np.zeros(3))
