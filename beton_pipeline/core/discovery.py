"""Signal discovery: from per-cohort candidate counts to `beton.signals`.

Method (README, "How discovery decides"):

1. **Temporal split.** Eligible cohorts (outcome window closed) are ordered by cohort month; the latest
   months holding at least `holdout_fraction` of eligible accounts are the *holdout*, the rest the
   *discovery* set. Every statistic below is computed on the discovery set; the holdout only re-measures.
2. **Support filter** (outcome-blind, so it does not bias the tests): a candidate is tested when it
   fired for at least `min_candidate_support` discovery accounts (`min_property_support` for property
   values) and did not fire for at least as many. With `auto` count thresholds, `choose_count_thresholds`
   then keeps, per event and window, at most `max_thresholds_per_event` thresholds chosen from the
   distribution of counts among the discovery accounts (also outcome-blind).
3. **Statistics per candidate** (`core.stats.compare_proportions`): rates with/without, lift =
   rate_with / rate_without with a Katz log CI, two-sided p from the pooled two-proportion z-test, or
   Fisher's exact test when an expected cell is below 5.
4. **Pairs.** The `pair_top_k` strongest single candidates (lowest p with lift > 1, one per family)
   on the even-numbered discovery months are combined pairwise (AND) across families and tested on
   the odd-numbered discovery months only, so a pair is never tested on the data that chose it. They
   can only be enabled if they replicate in the holdout, clear both parts' lifts, and their parts are
   not both enabled already.
5. **False-discovery control.** Benjamini–Hochberg q-values over every candidate tested in the run:
   every event, window, threshold, property value, attribute value, intent type and pair.
6. **Holdout replication.** The same counts on the holdout give `holdout_lift` (with CI and p).
7. **Recommendation** (`recommend`): `enable` when q ≤ fdr_alpha, lift ≥ min_lift, lift CI low > 1,
   n_with ≥ min_sample, and the holdout replicates (holdout lift > 1 with one-sided p < 0.05, i.e.
   two-sided p < 0.10 in the same direction); `review` when significant but not all of those hold;
   `reject` otherwise. Within a family (one event across windows and thresholds) only the best
   candidate (highest lift CI low bound among those that qualify) keeps its recommendation; the
   others are `reject`ed as alternatives and listed on the best row.
8. **Projected ARR** = (rate_with − rate_without) × accounts with the signal per year × ARR per
   conversion (mean observed ARR of converted accounts with the signal, else `revenue.acv`):
   the annual revenue from the signal's accounts converting above the others' rate. It is an
   association, not a causal estimate; playbook holdouts measure causation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from beton_pipeline.core.candidates import (
    DENSE_COUNT_LIMIT,
    CandidateMatrix,
    FeatureFrames,
    pair_key,
    signal_ids,
    sufficient_statistics,
)
from beton_pipeline.core.stats import benjamini_hochberg, compare_proportions

CUSTOM_KINDS = ("condition", "sql")
"""Kinds of user-defined signals (beton.signals `source = 'custom'`): tested whatever their support, never paired."""

HOLDOUT_REPLICATION_P = 0.10
"""Two-sided holdout p below this, with holdout lift > 1, counts as replication (one-sided 0.05)."""


@dataclass(frozen=True)
class DiscoveryConfig:
    """The settings discovery reads (beton.yaml `thresholds`, `discovery`, `revenue`)."""

    confidence_level: float = 0.95
    fdr_alpha: float = 0.05
    min_sample: int = 30
    min_lift: float = 1.3
    min_candidate_support: int = 10
    min_property_support: int = 20
    pair_top_k: int = 12
    acv: float = 12_000.0
    max_thresholds_per_event: int | None = None
    """With `auto` count thresholds: the most thresholds tested per event and window (`choose_count_thresholds`);
    None (an explicit `count_thresholds` list) tests every listed threshold."""


@dataclass(frozen=True)
class HoldoutSplit:
    """Which eligible cohort months are discovery and which are holdout."""

    discovery_months: tuple
    holdout_months: tuple
    n_discovery: int
    n_holdout: int


def choose_holdout(cohort_sizes: pl.DataFrame, holdout_fraction: float) -> HoldoutSplit:
    """Split eligible cohorts in time: the latest months whose accounts add up to ≥ `holdout_fraction`.

    `cohort_sizes` has `cohort_month` and `n_eligible`. At least one month stays in discovery.
    """
    sizes = cohort_sizes.filter(pl.col("n_eligible") > 0).sort("cohort_month")
    months = sizes.get_column("cohort_month").to_list()
    counts = sizes.get_column("n_eligible").to_numpy()
    total = int(counts.sum())
    n_hold_months = 0
    if holdout_fraction > 0 and len(months) > 1:
        from_latest = np.cumsum(counts[::-1])
        n_hold_months = int(np.searchsorted(from_latest, holdout_fraction * total) + 1)
        n_hold_months = min(n_hold_months, len(months) - 1)
    split = len(months) - n_hold_months
    return HoldoutSplit(
        discovery_months=tuple(months[:split]),
        holdout_months=tuple(months[split:]),
        n_discovery=int(counts[:split].sum()),
        n_holdout=int(counts[split:].sum()),
    )


def cohort_labels(frames: FeatureFrames) -> np.ndarray:
    """Each account's cohort month as `YYYY-MM` text (the partition keys of `signal_cohort_counts`)."""
    month = frames.accounts.get_column("cohort_month")
    labels = month.str.slice(0, 7) if month.dtype == pl.String else month.dt.strftime("%Y-%m")
    return labels.to_numpy().astype(str)


def temporal_split(cohort_months: np.ndarray, holdout_fraction: float) -> HoldoutSplit:
    """Discovery's split of accounts, given each account's cohort month (`cohort_labels`): `choose_holdout`
    on the number of accounts per month. Every per-account consumer (custom signals, backtests, the lead
    score, calibration) splits with this, so they all hold out the same later months as discovery."""
    labels, counts = np.unique(np.asarray(cohort_months).astype(str), return_counts=True)
    sizes = pl.DataFrame({"cohort_month": labels.tolist(), "n_eligible": counts.astype(np.int64)})
    return choose_holdout(sizes, holdout_fraction)


CANDIDATE_COLUMNS = [
    "key",
    "signal_id",
    "kind",
    "family",
    "definition",
    "event",
    "property",
    "value",
    "window_days",
    "threshold",
]
COUNT_COLUMNS = ["n_with", "conversions_with", "arr_with", "n_total", "conversions_total"]


def sum_counts(cohort_counts: pl.DataFrame, months: tuple) -> pl.DataFrame:
    """Add up per-cohort sufficient statistics over `months`; totals come from the cohorts, not the candidates.

    A candidate absent from a cohort fired for nobody there, so its n_with is 0 but that cohort's
    accounts still count in n_total.
    """
    selected = cohort_counts.filter(pl.col("cohort_month").is_in(list(months)))
    totals = selected.group_by("cohort_month").agg(pl.col("n_total").first(), pl.col("conversions_total").first())
    n_total = int(totals.get_column("n_total").sum()) if totals.height else 0
    conv_total = int(totals.get_column("conversions_total").sum()) if totals.height else 0
    return (
        selected.group_by(CANDIDATE_COLUMNS)
        .agg(pl.col("n_with").sum(), pl.col("conversions_with").sum(), pl.col("arr_with").sum())
        .with_columns(
            pl.lit(n_total, pl.Int64).alias("n_total"), pl.lit(conv_total, pl.Int64).alias("conversions_total")
        )
    )


def evaluate(counts: pl.DataFrame, confidence_level: float, prefix: str = "") -> pl.DataFrame:
    """Add rates, lift, its CI, p-value and method to a frame of counts (columns named with `prefix`)."""
    a = counts.get_column("conversions_with").to_numpy().astype(np.int64)
    n1 = counts.get_column("n_with").to_numpy().astype(np.int64)
    n2 = counts.get_column("n_total").to_numpy().astype(np.int64) - n1
    c = counts.get_column("conversions_total").to_numpy().astype(np.int64) - a
    r = compare_proportions(a, n1, c, n2, confidence_level=confidence_level)
    return counts.with_columns(
        pl.Series(f"{prefix}n_without", n2),
        pl.Series(f"{prefix}conversions_without", c),
        pl.Series(f"{prefix}rate_with", r.rate_with),
        pl.Series(f"{prefix}rate_without", r.rate_without),
        pl.Series(f"{prefix}lift", r.lift),
        pl.Series(f"{prefix}lift_ci_low", r.lift_ci_low),
        pl.Series(f"{prefix}lift_ci_high", r.lift_ci_high),
        pl.Series(f"{prefix}p_value", r.p_value),
        pl.Series(f"{prefix}method", [str(m) for m in r.method], dtype=pl.String),
    )


def supported(counts: pl.DataFrame, config: DiscoveryConfig) -> pl.DataFrame:
    """Candidates with enough accounts on both sides to be tested (an outcome-blind filter)."""
    need = (
        pl.when(pl.col("kind").is_in(CUSTOM_KINDS))
        .then(0)
        .when(pl.col("kind") == "event_property")
        .then(config.min_property_support)
        .otherwise(config.min_candidate_support)
    )
    return counts.filter((pl.col("n_with") >= need) & ((pl.col("n_total") - pl.col("n_with")) >= need))


def choose_count_thresholds(counts: pl.DataFrame, cap: int, min_support: int) -> pl.DataFrame:
    """The event-count candidates worth testing, per event and window, from the distribution of counts.

    `counts` holds event-count candidates with `family`, `window_days`, `threshold`, `n_with` (accounts
    whose count reaches the threshold: the distribution's survival function) and `n_total`. Per event and
    window, of the thresholds that leave at least `min_support` accounts on both sides:

    1. a threshold reaching exactly the accounts of a smaller one is the same candidate: dropped;
    2. small counts (≤ DENSE_COUNT_LIMIT) keep every integer, so an effect that starts at 4 is tested at 4;
    3. the rest (counts in the dozens or hundreds) become quantile cut points: their share of accounts is
       cut into equal bands and the smallest threshold of each band is kept, filling the cap;
    4. when the small integers alone exceed the cap, they are cut into `cap` bands the same way.

    Only counts of accounts are read, never outcomes, so the choice cannot select thresholds for their
    results and the tests that follow keep their p-values (no selection bias). Every threshold kept is
    tested and counts in the Benjamini–Hochberg family; the ones dropped are not tested at all.
    Returns the kept rows of `counts` (at most `cap` per event and window, sorted, unique, all ≥ 1).
    """
    group = ["family", "window_days"]
    ranked = (
        counts.filter(
            (pl.col("threshold") >= 1)
            & (pl.col("n_with") >= min_support)
            & ((pl.col("n_total") - pl.col("n_with")) >= min_support)
        )
        .sort([*group, "threshold"])
        .filter(pl.col("n_with").ne_missing(pl.col("n_with").shift(1).over(group)))
        .with_columns((pl.col("threshold") <= DENSE_COUNT_LIMIT).alias("_dense"))
        .with_columns(
            pl.col("_dense").sum().over(group).cast(pl.Int64).alias("_n_dense")
        )  # Int64: cap - n must not wrap
    )
    # slots per part: the dense integers get the cap, the tail what they leave; a part that fits is kept whole
    slots = (
        pl.when(pl.col("_dense"))
        .then(pl.lit(cap))
        .otherwise(pl.max_horizontal(pl.lit(cap) - pl.col("_n_dense"), pl.lit(0)))
    )
    part = [*group, "_dense"]
    first, last = pl.col("n_with").max().over(part), pl.col("n_with").min().over(part)
    band = (
        pl.when(pl.len().over(part) <= slots)
        .then(pl.int_range(pl.len()).over(part))
        .when(first == last)
        .then(0)
        .otherwise(((first - pl.col("n_with")) * (slots - 1) / (first - last)).floor())
        .cast(pl.Int64)
    )
    kept = ranked.with_columns(slots.alias("_slots"), band.alias("_band")).filter(
        (pl.col("_slots") > 0) & (pl.int_range(pl.len()).over([*part, "_band"]) == 0)
    )
    return kept.drop("_dense", "_n_dense", "_slots", "_band").sort([*group, "threshold"])


def select_candidates(counts: pl.DataFrame, config: DiscoveryConfig) -> pl.DataFrame:
    """`supported` candidates, with `auto` event-count thresholds narrowed by `choose_count_thresholds`."""
    tested = supported(counts, config)
    if config.max_thresholds_per_event is None or tested.is_empty():
        return tested
    is_count = pl.col("kind") == "event_count"
    chosen = choose_count_thresholds(
        tested.filter(is_count), config.max_thresholds_per_event, config.min_candidate_support
    )
    return pl.concat([tested.filter(~is_count), chosen.select(tested.columns)], how="vertical_relaxed")


def top_singles(tested: pl.DataFrame, k: int) -> list[str]:
    """Keys of the k strongest single candidates: lowest p with lift > 1, at most one per family."""
    if k <= 0 or tested.is_empty():
        return []
    return (
        tested.filter(~pl.col("kind").is_in(["pair", *CUSTOM_KINDS]) & (pl.col("lift") > 1))
        .sort(["p_value", "key"])
        .unique(subset="family", keep="first", maintain_order=True)
        .head(k)
        .get_column("key")
        .to_list()
    )


def pair_counts(matrix: CandidateMatrix, keys: list[str], converted: np.ndarray, arr: np.ndarray) -> pl.DataFrame:
    """Counts for every AND-pair of `keys` (different families) in three dense products XₖᵀWXₖ.

    With Xₖ the accounts × k membership of the chosen singles and W = diag(w) for w ∈ {1, y, y·arr}:
    n_with(i,j) = Σ X_i X_j, conversions_with(i,j) = Σ X_i X_j y, arr_with(i,j) = Σ X_i X_j y arr.
    """
    cands = matrix.candidates
    index = {key: i for i, key in enumerate(cands.get_column("key").to_list())}
    cols = [index[k] for k in keys if k in index]
    if len(cols) < 2:
        return pl.DataFrame()
    xk = matrix.matrix[:, cols].toarray()
    y = converted.astype(np.float64)
    arr_y = np.where(y > 0, np.nan_to_num(arr.astype(np.float64)), 0.0)
    n_pair = xk.T @ xk
    conv_pair = xk.T @ (xk * y[:, None])
    arr_pair = xk.T @ (xk * arr_y[:, None])
    sub = cands[cols]
    families = sub.get_column("family").to_list()
    iu, ju = np.triu_indices(len(cols), k=1)
    keep = np.array([families[i] != families[j] for i, j in zip(iu, ju, strict=True)], dtype=bool)  # k ≤ ~20: k² tiny
    iu, ju = iu[keep], ju[keep]
    keys_sub = sub.get_column("key").to_numpy()
    defs_sub = sub.get_column("definition").to_numpy()
    fam_sub = np.array(families, dtype=object)
    pair_keys = [pair_key(a, b) for a, b in zip(keys_sub[iu], keys_sub[ju], strict=True)]
    frame = pl.DataFrame(
        {
            "key": pair_keys,
            "kind": "pair",
            "family": [f"pair:{a}&{b}" for a, b in zip(fam_sub[iu], fam_sub[ju], strict=True)],
            "definition": [f"{a} AND {b}" for a, b in zip(defs_sub[iu], defs_sub[ju], strict=True)],
            "event": None,
            "property": None,
            "value": None,
            "window_days": None,
            "threshold": None,
            "n_with": np.rint(n_pair[iu, ju]).astype(np.int64),
            "conversions_with": np.rint(conv_pair[iu, ju]).astype(np.int64),
            "arr_with": arr_pair[iu, ju],
            "n_total": np.full(len(iu), len(y), dtype=np.int64),
            "conversions_total": np.full(len(iu), int(y.sum()), dtype=np.int64),
        },
        schema_overrides={
            "event": pl.String,
            "property": pl.String,
            "value": pl.String,
            "window_days": pl.Int64,
            "threshold": pl.Int64,
        },
    )
    frame = frame.with_columns(
        signal_ids(frame.get_column("key")).alias("signal_id"),
        pl.Series("part_a", np.where(keys_sub[iu] < keys_sub[ju], keys_sub[iu], keys_sub[ju]), dtype=pl.String),
        pl.Series("part_b", np.where(keys_sub[iu] < keys_sub[ju], keys_sub[ju], keys_sub[iu]), dtype=pl.String),
    )
    return frame.select(CANDIDATE_COLUMNS + COUNT_COLUMNS + ["part_a", "part_b"])


def attach_holdout(tested: pl.DataFrame, holdout_counts: pl.DataFrame, confidence_level: float) -> pl.DataFrame:
    """Re-measure every tested candidate on the holdout cohorts (missing there = fired for nobody)."""
    if holdout_counts.is_empty() or holdout_counts.get_column("n_total").max() in (None, 0):
        return tested.with_columns(
            *(
                pl.lit(None, pl.Float64).alias(c)
                for c in ("holdout_lift", "holdout_lift_ci_low", "holdout_lift_ci_high", "holdout_p_value")
            ),
            pl.lit(0, pl.Int64).alias("holdout_n_with"),
            pl.lit(0, pl.Int64).alias("holdout_conversions_with"),
            pl.lit(0, pl.Int64).alias("holdout_n_total"),
        )
    n_total = int(holdout_counts.get_column("n_total").max())
    conv_total = int(holdout_counts.get_column("conversions_total").max())
    hold = (
        tested.select("key")
        .join(holdout_counts.select("key", "n_with", "conversions_with", "arr_with"), on="key", how="left")
        .with_columns(
            pl.col("n_with").fill_null(0),
            pl.col("conversions_with").fill_null(0),
            pl.col("arr_with").fill_null(0.0),
            pl.lit(n_total, pl.Int64).alias("n_total"),
            pl.lit(conv_total, pl.Int64).alias("conversions_total"),
        )
    )
    hold = evaluate(hold, confidence_level, prefix="h_")
    return tested.join(
        hold.select(
            "key",
            pl.col("n_with").alias("holdout_n_with"),
            pl.col("conversions_with").alias("holdout_conversions_with"),
            pl.col("n_total").alias("holdout_n_total"),
            pl.col("h_lift").alias("holdout_lift"),
            pl.col("h_lift_ci_low").alias("holdout_lift_ci_low"),
            pl.col("h_lift_ci_high").alias("holdout_lift_ci_high"),
            pl.col("h_p_value").alias("holdout_p_value"),
        ),
        on="key",
        how="left",
    )


def projected_arr(signals: pl.DataFrame, span_days: float, acv: float) -> pl.Series:
    """(rate_with − rate_without) × accounts with the signal per year × ARR per conversion.

    Accounts per year = n_with × 365 / span_days of the discovery cohorts; ARR per conversion is the
    mean observed ARR of the signal's converted accounts, else `acv`. Negative when the signal's
    accounts convert less than the rest.
    """
    per_year = signals.get_column("n_with").to_numpy() * 365.0 / max(span_days, 1.0)
    conv = signals.get_column("conversions_with").to_numpy()
    arr_with = signals.get_column("arr_with").to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_arr = np.where((conv > 0) & (arr_with > 0), arr_with / np.maximum(conv, 1), acv)
    diff = np.nan_to_num(signals.get_column("rate_with").to_numpy() - signals.get_column("rate_without").to_numpy())
    return pl.Series("projected_arr", diff * per_year * mean_arr)


def recommend(signals: pl.DataFrame, config: DiscoveryConfig) -> pl.DataFrame:
    """Add `recommendation`, `recommendation_reason`, `is_family_best` and `alternatives` (rules in the module docstring)."""
    significant = pl.col("q_value") <= config.fdr_alpha
    strong = (pl.col("lift") >= config.min_lift) & (pl.col("lift_ci_low") > 1)
    big_enough = pl.col("n_with") >= config.min_sample
    replicated = (pl.col("holdout_lift") > 1) & (pl.col("holdout_p_value") < HOLDOUT_REPLICATION_P)
    base = significant & strong & big_enough & replicated.fill_null(False)
    signals = signals.with_columns(base.alias("_qualifies"))
    signals = _pair_value(signals)
    qualifies = pl.col("_qualifies") & pl.col("_pair_adds")
    pair_adds = pl.col("_pair_adds")
    frame = signals.with_columns(
        pl.when(qualifies)
        .then(pl.lit("enable"))
        .when(significant & (pl.col("lift") > 1))
        .then(pl.lit("review"))
        .otherwise(pl.lit("reject"))
        .alias("recommendation"),
        pl.when(qualifies)
        .then(pl.lit("significant after FDR, strong, replicated in holdout"))
        .when(significant & (pl.col("lift") > 1) & ~big_enough)
        .then(pl.lit(f"significant but fewer than {config.min_sample} accounts"))
        .when(significant & (pl.col("lift") > 1) & ~strong)
        .then(pl.lit(f"significant but lift below {config.min_lift} or CI reaches 1"))
        .when(significant & (pl.col("lift") > 1) & ~pair_adds)
        .then(pl.lit("pair adds nothing: its parts are both enabled, or its lift CI does not clear both parts' lifts"))
        .when(significant & (pl.col("lift") > 1))
        .then(pl.lit("significant but did not replicate in the holdout"))
        .when(significant)
        .then(pl.lit("significant, but predicts lower conversion"))
        .otherwise(pl.lit(f"not significant after FDR (q > {config.fdr_alpha})"))
        .alias("recommendation_reason"),
        pl.col("lift_ci_low").fill_nan(None).fill_null(-1.0).alias("_score"),
    )
    order = {"enable": 0, "review": 1, "reject": 2}
    frame = frame.with_columns(pl.col("recommendation").replace_strict(order, return_dtype=pl.Int64).alias("_rank"))
    # The family's best: the best recommendation, then the highest lift CI low bound, then the lowest p.
    frame = frame.sort(["family", "_rank", "_score", "p_value", "key"], descending=[False, False, True, False, False])
    frame = frame.with_columns((pl.int_range(pl.len()).over("family") == 0).alias("is_family_best"))
    best = frame.filter(pl.col("is_family_best")).select(
        "family", pl.col("signal_id").alias("_best_id"), pl.col("definition").alias("_best_def")
    )
    alternatives = (
        frame.filter(~pl.col("is_family_best") & (pl.col("_rank") < 2))
        .group_by("family")
        .agg(pl.col("definition").sort().alias("alternatives"))
    )
    frame = frame.join(best, on="family", how="left").join(alternatives, on="family", how="left")
    demoted = ~pl.col("is_family_best") & (pl.col("_rank") < 2)
    frame = frame.with_columns(
        pl.when(demoted).then(pl.lit("reject")).otherwise(pl.col("recommendation")).alias("recommendation"),
        pl.when(demoted)
        .then(pl.format("alternative of {} ({}): the family keeps its best", "_best_id", "_best_def"))
        .otherwise(pl.col("recommendation_reason"))
        .alias("recommendation_reason"),
        pl.when(pl.col("is_family_best"))
        .then(pl.col("alternatives"))
        .otherwise(pl.lit(None, pl.List(pl.String)))
        .alias("alternatives"),
    )
    return frame.drop("_rank", "_score", "_best_id", "_best_def", "_qualifies", "_pair_adds")


def discover(
    discovery_counts: pl.DataFrame,
    holdout_counts: pl.DataFrame,
    pair_discovery: pl.DataFrame,
    pair_holdout: pl.DataFrame,
    config: DiscoveryConfig,
    span_days: float,
) -> pl.DataFrame:
    """Test every supported candidate (singles and pairs), control the FDR, replicate, recommend.

    Returns one row per tested candidate with the `beton.signals` columns (see README) plus counts,
    holdout figures and the family bookkeeping.
    """
    tested = select_candidates(discovery_counts, config)
    pairs = supported(pair_discovery, config) if not pair_discovery.is_empty() else pair_discovery
    all_tested = tested.select(CANDIDATE_COLUMNS + COUNT_COLUMNS)
    if not pairs.is_empty():
        all_tested = pl.concat([all_tested, pairs], how="diagonal_relaxed")
    evaluated = evaluate(all_tested, config.confidence_level)
    evaluated = evaluated.with_columns(
        pl.Series("q_value", benjamini_hochberg(evaluated.get_column("p_value").to_numpy()))
    )
    holdout_all = (
        holdout_counts.select(CANDIDATE_COLUMNS + COUNT_COLUMNS) if not holdout_counts.is_empty() else holdout_counts
    )
    if not pair_holdout.is_empty():
        holdout_all = pl.concat(
            [holdout_all, pair_holdout.select(CANDIDATE_COLUMNS + COUNT_COLUMNS)], how="vertical_relaxed"
        )
    evaluated = attach_holdout(evaluated, holdout_all, config.confidence_level)
    evaluated = evaluated.with_columns(projected_arr(evaluated, span_days, config.acv))
    source = pl.when(pl.col("kind").is_in(CUSTOM_KINDS)).then(pl.lit("custom")).otherwise(pl.lit("discovered"))
    return recommend(evaluated, config).with_columns(source.alias("source"))


def _pair_value(frame: pl.DataFrame) -> pl.DataFrame:
    """`_pair_adds`: true for singles; for a pair, whether it tells more than its parts.

    A pair adds something when its lift CI low bound clears both parts' lifts and its parts are not
    both enabled already (the score adds enabled signals, so such a pair would count them twice).
    """
    if "part_a" not in frame.columns or frame.filter(pl.col("kind") == "pair").is_empty():
        return frame.with_columns(pl.lit(True).alias("_pair_adds"))
    parts = frame.filter(pl.col("kind") != "pair").select("key", "lift", "_qualifies")
    pairs = (
        frame.filter(pl.col("kind") == "pair")
        .select("key", "lift_ci_low", "part_a", "part_b")
        .join(parts.rename({"key": "part_a", "lift": "lift_a", "_qualifies": "q_a"}), on="part_a", how="left")
        .join(parts.rename({"key": "part_b", "lift": "lift_b", "_qualifies": "q_b"}), on="part_b", how="left")
        .select(
            "key",
            (
                (pl.col("lift_ci_low") > pl.col("lift_a").fill_null(np.inf))
                & (pl.col("lift_ci_low") > pl.col("lift_b").fill_null(np.inf))
                & ~(pl.col("q_a").fill_null(False) & pl.col("q_b").fill_null(False))
            ).alias("_pair_adds"),
        )
    )
    return frame.join(pairs, on="key", how="left").with_columns(pl.col("_pair_adds").fill_null(True))


PairSource = Callable[[list[str], HoldoutSplit], tuple[pl.DataFrame, pl.DataFrame]]
"""Returns the pair counts (discovery, holdout) for the chosen single candidates."""


@dataclass(frozen=True)
class DiscoveryRun:
    """A discovery run's result: one row per tested candidate, and the temporal split it used."""

    signals: pl.DataFrame
    split: HoldoutSplit


def discover_from_cohort_counts(
    cohort_counts: pl.DataFrame, pair_source: PairSource, config: DiscoveryConfig, holdout_fraction: float
) -> DiscoveryRun:
    """Split cohorts in time, add up their counts, form pairs, and `discover`.

    `cohort_counts` holds `sufficient_statistics` rows with a `cohort_month` column (one block per
    month); `pair_source(top_keys, split)` returns the pair counts for the chosen singles, from
    whatever holds account-level membership (memory, or the warehouse).
    """
    sizes = cohort_counts.group_by("cohort_month").agg(pl.col("n_total").first().alias("n_eligible"))
    split = choose_holdout(sizes, holdout_fraction)
    disc = sum_counts(cohort_counts, split.discovery_months)
    hold = sum_counts(cohort_counts, split.holdout_months)
    # Pairs are chosen on half of the discovery months and tested on the other half, so the test of a
    # pair never uses the data that selected it (choosing and testing on the same accounts would make
    # its p-value optimistic: measured on shuffled outcomes, it tripled the false discoveries).
    select_months, test_months = split.discovery_months[::2], split.discovery_months[1::2]
    pair_disc, pair_hold = pl.DataFrame(), pl.DataFrame()
    if test_months:
        chosen = select_candidates(disc, config).get_column("key")
        singles = supported(sum_counts(cohort_counts, select_months), config).filter(pl.col("key").is_in(chosen))
        singles = evaluate(singles, config.confidence_level)
        top = top_singles(singles, config.pair_top_k)
        if len(top) >= 2:
            pair_split = HoldoutSplit(test_months, split.holdout_months, 0, split.n_holdout)
            pair_disc, pair_hold = pair_source(top, pair_split)
    result = discover(disc, hold, pair_disc, pair_hold, config, span_days(split.discovery_months))
    return DiscoveryRun(signals=result, split=split)


def cohort_counts_from_matrix(
    matrix: CandidateMatrix, cohort_month: np.ndarray, converted: np.ndarray, arr: np.ndarray, keep_empty: bool = False
) -> pl.DataFrame:
    """Per-cohort sufficient statistics from one in-memory matrix (the partitioned asset's rows, all at once).

    Candidates that fired for nobody in a month are dropped unless `keep_empty` (user-defined signals
    keep their zero rows, so a signal that never fires is still reported)."""
    blocks = []
    for month in np.unique(cohort_month):  # one block per cohort month (tens), not per candidate
        rows = np.flatnonzero(cohort_month == month)
        sub = matrix.take_rows(rows)
        counts = sufficient_statistics(sub, converted[rows], arr[rows])
        kept = counts if keep_empty else counts.filter(pl.col("n_with") > 0)
        blocks.append(kept.with_columns(pl.lit(str(month)).alias("cohort_month")))
    return pl.concat(blocks)


def matrix_pair_source(
    matrix: CandidateMatrix, cohort_month: np.ndarray, converted: np.ndarray, arr: np.ndarray
) -> PairSource:
    """A `PairSource` over an in-memory candidate matrix."""

    def source(top: list[str], split: HoldoutSplit) -> tuple[pl.DataFrame, pl.DataFrame]:
        out = []
        for months in (split.discovery_months, split.holdout_months):
            rows = np.flatnonzero(np.isin(cohort_month, list(months)))
            sub = matrix.take_rows(rows)
            out.append(pair_counts(sub, top, converted[rows], arr[rows]))
        return out[0], out[1]

    return source


def span_days(months: tuple) -> float:
    """Days covered by a run of cohort months (`YYYY-MM`), for per-year scaling."""
    if not months:
        return 365.0
    first_year, first_month = map(int, min(months).split("-"))
    last_year, last_month = map(int, max(months).split("-"))
    return ((last_year - first_year) * 12 + last_month - first_month + 1) * 365.0 / 12.0
