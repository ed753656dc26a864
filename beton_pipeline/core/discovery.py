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
   the odd-numbered discovery months only, so a pair is never tested on the data that chose it.
   A pair is also measured *conditionally on each of its parts* (`conditional_on_parts`): among the
   accounts holding part A, those that also hold B against those that do not (n(A∧B), conv(A∧B) against
   n(A) − n(A∧B), conv(A) − conv(A∧B)), with `core.stats.compare_proportions`; and the same given B.
   The singles paired are the strongest on those months; with the activity adjustment, the strongest
   among equally active accounts (adjusted p, adjusted lift > 1), so activity proxies do not crowd them out.
5. **False-discovery control.** Benjamini–Hochberg q-values over every candidate tested in the run:
   every event, window, threshold, property value, attribute value, intent type and pair.
5a. **Beyond overall activity** (`count_by_stratum`, `adjusted_statistics`, `attach_adjusted`). Accounts
   are cut, within each cohort month, into `activity_strata` quantile bands of their activity (all their
   events in the candidate's window; the observation window for attributes and intent), each split to a
   narrow activity range (`activity_bands`). Over the strata
   cohort month × band, the Mantel–Haenszel risk ratio (`adjusted_lift`, the lift among equally active
   accounts) with its Greenland–Robins CI, the Cochran–Mantel–Haenszel p-value (`adjusted_p_value`) and
   Benjamini–Hochberg over the adjusted p-values of every single and pair (`adjusted_q_value`); again on
   the holdout months. Custom signals are adjusted too, with the same bands: a custom condition may mix
   windows, so its activity is the observation window's (`Adjustment.custom`, counted by the
   `custom_signals` asset); they are single rows, adjusted and recommended as discovered singles.
6. **One candidate per family, chosen on the discovery cohorts alone** (`recommend`). A family is one
   event (or property value, attribute value, intent type) across windows and thresholds; each pair is
   its own family. A candidate *qualifies* when q ≤ fdr_alpha, lift ≥ min_lift, lift CI low > 1 and
   n_with ≥ min_sample (a pair also when, given each part, its conditional lift is ≥ min_lift with CI
   low > 1: it adds beyond its stronger part, and beyond the weaker one); and, when adjusted, when its
   adjusted q ≤ fdr_alpha and adjusted lift CI low > 1 (otherwise it is `review`: "explained by overall
   activity"). The family keeps, in this order: qualifying candidates first, then significant ones with
   lift > 1 (those on min_sample accounts first), then the rest; among them the highest lift CI low bound,
   the highest adjusted lift CI low bound, then the lowest p, then the key. No holdout figure takes part in
   this choice, so the holdout cannot pick among windows, thresholds or pairs.
7. **Holdout replication of the chosen candidate only** (`replicates`). The same counts on the
   holdout cohorts give `holdout_lift` with its Katz CI at the run's `confidence_level` (two-sided; at
   95 % its low bound is a one-sided 97.5 % bound). The chosen candidate replicates when the holdout
   lift CI low bound is > 1 *and* the holdout lift is ≥ min_lift: the holdout shows the effect that
   justifies enabling, not merely some association (at tens of thousands of accounts a residual lift
   of 1.1 is "significant"). A pair replicates when, in the holdout, its own lift and its conditional
   lift given each part both pass that rule. When adjusted, the holdout's adjusted lift CI low bound
   must also be > 1: the holdout shows the effect among equally active accounts (not min_lift: the
   adjustment pulls behaviours that create activity towards 1, and the marginal holdout lift already
   carries the min_lift bar; not merely adjusted lift ≥ 1: a pure proxy passes that half the time). Power: the point estimate must reach min_lift, so a true
   lift equal to min_lift replicates about half the time; measured (tests/core/test_replication.py,
   15,000 holdout accounts, 20 % holding the signal, base rate 8 %), true lifts of 1.0 / 1.15 / 1.3 /
   1.6 / 2.0 replicate in about 0 / 2 / 50 / 100 / 100 % of draws.
8. **Recommendation.** (A single masked by activity — overall bar missed, adjusted q ≤ fdr_alpha and adjusted
   lift ≥ min_lift with CI low > 1 — qualifies on the adjusted result and replicates when its holdout adjusted
   lift clears the same bar.) The chosen candidate is `enable`d when it qualifies and replicates, and (pairs)
   neither part's family failed replication (no window or threshold of a behaviour that did not
   replicate is trusted inside a pair), neither part's family is explained by overall activity (the lift
   given each part is a marginal comparison that activity could carry) and the parts' families are not
   both enabled already (the score
   adds enabled signals, so such a pair would count them twice). A chosen candidate that is
   significant with lift > 1 but fails any of those is `review` (`recommendation_reason` says which);
   otherwise `reject`. The family's other candidates that are significant with lift > 1 are `reject`ed
   as alternatives of the chosen one and listed on its row; when the chosen one did not replicate,
   their reason says so: the family then has no enabled signal.
9. **Projected ARR** = (rate_with − rate_without) × accounts with the signal per year × ARR per
   conversion (mean observed ARR of converted accounts with the signal, else `revenue.acv`):
   the annual revenue from the signal's accounts converting above the others' rate. It is an
   association, not a causal estimate; playbook holdouts measure causation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp

from beton_pipeline.core.candidates import (
    DENSE_COUNT_LIMIT,
    CandidateMatrix,
    FeatureFrames,
    pair_key,
    signal_ids,
    sufficient_statistics,
)
from beton_pipeline.core.stats import benjamini_hochberg, compare_proportions
from beton_pipeline.core.stratified import ActivityStrata, activity_strata, mantel_haenszel, stratified_counts

CUSTOM_KINDS = ("condition", "sql")
"""Kinds of user-defined signals (beton.signals `source = 'custom'`): tested whatever their support, never paired."""


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
    activity_strata: int = 10
    """Activity bands per cohort month and window for the adjusted lift (`count_by_stratum`); 1 leaves only the
    cohort months as strata."""


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


PART_COUNT_COLUMNS = ["part_a_n_with", "part_a_conversions_with", "part_b_n_with", "part_b_conversions_with"]
"""Each part's own accounts and conversions beside a pair's counts, on the same accounts (`pair_counts`)."""

CONDITIONAL_STATISTICS = ("lift", "lift_ci_low", "lift_ci_high", "p_value")
"""What `conditional_on_parts` reports per part, as `given_a_lift`, `given_a_lift_ci_low`, …"""


def pair_counts(matrix: CandidateMatrix, keys: list[str], converted: np.ndarray, arr: np.ndarray) -> pl.DataFrame:
    """Counts for every AND-pair of `keys` (different families) in three dense products XₖᵀWXₖ.

    With Xₖ the accounts × k membership of the chosen singles and W = diag(w) for w ∈ {1, y, y·arr}:
    n_with(i,j) = Σ X_i X_j, conversions_with(i,j) = Σ X_i X_j y, arr_with(i,j) = Σ X_i X_j y arr.
    The diagonal gives each part's own counts on the same accounts (`PART_COUNT_COLUMNS`: n(A), conv(A)),
    which `conditional_on_parts` compares the pair with.
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
    i_is_a = keys_sub[iu] < keys_sub[ju]
    first, second = np.where(i_is_a, iu, ju), np.where(i_is_a, ju, iu)
    n_own, conv_own = np.rint(np.diag(n_pair)).astype(np.int64), np.rint(np.diag(conv_pair)).astype(np.int64)
    frame = frame.with_columns(
        signal_ids(frame.get_column("key")).alias("signal_id"),
        pl.Series("part_a", keys_sub[first], dtype=pl.String),
        pl.Series("part_b", keys_sub[second], dtype=pl.String),
        pl.Series("part_a_n_with", n_own[first], dtype=pl.Int64),
        pl.Series("part_a_conversions_with", conv_own[first], dtype=pl.Int64),
        pl.Series("part_b_n_with", n_own[second], dtype=pl.Int64),
        pl.Series("part_b_conversions_with", conv_own[second], dtype=pl.Int64),
    )
    return frame.select(CANDIDATE_COLUMNS + COUNT_COLUMNS + ["part_a", "part_b", *PART_COUNT_COLUMNS])


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


# ------------------------------------------------------------------------------------------------
# Activity-adjusted association: counts per cohort month × activity band, Mantel–Haenszel over them
# ------------------------------------------------------------------------------------------------
STRATUM_COUNT_SCHEMA = {
    "cohort_month": pl.String,
    "activity_window_days": pl.Int64,
    "stratum": pl.Int64,
    "key": pl.String,
    "n_with": pl.Int64,
    "conversions_with": pl.Int64,
}
"""`StratumCounts.counts`: one row per cohort month × activity band × candidate with holders in the band."""

STRATUM_TOTAL_SCHEMA = {
    "cohort_month": pl.String,
    "activity_window_days": pl.Int64,
    "stratum": pl.Int64,
    "activity_low": pl.Float64,
    "activity_high": pl.Float64,
    "n_total": pl.Int64,
    "conversions_total": pl.Int64,
}
"""`StratumCounts.strata`: one row per cohort month × activity window × band: its activity range and totals."""

ADJUSTED_STATISTICS = ("lift", "lift_ci_low", "lift_ci_high", "p_value")
"""What `adjusted_statistics` reports, as `{prefix}lift`, `{prefix}lift_ci_low`, …"""


ACTIVITY_BAND_RATIO = 1.25
"""`activity_bands` splits each quantile band so that 1 + activity varies by at most this factor within a band."""


def activity_bands(activity: np.ndarray, n_bands: int, max_ratio: float | None = ACTIVITY_BAND_RATIO) -> ActivityStrata:
    """Quantile bands of activity (`core.stratified.activity_strata`), each split further so that within a band
    1 + activity varies by less than a factor `max_ratio` (None, or `n_bands` = 1: quantile bands only, so
    one band leaves the cohort months as the only strata).

    Why: the top quantile band is open-ended. When activity is heavy-tailed, a high threshold of an activity
    proxy (e.g. ">= 10 in 7 days") selects the most active accounts *of the top band*, and the comparison
    within it is still confounded (measured: adjusted lift 2.3 for a pure proxy with deciles, 1.1 with bands
    capped at a factor 1.25). Capping the width bounds the activity difference that can remain inside a band,
    as coarsened exact matching bounds imbalance by its bin width (Iacus, King & Porro 2011, "Multivariate
    matching methods that are monotonic imbalance bounding", *JASA* 106:345-361). Small counts get a band each
    (1 + a grows by more than 1.25 per event up to a = 3, and the log bins separate every integer up to 9), so
    there the stratification on the total is exact. The cut points depend on activity only, never on outcomes.

    The log bin is ``floor(log(1 + a) / log(max_ratio))``; the band is the pair (quantile band, log bin), both
    monotone in activity, so bands stay contiguous ranges numbered in order of activity and ties share a band.
    """
    quantile = activity_strata(activity, n_bands)
    if max_ratio is None or n_bands == 1 or quantile.n_strata == 0:  # one band: no activity adjustment at all
        return quantile
    values = np.asarray(activity, dtype=np.float64).ravel()
    log_bin = np.floor(np.log1p(values) / np.log(float(max_ratio))).astype(np.int64)
    combined = quantile.stratum * (int(log_bin.max()) + 1) + log_bin
    used, stratum = np.unique(combined, return_inverse=True)
    stratum = stratum.astype(np.int64).ravel()
    k = used.size
    lower, upper = np.full(k, np.inf), np.full(k, -np.inf)
    np.minimum.at(lower, stratum, values)
    np.maximum.at(upper, stratum, values)
    return ActivityStrata(stratum, int(k), lower, upper, np.bincount(stratum, minlength=k).astype(np.int64))


@dataclass(frozen=True)
class StratumCounts:
    """Candidate counts per cohort month × activity band (`count_by_stratum`), and the bands' totals.

    A candidate without a row in a band had no holder there; the band's accounts without it are
    `n_total − n_with` (from `strata`), as for the marginal counts.
    """

    counts: pl.DataFrame
    strata: pl.DataFrame

    @classmethod
    def empty(cls) -> StratumCounts:
        return cls(pl.DataFrame(schema=STRATUM_COUNT_SCHEMA), pl.DataFrame(schema=STRATUM_TOTAL_SCHEMA))


def count_by_stratum(
    x: sp.spmatrix | sp.sparray,
    keys: list[str] | np.ndarray,
    windows: np.ndarray,
    activity: dict[int, np.ndarray],
    cohort_month: np.ndarray,
    converted: np.ndarray,
    n_bands: int,
) -> StratumCounts:
    """Per candidate, cohort month and activity band: accounts with the candidate and their conversions.

    `x` is accounts × candidates (0/1), `keys` and `windows` give each column's key and activity window
    (`core.candidates.activity_windows`), `activity[w]` each account's activity in window w
    (`core.candidates.account_activity`). Within each cohort month and window, accounts are cut into
    `n_bands` quantile bands of activity, each split to a bounded activity ratio (`activity_bands`), and the counts of the candidates of that window come from one sparse product
    (`core.stratified.stratified_counts`). Bands are cut per month so that a month's counts never depend
    on another month (re-counting a month replaces exactly its rows). The loops run over months and
    windows (a few each), never over candidates or accounts. Only bands where a candidate has holders get
    a counts row; every band gets a `strata` row.
    """
    x = sp.csr_matrix(x)
    keys = np.asarray(keys, dtype=object)
    windows = np.asarray(windows, dtype=np.int64)
    cohort_month = np.asarray(cohort_month).astype(str)
    y = np.asarray(converted).astype(bool)
    count_blocks, strata_blocks = [], []
    for month in np.unique(cohort_month):
        rows = np.flatnonzero(cohort_month == month)
        sub = x[rows]
        for window in np.unique(windows):
            cols = np.flatnonzero(windows == window)
            bands = activity_bands(activity[int(window)][rows], n_bands)
            counted = stratified_counts(sub[:, cols], y[rows], bands.stratum, bands.n_strata)
            cand, band = np.nonzero(counted.n_with)
            count_blocks.append(
                pl.DataFrame(
                    {
                        "cohort_month": np.full(cand.size, month, dtype=object),
                        "activity_window_days": np.full(cand.size, window, dtype=np.int64),
                        "stratum": band.astype(np.int64),
                        "key": keys[cols][cand],
                        "n_with": counted.n_with[cand, band],
                        "conversions_with": counted.conversions_with[cand, band],
                    },
                    schema=STRATUM_COUNT_SCHEMA,
                )
            )
            strata_blocks.append(
                pl.DataFrame(
                    {
                        "cohort_month": np.full(bands.n_strata, month, dtype=object),
                        "activity_window_days": np.full(bands.n_strata, window, dtype=np.int64),
                        "stratum": np.arange(bands.n_strata, dtype=np.int64),
                        "activity_low": bands.lower,
                        "activity_high": bands.upper,
                        "n_total": counted.n_total,
                        "conversions_total": counted.conversions_total,
                    },
                    schema=STRATUM_TOTAL_SCHEMA,
                )
            )
    if not strata_blocks:
        return StratumCounts.empty()
    return StratumCounts(pl.concat(count_blocks), pl.concat(strata_blocks))


ADJUSTED_CHUNK_CELLS = 2_000_000
"""`adjusted_statistics` pools candidates in blocks of at most this many candidate × stratum cells, so memory
stays bounded (tens of MB) however many candidates and strata a warehouse holds."""


def adjusted_statistics(
    keys: pl.Series,
    stratum_counts: StratumCounts,
    months: tuple,
    confidence_level: float,
    prefix: str = "adjusted_",
    chunk_cells: int = ADJUSTED_CHUNK_CELLS,
) -> pl.DataFrame:
    """The activity-adjusted association of every candidate in `keys` over the cohort months `months`.

    The strata are cohort month × activity band: within each, the candidate's holders (n_with,
    conversions_with) are compared with the band's other accounts (n_total − n_with, conversions_total −
    conversions_with), and `core.stratified.mantel_haenszel` pools them: the Mantel–Haenszel risk ratio
    (`{prefix}lift`, the lift among equally active accounts) with its Greenland–Robins interval at
    `confidence_level` (`{prefix}lift_ci_low`, `…_high`) and the two-sided Cochran–Mantel–Haenszel p-value
    without continuity correction (`{prefix}p_value`). Also `{prefix}strata` (informative strata: with
    accounts both with and without the candidate), `{prefix}status` (`core.stratified` status text) and
    `activity_window_days`. A candidate with no informative stratum gets NaN figures (its p-value stays
    out of any FDR family; that depends only on who holds it, never on outcomes). References in
    `core.stratified.mantel_haenszel`: Mantel & Haenszel (1959); Greenland & Robins (1985).
    The arrays are candidates × (month, band): a scatter by integer index, in blocks of candidates of at most
    `chunk_cells` cells (a loop over blocks, never over single candidates).
    """
    names = [f"{prefix}{s}" for s in ADJUSTED_STATISTICS]
    key_frame = pl.DataFrame({"key": keys.cast(pl.String)}).with_row_index("_i")
    window_of = stratum_counts.counts.select("key", "activity_window_days").unique("key")
    key_frame = key_frame.join(window_of, on="key", how="left", maintain_order="left")
    month_list = [str(m) for m in months]
    strata = stratum_counts.strata.filter(pl.col("cohort_month").is_in(month_list))
    columns = strata.select("cohort_month", "stratum").unique().sort("cohort_month", "stratum").with_row_index("_j")
    window_index = (
        pl.concat([strata.select("activity_window_days"), key_frame.select("activity_window_days").drop_nulls()])
        .unique()
        .sort("activity_window_days")
        .with_row_index("_w")
    )
    n_keys, n_cols, n_windows = key_frame.height, columns.height, window_index.height
    totals = strata.join(columns, on=["cohort_month", "stratum"]).join(window_index, on="activity_window_days")
    n_total = np.zeros((n_windows + 1, max(n_cols, 1)), dtype=np.int64)  # last row: no window known, all zero
    conv_total = np.zeros_like(n_total)
    w_idx, j_idx = totals.get_column("_w").to_numpy(), totals.get_column("_j").to_numpy()
    n_total[w_idx, j_idx] = totals.get_column("n_total").to_numpy()
    conv_total[w_idx, j_idx] = totals.get_column("conversions_total").to_numpy()
    cells = (
        stratum_counts.counts.filter(pl.col("cohort_month").is_in(month_list))
        .join(key_frame.select("key", "_i", pl.col("activity_window_days").alias("_kw")), on="key")
        .filter(pl.col("activity_window_days") == pl.col("_kw"))
        .join(columns, on=["cohort_month", "stratum"])
    )
    i_idx, j_idx = cells.get_column("_i").to_numpy(), cells.get_column("_j").to_numpy()
    cell_n, cell_conv = cells.get_column("n_with").to_numpy(), cells.get_column("conversions_with").to_numpy()
    key_w = (
        key_frame.join(window_index, on="activity_window_days", how="left", maintain_order="left")
        .get_column("_w")
        .fill_null(n_windows)
        .to_numpy()
        .astype(np.int64)
    )
    if n_keys == 0:
        return key_frame.select("key", "activity_window_days").with_columns(
            *(pl.lit(None, pl.Float64).alias(n) for n in names),
            pl.lit(None, pl.Int64).alias(f"{prefix}strata"),
            pl.lit(None, pl.String).alias(f"{prefix}status"),
        )
    width = max(n_cols, 1)
    block = max(1, int(chunk_cells) // width)
    values = {n: np.empty(n_keys) for n in names}
    informative, status = np.empty(n_keys, dtype=np.int64), np.empty(n_keys, dtype=object)
    for start in range(0, n_keys, block):
        stop = min(start + block, n_keys)
        in_block = (i_idx >= start) & (i_idx < stop)
        n_with = np.zeros((stop - start, width), dtype=np.int64)
        conv_with = np.zeros_like(n_with)
        n_with[i_idx[in_block] - start, j_idx[in_block]] = cell_n[in_block]
        conv_with[i_idx[in_block] - start, j_idx[in_block]] = cell_conv[in_block]
        big_n, big_k = n_total[key_w[start:stop]], conv_total[key_w[start:stop]]
        result = mantel_haenszel(
            conv_with, n_with, big_k - conv_with, big_n - n_with, confidence_level=confidence_level
        )
        found = (result.risk_ratio, result.risk_ratio_ci_low, result.risk_ratio_ci_high, result.p_value)
        for name, v in zip(names, found, strict=True):
            values[name][start:stop] = v
        informative[start:stop], status[start:stop] = result.n_informative_strata, result.status
    return key_frame.select("key", "activity_window_days").with_columns(
        *(pl.Series(n, values[n], dtype=pl.Float64) for n in names),
        pl.Series(f"{prefix}strata", informative, dtype=pl.Int64),
        pl.Series(f"{prefix}status", [str(s) for s in status], dtype=pl.String),
    )


@dataclass(frozen=True)
class Adjustment:
    """What `attach_adjusted` needs: the singles' and the pairs' per-stratum counts and the months of each test,
    and the custom signals' (None: custom rows are not adjusted)."""

    singles: StratumCounts
    pairs: StratumCounts
    discovery_months: tuple
    pair_months: tuple
    holdout_months: tuple
    custom: StratumCounts | None = None
    """Custom signals' per-stratum counts with their own band totals (`count_by_stratum` on the observation
    window: the same bands as the discovered candidates of that month and window). Kept apart from `singles`
    so that a window's totals come from one count only."""


ADJUSTED_COLUMNS = [
    "adjusted_lift",
    "adjusted_lift_ci_low",
    "adjusted_lift_ci_high",
    "adjusted_p_value",
    "adjusted_q_value",
    "activity_strata",
    "adjustment_method",
    "adjustment_status",
    "holdout_adjusted_lift",
    "holdout_adjusted_lift_ci_low",
    "holdout_adjusted_lift_ci_high",
    "holdout_adjusted_p_value",
]
"""The adjusted figures `attach_adjusted` adds (NULL where no adjustment was computed, e.g. a run without strata)."""


def no_adjustment(frame: pl.DataFrame) -> pl.DataFrame:
    """`ADJUSTED_COLUMNS` as NULL, for rows no adjustment was computed for (a run without strata, custom signals
    counted without them)."""
    dtype = {"activity_strata": pl.Int64, "adjustment_method": pl.String, "adjustment_status": pl.String}
    return frame.with_columns(
        pl.lit(None, dtype.get(c, pl.Float64)).alias(c) for c in ADJUSTED_COLUMNS if c not in frame.columns
    )


def adjustment_method(n_bands: int) -> pl.Expr:
    """The `adjustment_method` text of a row, naming its activity window (`activity_window_days`)."""
    bands = "activity decile" if n_bands == 10 else f"{n_bands} activity bands"
    return pl.format(
        "Mantel-Haenszel RR over cohort month x {} (all events in the first {} days); CI: Greenland-Robins; "
        "p: Cochran-Mantel-Haenszel; q: Benjamini-Hochberg over the adjusted p-values",
        pl.lit(bands),
        pl.col("activity_window_days"),
    )


def attach_adjusted(evaluated: pl.DataFrame, adjustment: Adjustment, config: DiscoveryConfig) -> pl.DataFrame:
    """Add the activity-adjusted figures (`ADJUSTED_COLUMNS`) to every tested single and pair.

    Singles on the discovery months, pairs on their test months (the odd-numbered discovery months, as
    their marginal figures), both again on the holdout months (`holdout_adjusted_…`): `adjusted_statistics`.
    `adjusted_q_value` is Benjamini–Hochberg over the adjusted p-values of every single and pair with one
    (its own family: the decision reads the adjusted result, the marginal q stays as the contract defines
    it). Custom signals are singles here: on the discovery months and the holdout, from `adjustment.custom`
    (NULL when it is None), in the same Benjamini–Hochberg family.
    """
    kind = pl.col("kind")
    parts = []
    for rows, counts, months in (
        (~kind.is_in(["pair", *CUSTOM_KINDS]), adjustment.singles, adjustment.discovery_months),
        (kind == "pair", adjustment.pairs, adjustment.pair_months),
        (kind.is_in(CUSTOM_KINDS), adjustment.custom or StratumCounts.empty(), adjustment.discovery_months),
    ):
        keys = evaluated.filter(rows).get_column("key")
        if keys.is_empty() or counts.strata.is_empty():
            continue
        found = adjusted_statistics(keys, counts, months, config.confidence_level)
        held = adjusted_statistics(
            keys, counts, adjustment.holdout_months, config.confidence_level, "holdout_adjusted_"
        )
        parts.append(found.join(held.drop("activity_window_days"), on="key"))
    if not parts:
        return no_adjustment(evaluated)
    adjusted = pl.concat(parts, how="vertical_relaxed")
    adjusted = adjusted.with_columns(
        pl.Series("adjusted_q_value", benjamini_hochberg(adjusted.get_column("adjusted_p_value").to_numpy())),
        pl.col("adjusted_strata").alias("activity_strata"),
        pl.col("adjusted_status").alias("adjustment_status"),
        adjustment_method(config.activity_strata).alias("adjustment_method"),
    ).select("key", *ADJUSTED_COLUMNS)
    return evaluated.join(adjusted, on="key", how="left")


def effect_clears(lift: str, lift_ci_low: str, min_lift: float) -> pl.Expr:
    """The bar an effect must clear to justify enabling: lift ≥ `min_lift` and its CI low bound > 1.

    One rule for a candidate's discovery lift (*strong*), its holdout lift (*replicates*) and a pair's
    lifts given each part (*adds*). A missing or NaN lift or bound (an empty group, no conversion without
    the signal) never clears it: polars orders NaN above every number, so NaN becomes null first.
    """
    return ((pl.col(lift).fill_nan(None) >= min_lift) & (pl.col(lift_ci_low).fill_nan(None) > 1)).fill_null(False)


def conditional_on_parts(pairs: pl.DataFrame, confidence_level: float, prefix: str = "") -> pl.DataFrame:
    """What each pair adds beyond each of its parts: `key` and, for part X ∈ {a, b},
    `{prefix}given_X_lift`, `…_lift_ci_low`, `…_lift_ci_high`, `…_p_value`.

    Among the accounts holding part A, those that hold B too (n(A∧B) accounts, conv(A∧B) conversions:
    the pair's `n_with`, `conversions_with`) are compared with those that do not (n(A) − n(A∧B),
    conv(A) − conv(A∧B), from `part_a_n_with`, `part_a_conversions_with`) by
    `core.stats.compare_proportions`: lift = rate(A∧B) / rate(A∧¬B), its Katz CI at `confidence_level`,
    the pooled z-test (Fisher below an expected count of 5). Likewise given B. This is the stratum-specific
    risk ratio of one exposure within the stratum of the other (stratified analysis: Rothman, Greenland &
    Lash, *Modern Epidemiology*, 3rd ed., 2008, ch. 15). A pair adds to its stronger part only if the
    lift given that part is above 1; requiring it given both parts is an intersection–union test, so the
    two conditions need no multiplicity correction (Berger 1982, *Technometrics* 24:295–300).

    Raises ValueError when a pair holds more accounts or conversions than one of its parts (the counts
    must come from the same accounts and months).
    """
    names = [f"{prefix}given_{x}_{stat}" for x in ("a", "b") for stat in CONDITIONAL_STATISTICS]
    if pairs.is_empty():
        return pl.DataFrame(schema={"key": pl.String, **{n: pl.Float64 for n in names}})
    n_ab = pairs.get_column("n_with").to_numpy().astype(np.int64)
    conv_ab = pairs.get_column("conversions_with").to_numpy().astype(np.int64)
    columns = []
    for x in ("a", "b"):
        n_x = pairs.get_column(f"part_{x}_n_with").to_numpy().astype(np.int64)
        conv_x = pairs.get_column(f"part_{x}_conversions_with").to_numpy().astype(np.int64)
        if np.any(n_x < n_ab) or np.any(conv_x < conv_ab):
            raise ValueError(
                f"a pair counts more accounts or conversions than its part {x}: counts of different accounts"
            )
        r = compare_proportions(conv_ab, n_ab, conv_x - conv_ab, n_x - n_ab, confidence_level=confidence_level)
        for stat in CONDITIONAL_STATISTICS:
            columns.append(pl.Series(f"{prefix}given_{x}_{stat}", getattr(r, stat), dtype=pl.Float64))
    return pairs.select("key").with_columns(columns)


def _shown(column: str) -> pl.Expr:
    """A lift or bound as text for a reason: two decimals, `n/a` when missing."""
    return pl.col(column).cast(pl.Float64).fill_nan(None).round(2).cast(pl.String).fill_null("n/a")


def recommend(signals: pl.DataFrame, config: DiscoveryConfig) -> pl.DataFrame:
    """Add `recommendation`, `recommendation_reason`, `is_family_best` and `alternatives` (module docstring,
    steps 6–8): one candidate per family chosen on the discovery statistics alone, then replication of
    that candidate only.

    `signals` holds the discovery statistics with `q_value`, the holdout's (`attach_holdout`) and, for
    pairs, `part_a`, `part_b` and the lifts given each part on the pair's months (`given_a_…`) and in the
    holdout (`holdout_given_a_…`, `conditional_on_parts`); a pair without them is never enabled.
    """
    conditional = [f"{p}given_{x}_{s}" for p in ("", "holdout_") for x in ("a", "b") for s in CONDITIONAL_STATISTICS]
    added = [c for c in [*conditional, "part_a", "part_b", "holdout_n_total"] if c not in signals.columns]
    signals = no_adjustment(
        signals.with_columns(
            pl.lit(
                None, pl.String if c in ("part_a", "part_b") else pl.Int64 if c == "holdout_n_total" else pl.Float64
            ).alias(c)
            for c in added
        )
    )
    m = config.min_lift
    is_pair = pl.col("kind") == "pair"
    significant = (pl.col("q_value").fill_nan(None) <= config.fdr_alpha).fill_null(False)
    lift = pl.col("lift").fill_nan(None)
    promising = significant & (lift > 1).fill_null(False)
    strong = effect_clears("lift", "lift_ci_low", m)
    big_enough = pl.col("n_with") >= config.min_sample
    # singles add by definition; a pair must add beyond each part on its months (conditional_on_parts)
    adds = ~is_pair | (
        effect_clears("given_a_lift", "given_a_lift_ci_low", m)
        & effect_clears("given_b_lift", "given_b_lift_ci_low", m)
    )
    adds_in_holdout = effect_clears("holdout_given_a_lift", "holdout_given_a_lift_ci_low", m) & effect_clears(
        "holdout_given_b_lift", "holdout_given_b_lift_ci_low", m
    )
    # Beyond activity (rows with an adjustment): adjusted q ≤ fdr_alpha and adjusted lift CI low > 1 on the
    # discovery cohorts, adjusted lift CI low > 1 again on the holdout. Rows without one (a run without
    # strata, a custom signal counted without them) keep the marginal rule alone.
    adjusts = pl.col("adjustment_method").is_not_null()
    beyond_activity = ~adjusts | (
        (pl.col("adjusted_q_value").fill_nan(None) <= config.fdr_alpha)
        & (pl.col("adjusted_lift_ci_low").fill_nan(None) > 1)
    ).fill_null(False)
    beyond_activity_in_holdout = ~adjusts | (pl.col("holdout_adjusted_lift_ci_low").fill_nan(None) > 1).fill_null(False)
    # A single whose effect shows only among equally active accounts (its overall lift is masked because the
    # accounts doing it are less active than the rest): the adjusted result carries the whole bar instead —
    # adjusted q ≤ fdr_alpha, adjusted lift ≥ min_lift with CI low > 1 on the discovery cohorts, and the same
    # adjusted bar in the holdout.
    adjusted_significant = (pl.col("adjusted_q_value").fill_nan(None) <= config.fdr_alpha).fill_null(False)
    masked = (
        adjusts
        & ~is_pair
        & ~(significant & strong)
        & adjusted_significant
        & effect_clears("adjusted_lift", "adjusted_lift_ci_low", m)
        & big_enough
    )
    qualifies = (significant & strong & big_enough & adds & beyond_activity) | masked
    replicates_marginally = effect_clears("holdout_lift", "holdout_lift_ci_low", m) & (~is_pair | adds_in_holdout)
    replicates_adjusted = effect_clears("holdout_adjusted_lift", "holdout_adjusted_lift_ci_low", m)
    replicates = pl.when(masked).then(replicates_adjusted).otherwise(replicates_marginally & beyond_activity_in_holdout)
    frame = signals.with_columns(
        qualifies.alias("_qualifies"),
        (significant & strong & big_enough & adds & ~beyond_activity).alias("_activity_explained"),
        replicates.alias("_replicates"),
        promising.alias("_promising"),
        masked.alias("_masked"),
        pl.when(qualifies)
        .then(0)
        .when(promising & big_enough)
        .then(1)
        .when(promising)
        .then(2)
        .otherwise(3)
        .alias("_rank"),
        pl.col("adjusted_lift_ci_low").fill_nan(None).fill_null(-1.0).alias("_adjusted_score"),
        pl.col("lift_ci_low").fill_nan(None).fill_null(-1.0).alias("_score"),
    )
    # The family's candidate, from discovery figures only: qualifying first (the adjusted bar is part of
    # qualifying), then promising on min_sample accounts, then promising, then the highest lift CI low bound,
    # the highest adjusted lift CI low bound,
    # the lowest p, the key. The holdout is read after this, for that one row. The adjustment gates; the
    # window and threshold are chosen on the overall lift, which is what the signal's firing means to a seller.
    frame = frame.sort(
        ["family", "_rank", "_score", "_adjusted_score", "p_value", "key"],
        descending=[False, False, True, True, False, False],
    )
    frame = frame.with_columns((pl.int_range(pl.len()).over("family") == 0).alias("is_family_best"))
    chosen = frame.filter(pl.col("is_family_best"))
    family_state = chosen.select(
        "family",
        pl.when(pl.col("_activity_explained"))
        .then(pl.lit("activity"))
        .when(~pl.col("_qualifies"))
        .then(pl.lit("untrusted"))
        .when(pl.col("_replicates"))
        .then(pl.lit("replicated"))
        .otherwise(pl.lit("failed"))
        .alias("_state"),
    )
    part_state = frame.filter(~is_pair).select("key", "family").join(family_state, on="family").drop("family")
    for part in ("a", "b"):
        frame = frame.join(
            part_state.rename({"key": f"part_{part}", "_state": f"_state_{part}"}), on=f"part_{part}", how="left"
        )
    state_a, state_b = pl.col("_state_a"), pl.col("_state_b")
    part_failed = is_pair & ((state_a == "failed") | (state_b == "failed")).fill_null(False)
    # A part whose family is explained by overall activity: the pair's lift given that part is a marginal
    # comparison, so activity could carry it too; such a pair is never enabled.
    part_activity = is_pair & ((state_a == "activity") | (state_b == "activity")).fill_null(False)
    part_missing = is_pair & (state_a.is_null() | state_b.is_null())
    parts_both_replicated = is_pair & ((state_a == "replicated") & (state_b == "replicated")).fill_null(False)
    pair_allowed = ~part_failed & ~part_activity & ~part_missing & ~parts_both_replicated
    enable = pl.col("_qualifies") & pl.col("_replicates") & pair_allowed
    bar = f"lift ≥ {m:g} with CI low > 1"
    held_out = pl.when(is_pair).then(
        pl.format(
            "; given each part {} (CI low {}) and {} (CI low {})",
            _shown("holdout_given_a_lift"),
            _shown("holdout_given_a_lift_ci_low"),
            _shown("holdout_given_b_lift"),
            _shown("holdout_given_b_lift_ci_low"),
        )
    )
    frame = frame.with_columns(
        pl.when(enable)
        .then(pl.lit("enable"))
        .when(pl.col("_promising"))
        .then(pl.lit("review"))
        .otherwise(pl.lit("reject"))
        .alias("recommendation"),
        pl.when(enable & pl.col("_masked"))
        .then(
            pl.format(
                f"beyond overall activity: among equally active accounts significant after FDR and strong ({bar}) "
                "on the discovery cohorts (adjusted lift {}, CI {}–{}) and in the holdout (adjusted lift {}, CI {}–{}); "
                "its overall lift {} is smaller because the accounts doing it are less active than the rest",
                _shown("adjusted_lift"),
                _shown("adjusted_lift_ci_low"),
                _shown("adjusted_lift_ci_high"),
                _shown("holdout_adjusted_lift"),
                _shown("holdout_adjusted_lift_ci_low"),
                _shown("holdout_adjusted_lift_ci_high"),
                _shown("lift"),
            )
        )
        .when(enable)
        .then(
            pl.concat_str(
                pl.lit(f"significant after FDR, strong ({bar}) on the discovery cohorts, replicated in the holdout"),
                pl.when(is_pair).then(pl.lit("; adds beyond each part in both")).otherwise(pl.lit("")),
                pl.when(adjusts)
                .then(
                    pl.format(
                        "; beyond overall activity in both (adjusted lift {}, CI {}–{}; holdout {})",
                        _shown("adjusted_lift"),
                        _shown("adjusted_lift_ci_low"),
                        _shown("adjusted_lift_ci_high"),
                        _shown("holdout_adjusted_lift"),
                    )
                )
                .otherwise(pl.lit("")),
            )
        )
        .when(pl.col("_masked"))
        .then(
            pl.format(
                f"beyond overall activity on the discovery cohorts (adjusted lift {{}}, CI {{}}–{{}}), but not in the "
                f"holdout ({bar} among equally active accounts needed): adjusted lift {{}} (CI {{}}–{{}})",
                _shown("adjusted_lift"),
                _shown("adjusted_lift_ci_low"),
                _shown("adjusted_lift_ci_high"),
                _shown("holdout_adjusted_lift"),
                _shown("holdout_adjusted_lift_ci_low"),
                _shown("holdout_adjusted_lift_ci_high"),
            )
        )
        .when(pl.col("_promising") & ~big_enough)
        .then(pl.lit(f"significant but fewer than {config.min_sample} accounts"))
        .when(pl.col("_promising") & ~strong)
        .then(pl.lit(f"significant but lift below {m:g} or CI reaches 1"))
        .when(pl.col("_promising") & ~adds)
        .then(
            pl.format(
                f"pair adds too little beyond its parts: given each part, holding the other too needs {bar} "
                "(lift given one part {}, CI low {}; given the other {}, CI low {})",
                _shown("given_a_lift"),
                _shown("given_a_lift_ci_low"),
                _shown("given_b_lift"),
                _shown("given_b_lift_ci_low"),
            )
        )
        .when(pl.col("_promising") & ~beyond_activity & pl.col("adjusted_lift_ci_low").fill_nan(None).is_null())
        .then(
            pl.format(
                "cannot be separated from overall activity: {} (lift {})",
                pl.col("adjustment_status").fill_null("no adjusted figure"),
                _shown("lift"),
            )
        )
        .when(pl.col("_promising") & ~beyond_activity)
        .then(
            pl.format(
                "explained by overall activity (adjusted lift {}, CI {}–{}; lift {}): among equally active accounts "
                "the effect is not significant after FDR or its CI reaches 1",
                _shown("adjusted_lift"),
                _shown("adjusted_lift_ci_low"),
                _shown("adjusted_lift_ci_high"),
                _shown("lift"),
            )
        )
        .when(pl.col("_promising") & part_missing)
        .then(pl.lit("pair whose part was not tested in this run"))
        .when(pl.col("_promising") & pl.col("_qualifies") & (pl.col("holdout_n_total").fill_null(0) == 0))
        .then(pl.lit("no holdout cohorts to replicate on"))
        .when(pl.col("_promising") & pl.col("_qualifies") & replicates_marginally & ~pl.col("_replicates"))
        .then(
            pl.format(
                "replicated in the holdout, but not among equally active accounts: holdout adjusted lift {} "
                "(CI {}–{}; CI low > 1 needed)",
                _shown("holdout_adjusted_lift"),
                _shown("holdout_adjusted_lift_ci_low"),
                _shown("holdout_adjusted_lift_ci_high"),
            )
        )
        .when(pl.col("_promising") & pl.col("_qualifies") & ~pl.col("_replicates"))
        .then(
            pl.format(
                f"significant and strong on the discovery cohorts but did not replicate in the holdout ({bar} needed): "
                "lift {} (CI {}–{}){}",
                _shown("holdout_lift"),
                _shown("holdout_lift_ci_low"),
                _shown("holdout_lift_ci_high"),
                held_out.otherwise(pl.lit("")),
            )
        )
        .when(pl.col("_promising") & part_failed)
        .then(pl.lit("a part's family did not replicate in the holdout: no pair with any window or threshold of it"))
        .when(pl.col("_promising") & part_activity)
        .then(pl.lit("a part's family is explained by overall activity: no pair with any window or threshold of it"))
        .when(pl.col("_promising") & parts_both_replicated)
        .then(pl.lit("pair adds nothing to the score: its parts' families are both enabled already"))
        .when(significant & lift.is_null())
        .then(pl.lit("significant, but its lift is undefined (no account without it converted)"))
        .when(significant)
        .then(pl.lit("significant, but predicts lower conversion"))
        .otherwise(pl.lit(f"not significant after FDR (q > {config.fdr_alpha})"))
        .alias("recommendation_reason"),
    )
    best = frame.filter(pl.col("is_family_best")).select(
        "family",
        pl.col("signal_id").alias("_best_id"),
        pl.col("definition").alias("_best_def"),
        (pl.col("_qualifies") & ~pl.col("_replicates")).alias("_best_failed"),
    )
    demoted = ~pl.col("is_family_best") & (pl.col("_promising") | pl.col("_qualifies"))
    alternatives = frame.filter(demoted).group_by("family").agg(pl.col("definition").sort().alias("alternatives"))
    frame = frame.join(best, on="family", how="left").join(alternatives, on="family", how="left")
    frame = frame.with_columns(
        pl.when(demoted).then(pl.lit("reject")).otherwise(pl.col("recommendation")).alias("recommendation"),
        pl.when(demoted & pl.col("_best_failed"))
        .then(
            pl.format(
                "alternative of {} ({}), which did not replicate in the holdout: the family has no enabled signal",
                "_best_id",
                "_best_def",
            )
        )
        .when(demoted)
        .then(
            pl.format(
                "alternative of {} ({}): the family keeps its candidate chosen on the discovery cohorts",
                "_best_id",
                "_best_def",
            )
        )
        .otherwise(pl.col("recommendation_reason"))
        .alias("recommendation_reason"),
        pl.when(pl.col("is_family_best"))
        .then(pl.col("alternatives"))
        .otherwise(pl.lit(None, pl.List(pl.String)))
        .alias("alternatives"),
    )
    helpers = [
        "_masked",
        "_qualifies",
        "_activity_explained",
        "_replicates",
        "_promising",
        "_rank",
        "_adjusted_score",
        "_score",
        "_state_a",
        "_state_b",
    ]
    return frame.drop(*helpers, "_best_id", "_best_def", "_best_failed", *added)


def discover(
    discovery_counts: pl.DataFrame,
    holdout_counts: pl.DataFrame,
    pair_discovery: pl.DataFrame,
    pair_holdout: pl.DataFrame,
    config: DiscoveryConfig,
    span_days: float,
    adjustment: Adjustment | None = None,
) -> pl.DataFrame:
    """Test every supported candidate (singles and pairs), control the FDR, replicate, recommend.

    `pair_discovery` and `pair_holdout` are `pair_counts` rows, with their parts' own counts on the same
    accounts, from which `conditional_on_parts` measures what each pair adds. With `adjustment` (the
    per-stratum counts), every single and pair also gets its activity-adjusted figures (`attach_adjusted`),
    which `recommend` requires; without it the adjusted columns are NULL and the marginal rule decides.
    Returns one row per tested candidate with the `beton.signals` columns (see README) plus counts,
    holdout figures, the lifts of pairs given each part and the family bookkeeping.
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
    if not pairs.is_empty():
        tested_pairs = pl.col("key").is_in(pairs.get_column("key").implode())
        given = conditional_on_parts(pairs, config.confidence_level)
        held_pairs = pair_holdout.filter(tested_pairs) if not pair_holdout.is_empty() else pair_holdout
        held = conditional_on_parts(held_pairs, config.confidence_level, prefix="holdout_")
        evaluated = evaluated.join(given, on="key", how="left").join(held, on="key", how="left")
    evaluated = evaluated.with_columns(projected_arr(evaluated, span_days, config.acv))
    evaluated = no_adjustment(evaluated) if adjustment is None else attach_adjusted(evaluated, adjustment, config)
    source = pl.when(pl.col("kind").is_in(CUSTOM_KINDS)).then(pl.lit("custom")).otherwise(pl.lit("discovered"))
    return recommend(evaluated, config).with_columns(source.alias("source"))


@dataclass(frozen=True)
class PairCounts:
    """A `PairSource`'s answer: `pair_counts` rows on the pairs' test months and on the holdout months, and,
    when the source knows each account's activity, the pairs' per-stratum counts on both (`count_by_stratum`)."""

    discovery: pl.DataFrame
    holdout: pl.DataFrame
    strata: StratumCounts | None = None


PairSource = Callable[[list[str], HoldoutSplit], PairCounts]
"""Returns the pair counts for the chosen single candidates on the split's months."""


@dataclass(frozen=True)
class DiscoveryRun:
    """A discovery run's result: one row per tested candidate, and the temporal split it used."""

    signals: pl.DataFrame
    split: HoldoutSplit


def discover_from_cohort_counts(
    cohort_counts: pl.DataFrame,
    pair_source: PairSource,
    config: DiscoveryConfig,
    holdout_fraction: float,
    stratum_counts: StratumCounts | None = None,
    custom_stratum_counts: StratumCounts | None = None,
) -> DiscoveryRun:
    """Split cohorts in time, add up their counts, form pairs, and `discover`.

    `cohort_counts` holds `sufficient_statistics` rows with a `cohort_month` column (one block per
    month); `pair_source(top_keys, split)` returns the pair counts for the chosen singles, from
    whatever holds account-level membership (memory, or the warehouse). `stratum_counts` (the same
    months, per activity band: `count_by_stratum`) turns on the activity adjustment; pairs are adjusted
    when the pair source gives their per-stratum counts too; custom signals (kinds `CUSTOM_KINDS`) when
    `custom_stratum_counts` gives theirs (`Adjustment.custom`).
    """
    sizes = cohort_counts.group_by("cohort_month").agg(pl.col("n_total").first().alias("n_eligible"))
    split = choose_holdout(sizes, holdout_fraction)
    disc = sum_counts(cohort_counts, split.discovery_months)
    hold = sum_counts(cohort_counts, split.holdout_months)
    # Pairs are chosen on half of the discovery months and tested on the other half, so the test of a
    # pair never uses the data that selected it (choosing and testing on the same accounts would make
    # its p-value optimistic: measured on shuffled outcomes, it tripled the false discoveries).
    select_months, test_months = split.discovery_months[::2], split.discovery_months[1::2]
    pair_disc, pair_hold, pair_strata = pl.DataFrame(), pl.DataFrame(), None
    if test_months:
        chosen = select_candidates(disc, config).get_column("key")
        singles = supported(sum_counts(cohort_counts, select_months), config).filter(pl.col("key").is_in(chosen))
        singles = evaluate(singles, config.confidence_level)
        if stratum_counts is not None and not singles.is_empty():
            # With the adjustment, the strongest singles are those strongest among equally active accounts
            # (adjusted p and lift on the same selection months), so activity proxies do not crowd the pairs.
            among_equals = adjusted_statistics(
                singles.get_column("key"), stratum_counts, select_months, config.confidence_level
            )
            singles = (
                singles.drop("lift", "p_value")
                .join(
                    among_equals.select(
                        "key", pl.col("adjusted_lift").alias("lift"), pl.col("adjusted_p_value").alias("p_value")
                    ),
                    on="key",
                    how="left",
                )
                .with_columns(pl.col("p_value").fill_nan(None), pl.col("lift").fill_nan(None))
            )
        top = top_singles(singles, config.pair_top_k)
        if len(top) >= 2:
            pair_split = HoldoutSplit(test_months, split.holdout_months, 0, split.n_holdout)
            found = pair_source(top, pair_split)
            pair_disc, pair_hold, pair_strata = found.discovery, found.holdout, found.strata
    adjustment = None
    if stratum_counts is not None:
        adjustment = Adjustment(
            singles=stratum_counts,
            pairs=pair_strata if pair_strata is not None else StratumCounts.empty(),
            discovery_months=split.discovery_months,
            pair_months=test_months,
            holdout_months=split.holdout_months,
            custom=custom_stratum_counts,
        )
    result = discover(disc, hold, pair_disc, pair_hold, config, span_days(split.discovery_months), adjustment)
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


def pair_stratum_counts(
    matrix: CandidateMatrix,
    pairs: pl.DataFrame,
    windows: np.ndarray,
    activity: dict[int, np.ndarray],
    cohort_month: np.ndarray,
    converted: np.ndarray,
    n_bands: int,
) -> StratumCounts:
    """Per-stratum counts of the AND-pairs in `pairs` (`pair_counts` rows with `part_a`, `part_b`).

    A pair's membership is the product of its parts' columns; its activity window is the longer of its
    parts' (`windows`, one per column of `matrix`: the pair is known only once both parts are), and it is
    counted per cohort month × band by `count_by_stratum`, the same bands as its parts'.
    """
    if pairs.is_empty():
        return StratumCounts.empty()
    index = {key: i for i, key in enumerate(matrix.candidates.get_column("key").to_list())}
    ia = np.array([index[k] for k in pairs.get_column("part_a").to_list()], dtype=np.int64)
    ib = np.array([index[k] for k in pairs.get_column("part_b").to_list()], dtype=np.int64)
    x = sp.csc_matrix(matrix.matrix)
    both = x[:, ia].multiply(x[:, ib])
    return count_by_stratum(
        both,
        pairs.get_column("key").to_numpy(),
        np.maximum(windows[ia], windows[ib]),
        activity,
        cohort_month,
        converted,
        n_bands,
    )


def matrix_pair_source(
    matrix: CandidateMatrix,
    cohort_month: np.ndarray,
    converted: np.ndarray,
    arr: np.ndarray,
    activity: dict[int, np.ndarray] | None = None,
    windows: np.ndarray | None = None,
    n_bands: int = 10,
) -> PairSource:
    """A `PairSource` over an in-memory candidate matrix; with each account's `activity` and each column's
    activity window (`windows`), it also gives the pairs' per-stratum counts (`pair_stratum_counts`)."""

    def source(top: list[str], split: HoldoutSplit) -> PairCounts:
        out = []
        for months in (split.discovery_months, split.holdout_months):
            rows = np.flatnonzero(np.isin(cohort_month, list(months)))
            sub = matrix.take_rows(rows)
            out.append(pair_counts(sub, top, converted[rows], arr[rows]))
        if activity is None or windows is None or out[0].is_empty():
            return PairCounts(out[0], out[1])
        rows = np.flatnonzero(np.isin(cohort_month, [*split.discovery_months, *split.holdout_months]))
        strata = pair_stratum_counts(
            matrix.take_rows(rows),
            out[0],
            windows,
            {w: a[rows] for w, a in activity.items()},
            np.asarray(cohort_month)[rows],
            converted[rows],
            n_bands,
        )
        return PairCounts(out[0], out[1], strata)

    return source


def span_days(months: tuple) -> float:
    """Days covered by a run of cohort months (`YYYY-MM`), for per-year scaling."""
    if not months:
        return 365.0
    first_year, first_month = map(int, min(months).split("-"))
    last_year, last_month = map(int, max(months).split("-"))
    return ((last_year - first_year) * 12 + last_month - first_month + 1) * 365.0 / 12.0
