"""Lead-score model core: metrics against scikit-learn (and statsmodels), the temporal split, the
serialised model, the enabled-signals score and the CRM comparison."""

import itertools

import numpy as np
import polars as pl
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    precision_score,
    recall_score,
    roc_auc_score,
)
from statsmodels.stats.proportion import proportion_confint

from beton_pipeline.core.candidates import (
    FeatureFrames,
    FeatureSpec,
    candidate_hits,
    candidate_matrix,
    pair_parts,
)
from beton_pipeline.core.discovery import choose_holdout
from beton_pipeline.core.model import (
    INTERCEPT_KEY,
    ModelConfig,
    ModelDataError,
    backtest_lead_score,
    calibration_table,
    capacity_k,
    confusion_at,
    crm_comparison,
    design_matrix,
    enabled_signal_scores,
    model_from_frame,
    model_to_frame,
    precision_at_k,
    recall_at_k,
    score_accounts,
    score_buckets,
    scorer_metrics,
    top_k_threshold,
    train_logistic,
    training_rows,
)

WINDOWS = (1, 3, 7, 14)
SPEC = FeatureSpec(windows=WINDOWS, count_thresholds=(1, 2, 3, 5), observation_days=14, intent_lookback_days=90)
PROPERTY_COLUMNS = {
    "account_id": pl.String,
    "event_name": pl.String,
    "property_name": pl.String,
    "property_value": pl.String,
}


def synthetic_frames(n: int = 4000, seed: int = 0, months: int = 10, planted: bool = True) -> FeatureFrames:
    """Accounts over `months` cohort months; `good_event` >= 3 and industry Fintech raise conversion (logit),
    `noise_k` events do nothing; some accounts have a funding round."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"a{i:06d}" for i in range(n)])
    month = np.array([f"2025-{m:02d}" for m in rng.integers(1, months + 1, n)])
    good = rng.poisson(1.5, n) * (rng.random(n) < 0.6)
    industry = rng.choice(["Fintech", "Retail", "Media"], n)
    funding = rng.random(n) < 0.2
    logit = -3.2 + planted * (2.0 * (good >= 3) + 1.0 * (industry == "Fintech") + 1.0 * funding)
    converted = rng.random(n) < 1 / (1 + np.exp(-logit))
    accounts = pl.DataFrame(
        {
            "account_id": ids,
            "cohort_month": pl.Series(month).str.to_date("%Y-%m"),
            "converted": converted,
            "arr": np.where(converted, 6000.0, np.nan),
            "industry": industry,
            "employee_band": rng.choice(["1-9", "10-49"], n),
            "plan_interval": rng.choice(["month", "year"], n),
        }
    )
    rows = []
    for name, counts in [("good_event", good)] + [(f"noise_{k}", rng.poisson(1.2, n)) for k in range(8)]:
        mask = counts > 0
        c = counts[mask]
        rows.append(
            pl.DataFrame(
                {
                    "account_id": ids[mask],
                    "event_name": name,
                    "n_first_1d": np.minimum(c, 1),
                    "n_first_3d": np.minimum(c, 2),
                    "n_first_7d": c,
                    "n_first_14d": c,
                }
            )
        )
    intent = pl.DataFrame(
        {"account_id": ids[funding], "signal_type": "funding_round", "n_before_start": 1, "n_before_window_end": 1},
        schema_overrides={"n_before_start": pl.Int64, "n_before_window_end": pl.Int64},
    )
    properties = pl.DataFrame(schema={**PROPERTY_COLUMNS, **{f"n_first_{d}d": pl.Int64 for d in WINDOWS}})
    return FeatureFrames(accounts=accounts, events=pl.concat(rows), properties=properties, intent=intent)


ENABLED = pl.DataFrame(
    {
        "candidate_key": [
            "event:good_event:first_14d:>=3",
            "attribute:industry=Fintech",
            "pair:attribute:industry=Fintech&event:good_event:first_14d:>=3",
        ],
        "lift": [2.5, 1.6, 3.1],
    }
)


@pytest.fixture(scope="module")
def frames() -> FeatureFrames:
    return synthetic_frames()


@pytest.fixture(scope="module")
def backtest(frames):
    return backtest_lead_score(frames, ENABLED, SPEC, ModelConfig(min_candidate_support=10, holdout_fraction=0.3))


# --- precision and recall at k ---------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 7, 50, 199, 200])
def test_precision_and_recall_at_k_equal_sklearn_on_the_top_k_without_ties(k):
    rng = np.random.default_rng(k)
    y = rng.random(200) < 0.2
    scores = rng.random(200)
    top = np.zeros(200, bool)
    top[np.argsort(-scores)[:k]] = True
    assert precision_at_k(y, scores, k) == pytest.approx(precision_score(y, top), abs=1e-12)
    assert recall_at_k(y, scores, k) == pytest.approx(recall_score(y, top), abs=1e-12)
    assert top_k_threshold(scores, k) == np.sort(scores)[::-1][k - 1]


@pytest.mark.parametrize("k", [1, 3, 4, 6, 9])
def test_precision_at_k_with_ties_is_the_mean_over_every_tie_break(k):
    scores = np.array([5, 4, 4, 4, 4, 2, 2, 2, 1, 0], dtype=float)
    y = np.array([1, 1, 0, 1, 0, 0, 1, 1, 0, 1], dtype=bool)
    t = top_k_threshold(scores, k)
    above, tied = np.flatnonzero(scores > t), np.flatnonzero(scores == t)
    precisions, recalls = [], []
    for chosen in itertools.combinations(tied, k - above.size):  # every way to break the tie
        top = np.zeros(scores.size, bool)
        top[above] = True
        top[list(chosen)] = True
        precisions.append(precision_score(y, top))
        recalls.append(recall_score(y, top))
    assert precision_at_k(y, scores, k) == pytest.approx(np.mean(precisions), abs=1e-9)
    assert recall_at_k(y, scores, k) == pytest.approx(np.mean(recalls), abs=1e-9)


def test_constant_scores_give_the_base_rate_at_any_k():
    y = np.array([1, 0, 0, 0, 1, 0, 0, 0, 0, 0], bool)
    for k in (1, 5, 10):
        assert precision_at_k(y, np.zeros(10), k) == pytest.approx(0.2, abs=1e-12)


def test_capacity_k():
    assert capacity_k(2029, 4, None) == 203  # ceil(10 %)
    assert capacity_k(2029, 4, 30) == 120  # 30 a month over 4 test months
    assert capacity_k(100, 4, 80) == 100  # never more than the test set
    assert capacity_k(0, 4, 30) == 0


# --- metrics, calibration, confusion ---------------------------------------------------------
def test_scorer_metrics_are_sklearn_metrics():
    rng = np.random.default_rng(3)
    y = rng.random(500) < 0.15
    p = np.clip(0.15 + 0.2 * (y - 0.15) + rng.normal(0, 0.1, 500), 0.001, 0.999)
    m = scorer_metrics("model", y, p, p, k=50)
    assert m.roc_auc == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m.pr_auc == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert m.brier == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    assert m.lift_at_k == pytest.approx(m.precision_at_k / y.mean(), abs=1e-12)
    single = scorer_metrics("model", np.zeros(20, bool), rng.random(20), np.full(20, 0.1), k=2)
    assert np.isnan(single.roc_auc) and np.isnan(single.pr_auc)


def test_calibration_deciles_equal_sklearn_calibration_curve_and_wilson_equals_statsmodels():
    rng = np.random.default_rng(11)
    p = rng.beta(1, 8, 1000)
    y = rng.random(1000) < p
    table = calibration_table("model", y, p, p, n_buckets=10)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="quantile")
    assert table.get_column("n_accounts").to_list() == [100] * 10
    np.testing.assert_allclose(table.get_column("observed_rate").to_numpy(), prob_true, rtol=0, atol=1e-9)
    np.testing.assert_allclose(table.get_column("predicted_mean").to_numpy(), prob_pred, rtol=0, atol=1e-9)
    low, high = proportion_confint(
        table.get_column("conversions").to_numpy(), table.get_column("n_accounts").to_numpy(), method="wilson"
    )
    np.testing.assert_allclose(table.get_column("observed_ci_low").to_numpy(), low, atol=1e-9)
    np.testing.assert_allclose(table.get_column("observed_ci_high").to_numpy(), high, atol=1e-9)


def test_buckets_keep_ties_together_and_put_the_highest_scores_last():
    scores = np.array([0, 0, 0, 0, 0, 0, 1, 2, 3, 9], float)
    buckets = score_buckets(scores, 10)
    assert set(buckets[:6]) == {1} and buckets[-1] == 10
    assert np.all(np.diff(buckets[np.argsort(scores, kind="stable")]) >= 0)


def test_confusion_at_threshold_is_sklearn_confusion_matrix():
    rng = np.random.default_rng(5)
    y = rng.random(300) < 0.2
    s = rng.random(300) + 0.3 * y
    t = top_k_threshold(s, 30)
    c = confusion_at("model", "converted", y, s, t, 30)
    qualified = s >= t
    assert [[c.tn, c.fp], [c.fn, c.tp]] == confusion_matrix(y, qualified).tolist()
    assert c.n_qualified == 30
    assert c.precision == pytest.approx(precision_score(y, qualified), abs=1e-12)
    assert c.recall == pytest.approx(recall_score(y, qualified), abs=1e-12)


# --- the backtest -------------------------------------------------------------------------------
def test_split_is_discoverys_temporal_holdout(frames, backtest):
    months = frames.accounts.get_column("cohort_month").dt.strftime("%Y-%m")
    sizes = months.value_counts().rename({"count": "n_eligible"})
    assert backtest.split == choose_holdout(sizes, 0.3)
    assert set(backtest.test_scores.get_column("cohort_month")) == set(backtest.split.holdout_months)
    assert max(backtest.split.discovery_months) < min(backtest.split.holdout_months)
    assert backtest.model.n_train + backtest.test_scores.height == frames.accounts.height


def test_model_and_signals_beat_the_base_rate_and_metrics_match_the_test_scores(backtest):
    scores = backtest.test_scores
    y = scores.get_column("converted").to_numpy()
    assert backtest.metric("model", "roc_auc") == pytest.approx(
        roc_auc_score(y, scores.get_column("model").to_numpy()), abs=1e-12
    )
    assert backtest.metric("signals", "roc_auc") == pytest.approx(
        roc_auc_score(y, scores.get_column("signals_count").to_numpy()), abs=1e-12
    )
    assert backtest.metric("model", "roc_auc") > 0.65
    assert backtest.metric("signals", "roc_auc") > 0.6
    assert backtest.metric("base_rate", "roc_auc") == pytest.approx(0.5)
    assert backtest.metric("base_rate", "pr_auc") == pytest.approx(y.mean(), abs=1e-12)
    assert backtest.metric("model", "precision_at_k") > backtest.metric("base_rate", "precision_at_k")
    assert set(backtest.metrics.get_column("scorer")) == {"model", "signals", "signals_weighted", "base_rate"}
    # the planted features carry the largest coefficients
    top = backtest.features.filter(pl.col("kind") != "intercept").head(3).get_column("feature_key").to_list()
    assert any(k.startswith("event:good_event") for k in top)


def test_serialised_model_scores_exactly_like_the_sklearn_estimator(frames, backtest):
    model = model_from_frame(backtest.features)
    assert model.intercept == backtest.model.intercept and model.spec == SPEC
    assert backtest.features.filter(pl.col("feature_key") == INTERCEPT_KEY).height == 1
    # refit independently on the same training rows: the same estimator, whose predict_proba is the reference
    _, train = training_rows(frames, 0.3)
    full = design_matrix(frames, SPEC, backtest.model.feature_keys)
    y = frames.accounts.get_column("converted").to_numpy()
    estimator = train_logistic(full.matrix[train], y[train], ModelConfig()).estimator
    expected = estimator.predict_proba(full.matrix)[:, 1]
    np.testing.assert_allclose(score_accounts(model, frames), expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(score_accounts(backtest.model, frames), expected, rtol=0, atol=1e-9)
    test_ids = set(backtest.test_scores.get_column("account_id"))
    in_test = frames.accounts.get_column("account_id").is_in(list(test_ids)).to_numpy()
    np.testing.assert_allclose(backtest.test_scores.get_column("model").to_numpy(), expected[in_test], atol=1e-12)


def test_scoring_new_accounts_missing_some_features(backtest):
    fresh = synthetic_frames(n=200, seed=9)
    fresh = FeatureFrames(
        fresh.accounts,
        fresh.events.filter(pl.col("event_name") != "good_event"),
        fresh.properties,
        fresh.intent.head(0),
    )
    p = score_accounts(backtest.model, fresh)
    assert p.shape == (200,) and np.all((p > 0) & (p < 1))


def test_not_enough_data_is_a_clear_error():
    one_month = synthetic_frames(n=300, months=1)
    with pytest.raises(ModelDataError, match="cohort month"):
        backtest_lead_score(one_month, ENABLED, SPEC, ModelConfig())
    frames = synthetic_frames(n=300)
    no_conversion = FeatureFrames(
        frames.accounts.with_columns(pl.lit(False).alias("converted")), frames.events, frames.properties, frames.intent
    )
    with pytest.raises(ModelDataError, match="0 conversion"):
        backtest_lead_score(no_conversion, ENABLED, SPEC, ModelConfig())


# --- the enabled-signals score -----------------------------------------------------------------
def test_signals_score_counts_enabled_signals_including_pairs(frames):
    candidates = candidate_matrix(frames, SPEC)
    count, weighted = enabled_signal_scores(candidates, ENABLED)
    hits = candidate_hits(frames, FeatureSpec(WINDOWS, (1, 2, 3, 5), 14, 90))
    good = set(hits.filter(pl.col("key") == "event:good_event:first_14d:>=3").get_column("account_id"))
    fintech = set(hits.filter(pl.col("key") == "attribute:industry=Fintech").get_column("account_id"))
    ids = frames.accounts.get_column("account_id").to_list()
    has_good = np.array([i in good for i in ids])
    has_fin = np.array([i in fintech for i in ids])
    np.testing.assert_array_equal(count, has_good.astype(int) + has_fin + (has_good & has_fin))
    expected = has_good * np.log(2.5) + has_fin * np.log(1.6) + (has_good & has_fin) * np.log(3.1)
    np.testing.assert_allclose(weighted, expected, atol=1e-12)


def test_pair_parts_split_on_the_right_ampersand():
    known = {"property:$pageview:$current_url=/a&b", "event:x:first_7d:>=1"}
    assert pair_parts("pair:event:x:first_7d:>=1&property:$pageview:$current_url=/a&b", known) == (
        "event:x:first_7d:>=1",
        "property:$pageview:$current_url=/a&b",
    )
    assert pair_parts("pair:unknown&other", known) is None


def test_unknown_enabled_signal_scores_zero(frames):
    candidates = candidate_matrix(frames, FeatureSpec(WINDOWS, (1,), 14, 90))
    count, _ = enabled_signal_scores(
        candidates, pl.DataFrame({"candidate_key": ["event:never:first_1d:>=1"], "lift": [2.0]})
    )
    assert count.sum() == 0


# --- CRM comparison ----------------------------------------------------------------------------
def test_crm_comparison_confusion_and_lists():
    rng = np.random.default_rng(2)
    n = 400
    ids = [f"a{i}" for i in range(n)]
    score = rng.random(n)
    has_deal = rng.random(n) < 0.3
    progressed = rng.random(n) < 0.2 + 0.5 * score
    test_scores = pl.DataFrame({"account_id": ids, "cohort_month": "2025-09", "converted": False, "model": score})
    progress = pl.DataFrame(
        {
            "account_id": np.array(ids)[has_deal],
            "n_deals": 1,
            "progressed": progressed[has_deal],
            "latest_stage": "demo",
            "latest_changed_at": None,
            "latest_reason": "why",
            "reason_stage": "demo",
        },
        schema_overrides={"latest_changed_at": pl.Datetime("us"), "n_deals": pl.Int64},
    )
    t = top_k_threshold(score, 40)
    crm = crm_comparison(test_scores, progress, "model", t, 40)
    qualified = score[has_deal] >= t
    truth = progressed[has_deal]
    assert [[crm.confusion.tn, crm.confusion.fp], [crm.confusion.fn, crm.confusion.tp]] == confusion_matrix(
        truth, qualified
    ).tolist()
    assert crm.confusion.precision == pytest.approx(precision_score(truth, qualified), abs=1e-12)
    assert crm.confusion.recall == pytest.approx(recall_score(truth, qualified), abs=1e-12)
    assert crm.qualified_without_deal == int(((score >= t) & ~has_deal).sum())
    fp_ids = set(np.array(ids)[has_deal][qualified & ~truth])
    assert set(crm.false_positives.get_column("account_id")) == fp_ids
    assert set(crm.false_negatives.get_column("account_id")) == set(np.array(ids)[has_deal][~qualified & truth])
    assert crm.false_positives.get_column("score").is_sorted(descending=True)


def test_model_frame_round_trip_keeps_only_nonzero_coefficients(backtest):
    frame = model_to_frame(backtest.model)
    rebuilt = model_from_frame(frame)
    nonzero = backtest.model.coefficients != 0
    kept = dict(
        zip(
            np.array(backtest.model.feature_keys, dtype=object)[nonzero],
            backtest.model.coefficients[nonzero],
            strict=True,
        )
    )
    assert dict(zip(rebuilt.feature_keys, rebuilt.coefficients, strict=True)) == kept
    assert list(frame.get_column("rank")) == list(range(len(kept) + 1))  # 0 = intercept, then by |coefficient|
    assert frame.get_column("coefficient").slice(1).abs().is_sorted(descending=True)
    assert (
        rebuilt.qualify_threshold == backtest.model.qualify_threshold
        and rebuilt.trained_months == backtest.model.trained_months
    )
    with pytest.raises(ModelDataError):
        model_from_frame(frame.head(0))
