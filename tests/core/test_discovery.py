"""Discovery core: counting by sparse product, temporal split, pairs, recommendation rules."""

import numpy as np
import polars as pl
import pytest

from beton_pipeline.core.candidates import (
    FeatureFrames,
    FeatureSpec,
    build_candidate_matrix,
    candidate_hits,
    signal_id,
    sufficient_statistics,
)
from beton_pipeline.core.discovery import (
    DiscoveryConfig,
    choose_holdout,
    cohort_counts_from_matrix,
    cohort_labels,
    discover_from_cohort_counts,
    matrix_pair_source,
    pair_counts,
    span_days,
    temporal_split,
)

WINDOWS = (1, 3, 7, 14)


def synthetic_frames(n: int = 6000, seed: int = 0, planted_lift: bool = True) -> FeatureFrames:
    """Accounts over 12 cohort months; `good_event` >= 3 raises conversion, `noise_k` do nothing."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"a{i:06d}" for i in range(n)])
    months = np.array([f"2025-{m:02d}" for m in rng.integers(1, 13, n)])
    good = rng.poisson(1.5, n) * (rng.random(n) < 0.5)
    p = np.where((good >= 3) & planted_lift, 0.25, 0.08)
    converted = rng.random(n) < p
    accounts = pl.DataFrame(
        {
            "account_id": ids,
            "cohort_month": pl.Series(months).str.to_date("%Y-%m"),
            "converted": converted,
            "arr": np.where(converted, 6000.0, np.nan),
            "industry": rng.choice(["Fintech", "Retail", "Media"], n),
            "employee_band": rng.choice(["1-9", "10-49"], n),
            "plan_interval": rng.choice(["month", "year"], n),
        }
    )
    rows = []
    for name, counts in [("good_event", good)] + [(f"noise_{k}", rng.poisson(1.2, n)) for k in range(15)]:
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
    events = pl.concat(rows)
    empty_props = pl.DataFrame(
        schema={
            "account_id": pl.String,
            "event_name": pl.String,
            "property_name": pl.String,
            "property_value": pl.String,
            **{f"n_first_{d}d": pl.Int64 for d in WINDOWS},
        }
    )
    intent = pl.DataFrame(
        schema={
            "account_id": pl.String,
            "signal_type": pl.String,
            "n_before_start": pl.Int64,
            "n_before_window_end": pl.Int64,
        }
    )
    return FeatureFrames(accounts=accounts, events=events, properties=empty_props, intent=intent)


def run(frames: FeatureFrames, config: DiscoveryConfig = DiscoveryConfig(), converted=None):
    hits = candidate_hits(frames, FeatureSpec(WINDOWS, (1, 2, 3, 5), 14, 90))
    matrix = build_candidate_matrix(frames, hits)
    months = cohort_labels(frames)
    y = frames.accounts.get_column("converted").to_numpy() if converted is None else converted
    arr = np.where(y, 6000.0, 0.0)
    counts = cohort_counts_from_matrix(matrix, months, y, arr)
    return discover_from_cohort_counts(counts, matrix_pair_source(matrix, months, y, arr), config, 0.3)


def test_sparse_counts_equal_a_group_by():
    frames = synthetic_frames(2000)
    hits = candidate_hits(frames, FeatureSpec(WINDOWS, (1, 2, 3), 14, 90))
    matrix = build_candidate_matrix(frames, hits)
    y = frames.accounts.get_column("converted").to_numpy()
    stats = sufficient_statistics(matrix, y, np.where(y, 1.0, 0.0))
    brute = (
        hits.select("account_id", "key")
        .unique()
        .join(frames.accounts.select("account_id", "converted"), on="account_id")
        .group_by("key")
        .agg(pl.len().alias("n"), pl.col("converted").sum().alias("c"))
    )
    joined = stats.join(brute, on="key")
    assert joined.height == stats.height
    assert (joined["n_with"] == joined["n"]).all() and (joined["conversions_with"] == joined["c"]).all()


def test_pair_counts_equal_brute_force():
    frames = synthetic_frames(1500)
    hits = candidate_hits(frames, FeatureSpec(WINDOWS, (1, 2), 14, 90))
    matrix = build_candidate_matrix(frames, hits)
    y = frames.accounts.get_column("converted").to_numpy()
    keys = ["event:good_event:first_7d:>=1", "event:noise_1:first_7d:>=2", "attribute:industry=Fintech"]
    pairs = pair_counts(matrix, keys, y, np.zeros(len(y)))
    dense = matrix.matrix.toarray().astype(bool)
    col = {k: i for i, k in enumerate(matrix.candidates["key"])}
    for row in pairs.iter_rows(named=True):
        both = dense[:, col[row["part_a"]]] & dense[:, col[row["part_b"]]]
        assert row["n_with"] == both.sum() and row["conversions_with"] == (both & y).sum()
    assert pairs.height == 3


def test_holdout_takes_the_latest_months():
    sizes = pl.DataFrame({"cohort_month": [f"2025-{m:02d}" for m in range(1, 11)], "n_eligible": [100] * 10})
    split = choose_holdout(sizes, 0.3)
    assert split.holdout_months == ("2025-08", "2025-09", "2025-10")
    assert (split.n_discovery, split.n_holdout) == (700, 300)
    assert choose_holdout(sizes.head(1), 0.3).holdout_months == ()  # one month: nothing to hold out
    assert span_days(("2025-01", "2025-12")) == pytest.approx(365.0)


def test_temporal_split_of_accounts_is_choose_holdout_on_their_months():
    months = np.array(["2025-03"] * 50 + ["2025-01"] * 100 + ["2025-02"] * 100 + ["2025-04"] * 50)
    split = temporal_split(months, 0.3)
    assert split.discovery_months == ("2025-01", "2025-02") and split.holdout_months == ("2025-03", "2025-04")
    assert (split.n_discovery, split.n_holdout) == (200, 100)
    sizes = pl.DataFrame(
        {"cohort_month": ["2025-01", "2025-02", "2025-03", "2025-04"], "n_eligible": [100, 100, 50, 50]}
    )
    assert split == choose_holdout(sizes, 0.3)
    assert temporal_split(np.array(["2025-01"] * 10), 0.3).holdout_months == ()


def test_cohort_labels_from_dates_and_from_text():
    frames = synthetic_frames(50)
    labels = cohort_labels(frames)
    assert labels.dtype.kind == "U" and all(len(m) == 7 for m in labels)
    as_text = frames.accounts.with_columns(pl.col("cohort_month").dt.strftime("%Y-%m-%d"))
    same = FeatureFrames(accounts=as_text, events=frames.events, properties=frames.properties, intent=frames.intent)
    assert (cohort_labels(same) == labels).all()


def test_planted_signal_enabled_at_its_threshold_and_noise_rejected():
    result = run(synthetic_frames(8000)).signals
    enabled = result.filter(pl.col("recommendation") == "enable")
    assert enabled.filter(pl.col("event") == "good_event").height == 1
    best = enabled.filter(pl.col("event") == "good_event").row(0, named=True)
    assert best["threshold"] == 3
    assert enabled.filter(pl.col("event").str.starts_with("noise")).height == 0
    # one row per family is the best; its near-duplicates are listed as alternatives
    fam = result.filter(pl.col("family") == "event:good_event")
    assert fam["is_family_best"].sum() == 1 and fam.height > 1
    assert signal_id(best["key"]) == best["signal_id"]


def test_every_candidate_counts_in_the_fdr_denominator():
    result = run(synthetic_frames(3000)).signals
    q = result.sort("p_value")["q_value"].to_numpy()
    assert np.all(np.diff(q) >= -1e-15)
    assert (result["q_value"] >= result["p_value"]).all()


def test_shuffled_outcomes_rarely_enable_anything():
    """Null data (outcomes permuted across accounts), 20 seeds: runs with any `enable` stay near fdr_alpha or below."""
    frames = synthetic_frames(3000, seed=3)
    y0 = frames.accounts.get_column("converted").to_numpy()
    runs_with_enable = sum(
        run(frames, converted=np.random.default_rng(seed).permutation(y0))
        .signals.filter(pl.col("recommendation") == "enable")
        .height
        > 0
        for seed in range(20)
    )
    assert runs_with_enable <= 2  # 0.05 × 20 = 1 expected at most; holdout replication makes it rarer
