"""Every row of the session's `beton.signals` recomputed from its own counts with scipy and statsmodels, to 1e-9.

This is the project's own version of the independent check of `../shared/tools/check_signals_table.py`
(a user's clone has no `../shared`). It is written from the documented methods (README, "How discovery
decides (the methods)"; the `core.discovery` and `core.stats` docstrings) and never calls beton's
`core.stats`: every number comes from scipy or statsmodels, or from a formula written out here.

Recomputed per row, from `n_with`, `conversions_with`, `n_without`, `conversions_without` and
`confidence_level`:

* `rate_with`, `rate_without`, `lift` (empty when rate_without is 0; never corrected);
* the test `method` names: Fisher exact exactly when an expected cell of the 2x2 table is below 5
  (`scipy.stats.contingency.expected_freq`), else the pooled two-proportion z-test; "insufficient
  data" exactly when a group is empty; "Haldane-Anscombe" exactly when a conversion count is 0;
* `p_value`, two-sided: statsmodels `proportions_ztest` (pooled variance, no continuity correction) or
  `scipy.stats.fisher_exact`, whichever `method` names;
* `lift_ci_low` / `lift_ci_high`: statsmodels `confint_proportions_2indep(compare="ratio", method="log")`
  (Katz) where a, c > 0; otherwise the Haldane–Anscombe +0.5-per-cell rule, written out below;
* `q_value`: statsmodels `multipletests(method="fdr_bh")` over the family, which is every row of the
  run (`source` discovered or custom) with a p-value; `method` states the family size, checked too.

From the warehouse beside the table (`beton.signal_cohort_counts`, the per-cohort-month totals):

* the temporal split: the holdout is the shortest run of latest months holding >= `holdout_fraction`
  of the eligible accounts, and it must hold exactly `holdout_n_total` accounts; singles are tested on
  all the other months, pairs on the odd-numbered ones only (n_with + n_without and the conversions
  add up to those months' totals);
* the holdout's conversions total, which `beton.signals` does not store (it stores
  `holdout_n_with`, `holdout_conversions_with`, `holdout_n_total`): from it, `holdout_lift`, its CI
  and `holdout_p_value` are recomputed like the discovery statistics.

Invariants: q >= p; the recommendation is recomputed from README steps 6-8: a row qualifies on the
discovery cohorts when q <= fdr_alpha, lift >= min_lift, CI low > 1, n_with >= min_sample (a pair also
when its lift given each part, recomputed from `beton.signal_cohort_counts` on the pair's months, is
>= min_lift with CI low > 1); each family's candidate is chosen without the holdout (qualifying, then
significant with lift > 1 on min_sample accounts, then significant with lift > 1, then the rest; highest CI
low, highest adjusted CI low, lowest p, key); it is enabled when its holdout
lift is >= min_lift with CI low > 1 (a pair: also its holdout lift given each part, from the parts' rows'
holdout counts), no part's family failed replication and the parts' families are not both enabled; the
family's other significant rows with lift > 1 are rejected; `enabled` is the user's override, else
recommendation = enable.

Adjusted figures (README, "Adjusted lift"), for every discovered single from
`beton.signal_cohort_stratum_counts` and `beton.signal_cohort_strata` (strata: cohort month x activity band of
the row's activity window; the band's accounts without the candidate are its total minus the holders):
`adjusted_lift` is statsmodels `StratifiedTable.riskratio_pooled`, `adjusted_p_value` its
`test_null_odds(correction=False)`, the interval the Greenland–Robins variance written out here; the same on
the holdout months (`holdout_adjusted_…`); `adjusted_q_value` is `multipletests(fdr_bh)` over every row with
an adjusted p-value; `activity_strata` counts the informative strata. Custom signals the same way, from
`beton.custom_signal_stratum_counts` and `beton.custom_signal_strata` on the observation window, whose bands must
be those of `beton.signal_cohort_strata` for that month and window. Pairs' stratum counts are not stored:
their adjusted figures enter the rule as written. The rule adds: a row with an adjustment qualifies only when
its adjusted q <= fdr_alpha and adjusted CI low > 1, and replicates only when its holdout adjusted CI low > 1;
a single that misses the marginal bar but whose adjusted q <= fdr_alpha and adjusted lift >= min_lift with CI
low > 1 (masked by activity) qualifies on that, and replicates when its holdout adjusted lift clears the bar.

Not recomputable from the table alone: `projected_arr` needs each signal's observed ARR of its
converted accounts (`arr_with`, not stored); only its sign (that of rate_with − rate_without) and the
fallback ARR per conversion (`revenue.acv` when a signal has no conversions) are checked.
"""

from __future__ import annotations

import functools
import json
import math
import re

import duckdb
import numpy as np
import polars as pl
import pytest
from scipy import stats
from scipy.stats.contingency import expected_freq
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from beton_pipeline.settings import load_settings

REL_TOL = 1e-9
FISHER_BELOW_EXPECTED = 5.0  # README step 5
FAMILY_SIZE = re.compile(r"q: Benjamini-Hochberg over (\d+) candidates")


def missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def close(stored, expected) -> bool:
    """Equal to REL_TOL relative (both empty counts as equal; tiny p-values below 1e-300 count as 0)."""
    if missing(expected):
        return missing(stored)
    if missing(stored):
        return False
    return math.isclose(float(stored), float(expected), rel_tol=REL_TOL, abs_tol=1e-300)


# ------------------------------------------------------------------------------------------------
# The statistics of one 2x2 table, independently
# ------------------------------------------------------------------------------------------------
def uses_fisher(a: int, n1: int, c: int, n2: int) -> bool:
    """Cochran's rule: any of the four expected cells below 5."""
    table = np.array([[a, n1 - a], [c, n2 - c]], dtype=float)
    return bool(expected_freq(table).min() < FISHER_BELOW_EXPECTED)


def katz_interval(a: int, n1: int, c: int, n2: int, level: float) -> tuple[float, float]:
    """Katz log CI of the risk ratio; Haldane–Anscombe (+0.5 in each cell: a, c +0.5, n1, n2 +1) on a zero count."""
    if a > 0 and c > 0:
        low, high = confint_proportions_2indep(a, n1, c, n2, compare="ratio", method="log", alpha=1 - level)
        return float(low), float(high)
    a_, n1_, c_, n2_ = a + 0.5, n1 + 1.0, c + 0.5, n2 + 1.0
    log_rr = math.log((a_ / n1_) / (c_ / n2_))
    se = math.sqrt(1 / a_ - 1 / n1_ + 1 / c_ - 1 / n2_)
    z = stats.norm.ppf(1 - (1 - level) / 2)
    return math.exp(log_rr - z * se), math.exp(log_rr + z * se)


def two_sided_p(a: int, n1: int, c: int, n2: int, fisher: bool) -> float:
    if fisher:
        return float(stats.fisher_exact([[a, n1 - a], [c, n2 - c]], alternative="two-sided").pvalue)
    _, p = proportions_ztest(np.array([a, c]), np.array([n1, n2]), value=0, alternative="two-sided", prop_var=False)
    return float(p)


@functools.cache  # a pure function of the counts: the perturbation tests reuse the session table's results
def table_stats(a: int, n1: int, c: int, n2: int, level: float) -> dict:
    """rates, lift, CI, p and which test/interval, for conversions a of n1 (with) and c of n2 (without).

    The result is shared between calls (cached): read it, never change it."""
    out = dict.fromkeys(("rate_with", "rate_without", "lift", "lift_ci_low", "lift_ci_high", "p_value"))
    out["rate_with"] = a / n1 if n1 > 0 else None
    out["rate_without"] = c / n2 if n2 > 0 else None
    if n1 == 0 or n2 == 0:
        return out | {"test": "insufficient data", "haldane": False}
    fisher = uses_fisher(a, n1, c, n2)
    out["lift"] = (a / n1) / (c / n2) if c > 0 else None
    out["lift_ci_low"], out["lift_ci_high"] = katz_interval(a, n1, c, n2, level)
    out["p_value"] = two_sided_p(a, n1, c, n2, fisher)
    return out | {"test": "Fisher exact" if fisher else "z-test (pooled)", "haldane": a == 0 or c == 0}


# ------------------------------------------------------------------------------------------------
# The checker
# ------------------------------------------------------------------------------------------------
def check_row_statistics(row: dict) -> list[str]:
    """Discovery statistics of one row against their recomputation; one message per wrong column."""
    a, n1 = row["conversions_with"], row["n_with"]
    c, n2 = row["conversions_without"], row["n_without"]
    want = table_stats(a, n1, c, n2, row["confidence_level"])
    sid = row["signal_id"]
    bad = [
        f"{sid}: {col} = {row[col]!r}, recomputed {want[col]!r}"
        for col in ("rate_with", "rate_without", "lift", "lift_ci_low", "lift_ci_high", "p_value")
        if not close(row[col], want[col])
    ]
    method = row["method"] or ""
    if not method.startswith(want["test"]):
        bad.append(f"{sid}: method {method!r} should name {want['test']!r} (counts {a}/{n1} vs {c}/{n2})")
    if ("Haldane-Anscombe" in method) != want["haldane"]:
        bad.append(f"{sid}: method {method!r} misstates the Haldane-Anscombe correction (a={a}, c={c})")
    if not missing(row["p_value"]) and not (row["q_value"] >= row["p_value"]):
        bad.append(f"{sid}: q_value {row['q_value']} < p_value {row['p_value']}")
    return bad


def check_holdout(row: dict, holdout_conversions: int) -> list[str]:
    """holdout_lift, its CI and p from the stored holdout counts and the holdout's conversions total."""
    a, n1, total = row["holdout_conversions_with"], row["holdout_n_with"], row["holdout_n_total"]
    want = table_stats(a, n1, holdout_conversions - a, total - n1, row["confidence_level"])
    pairs = [("holdout_lift", "lift"), ("holdout_lift_ci_low", "lift_ci_low")]
    pairs += [("holdout_lift_ci_high", "lift_ci_high"), ("holdout_p_value", "p_value")]
    return [
        f"{row['signal_id']}: {col} = {row[col]!r}, recomputed {want[key]!r}"
        for col, key in pairs
        if not close(row[col], want[key])
    ]


def bh_mismatches(rows: list[dict], p_column: str, q_column: str) -> list[str]:
    """Rows whose `q_column` is not statsmodels' Benjamini-Hochberg over every row's `p_column` (rows without a
    p-value are left out of the family)."""
    tested = [r for r in rows if not missing(r[p_column])]
    if not tested:
        return []
    _, q, _, _ = multipletests([r[p_column] for r in tested], method="fdr_bh")
    return [
        f"{r['signal_id']}: {q_column} = {r[q_column]!r}, Benjamini-Hochberg over {len(tested)} gives {float(want)!r}"
        for r, want in zip(tested, q, strict=True)
        if not close(r[q_column], want)
    ]


def check_q_values(rows: list[dict]) -> list[str]:
    """Benjamini–Hochberg over every row of the run with a p-value; the family size `method` states."""
    bad = bh_mismatches(rows, "p_value", "q_value")
    bad += [f"{r['signal_id']}: no p-value but q_value {r['q_value']!r}" for r in rows if missing(r["p_value"])]
    bad += [
        f"{r['signal_id']}: method {r['method']!r} does not state the family size {len(rows)}"
        for r in rows
        if (m := FAMILY_SIZE.search(r["method"] or "")) is None or int(m.group(1)) != len(rows)
    ]
    return bad


def clears(lift, low, rules: dict) -> bool:
    """The effect bar of README steps 6-8: lift >= min_lift and its CI low bound > 1 (missing never clears)."""
    return not missing(lift) and not missing(low) and lift >= rules["min_lift"] and low > 1


def beyond_activity(row: dict, rules: dict) -> bool:
    """With an adjustment: adjusted q <= fdr_alpha and adjusted lift CI low > 1 (none: the marginal rule alone)."""
    if row.get("adjustment_method") is None:
        return True
    q, low = row.get("adjusted_q_value"), row.get("adjusted_lift_ci_low")
    return not missing(q) and not missing(low) and q <= rules["fdr_alpha"] and low > 1


def marginally_qualifies(row: dict, rules: dict) -> bool:
    """README step 6's marginal conditions on the discovery cohorts (before the pair's conditional test)."""
    if missing(row["q_value"]):
        return False
    return (
        row["q_value"] <= rules["fdr_alpha"]
        and clears(row["lift"], row["lift_ci_low"], rules)
        and row["n_with"] >= rules["min_sample"]
    )


def masked(row: dict, rules: dict) -> bool:
    """A single whose effect shows only among equally active accounts: it does not clear the marginal bar (q,
    lift, CI low), but its adjusted q <= fdr_alpha and adjusted lift >= min_lift with CI low > 1, on at least
    min_sample accounts; the adjusted result then carries the whole rule."""
    if row.get("adjustment_method") is None or row["kind"] == "pair":
        return False
    marginal = not missing(row["q_value"]) and row["q_value"] <= rules["fdr_alpha"]
    marginal = marginal and clears(row["lift"], row["lift_ci_low"], rules)
    q = row.get("adjusted_q_value")
    return (
        not marginal
        and not missing(q)
        and q <= rules["fdr_alpha"]
        and clears(row.get("adjusted_lift"), row.get("adjusted_lift_ci_low"), rules)
        and row["n_with"] >= rules["min_sample"]
    )


def qualifies(row: dict, rules: dict) -> bool:
    """README step 6 on the discovery cohorts, the adjusted result included."""
    return (marginally_qualifies(row, rules) and beyond_activity(row, rules)) or masked(row, rules)


def replicates(row: dict, rules: dict) -> bool:
    """README step 7 for a single: the holdout lift clears the same bar; adjusted, its CI low bound is > 1; a
    masked single: its holdout adjusted lift clears the bar."""
    if masked(row, rules):
        return clears(row.get("holdout_adjusted_lift"), row.get("holdout_adjusted_lift_ci_low"), rules)
    held_adjusted = row.get("adjustment_method") is None or (
        not missing(row.get("holdout_adjusted_lift_ci_low")) and row["holdout_adjusted_lift_ci_low"] > 1
    )
    return clears(row["holdout_lift"], row["holdout_lift_ci_low"], rules) and held_adjusted


def adds_beyond(pair_n: int, pair_conv: int, part_n: int, part_conv: int, level: float, rules: dict) -> bool:
    """Among holders of a part, holders of both against the rest (README step 4) clear the bar."""
    s = table_stats(pair_conv, pair_n, part_conv - pair_conv, part_n - pair_n, level)
    return clears(s["lift"], s["lift_ci_low"], rules)


def check_recommendations(rows: list[dict], rules: dict, pair_part_counts: dict | None = None) -> list[str]:
    """The recommendation, family best and `enabled` of every row, recomputed from the rule.

    `pair_part_counts` maps a candidate key to its (n_with, conversions_with) on the pairs' months."""
    by_id = {r["signal_id"]: r for r in rows}
    pair_part_counts = pair_part_counts or {}
    bad = []
    ok_discovery, ok_holdout = {}, {}
    for r in rows:
        sid = r["signal_id"]
        ok_discovery[sid], ok_holdout[sid] = qualifies(r, rules), replicates(r, rules)
        if r["kind"] == "pair":
            parts = [by_id.get(r["part_a_id"]), by_id.get(r["part_b_id"])]
            if any(p is None or p["candidate_key"] not in pair_part_counts for p in parts):
                ok_discovery[sid] = False
                continue
            level = r["confidence_level"]
            ok_discovery[sid] = ok_discovery[sid] and all(
                adds_beyond(r["n_with"], r["conversions_with"], *pair_part_counts[p["candidate_key"]], level, rules)
                for p in parts
            )
            ok_holdout[sid] = ok_holdout[sid] and all(
                adds_beyond(
                    r["holdout_n_with"], r["holdout_conversions_with"],
                    p["holdout_n_with"], p["holdout_conversions_with"], level, rules,
                )
                for p in parts
            )  # fmt: skip

    def promising(r) -> bool:
        return (
            not missing(r["q_value"])
            and r["q_value"] <= rules["fdr_alpha"]
            and not missing(r["lift"])
            and r["lift"] > 1
        )

    families: dict[str, list[dict]] = {}
    for r in rows:
        families.setdefault(r["family"], []).append(r)

    def order(r):
        low, adjusted_low = r["lift_ci_low"], r.get("adjusted_lift_ci_low")
        p = math.inf if missing(r["p_value"]) else r["p_value"]
        big = r["n_with"] >= rules["min_sample"]
        rank = 0 if ok_discovery[r["signal_id"]] else 1 if promising(r) and big else 2 if promising(r) else 3
        adjusted = -1.0 if missing(adjusted_low) else adjusted_low
        return (rank, -(-1.0 if missing(low) else low), -adjusted, p, r["candidate_key"])

    best = {family: min(members, key=order) for family, members in families.items()}
    state = {}
    for family, b in best.items():
        sid = b["signal_id"]
        explained = marginally_qualifies(b, rules) and not beyond_activity(b, rules)
        state[family] = (
            "activity"
            if explained and b["kind"] != "pair"
            else "untrusted"
            if not ok_discovery[sid]
            else "replicated"
            if ok_holdout[sid]
            else "failed"
        )
    for family, members in families.items():
        b = best[family]
        for r in members:
            sid = r["signal_id"]
            allowed = True
            if r["kind"] == "pair":
                parts = [by_id.get(r["part_a_id"]), by_id.get(r["part_b_id"])]
                states = [None if p is None else state[p["family"]] for p in parts]
                allowed = (
                    None not in states
                    and "failed" not in states
                    and "activity" not in states
                    and states != ["replicated", "replicated"]
                )
            if r is b:
                want = (
                    "enable"
                    if ok_discovery[sid] and ok_holdout[sid] and allowed
                    else "review"
                    if promising(r)
                    else "reject"
                )
            else:
                want = "reject"
            if bool(r["is_family_best"]) != (r is b):
                bad.append(f"{sid}: is_family_best {r['is_family_best']} but the best of {family} is {b['signal_id']}")
            if r["recommendation"] != want:
                bad.append(f"{sid}: recommendation {r['recommendation']!r}, the rule gives {want!r}")
            override = r["enabled_override"]
            enabled = (r["recommendation"] == "enable") if override is None else override
            if r["enabled"] != enabled:
                bad.append(f"{sid}: enabled {r['enabled']} (recommendation {r['recommendation']}, override {override})")
    return bad + check_enabled_invariants(rows, rules)


def check_enabled_invariants(rows: list[dict], rules: dict) -> list[str]:
    """The README's invariants for enabled-by-recommendation rows, stated directly."""
    bad = []
    for r in rows:
        if r["recommendation"] == "enable" and masked(r, rules):
            if not (
                clears(r.get("holdout_adjusted_lift"), r.get("holdout_adjusted_lift_ci_low"), rules)
                and r["adjusted_q_value"] <= rules["fdr_alpha"]
            ):
                bad.append(f"{r['signal_id']}: enabled beyond activity without its adjusted holdout clearing the bar")
        elif r["recommendation"] == "enable" and not (
            r["n_with"] >= rules["min_sample"]
            and not any(
                missing(r[c]) for c in ("lift", "lift_ci_low", "q_value", "holdout_lift", "holdout_lift_ci_low")
            )
            and r["lift"] >= rules["min_lift"]
            and r["lift_ci_low"] > 1
            and r["q_value"] <= rules["fdr_alpha"]
            and r["holdout_lift"] >= rules["min_lift"]
            and r["holdout_lift_ci_low"] > 1
        ):
            bad.append(f"{r['signal_id']}: enabled by recommendation without meeting min_sample/min_lift/CI/q/holdout")
    return bad


def stratified_tables(key: str, window: int, months: list[str], counts: pl.DataFrame, strata: pl.DataFrame) -> list:
    """The candidate's 2x2 tables [[a, n1 - a], [c, n2 - c]] of its informative strata (cohort month x band)."""
    held = {
        (r["cohort_month"], r["stratum"]): (r["n_with"], r["conversions_with"])
        for r in counts.filter((pl.col("key") == key) & pl.col("cohort_month").is_in(months)).to_dicts()
    }
    tables = []
    for band in strata.filter(
        (pl.col("activity_window_days") == window) & pl.col("cohort_month").is_in(months)
    ).to_dicts():
        n1, a = held.get((band["cohort_month"], band["stratum"]), (0, 0))
        n2, c = band["n_total"] - n1, band["conversions_total"] - a
        if n1 > 0 and n2 > 0:
            tables.append(np.array([[a, n1 - a], [c, n2 - c]], dtype=float))
    return tables


def mantel_haenszel_independently(tables: list, level: float) -> dict:
    """Pooled RR and the CMH p-value from statsmodels StratifiedTable; the Greenland–Robins interval written out
    (Greenland & Robins 1985): Var = Σ(K n1 n2 − a c N)/N² ÷ (Σ a n2/N · Σ c n1/N)."""
    from statsmodels.stats.contingency_tables import StratifiedTable

    if not tables:
        return {"lift": None, "low": None, "high": None, "p": None, "strata": 0}
    t = np.array(tables)
    a, n1 = t[:, 0, 0], t[:, 0].sum(axis=1)
    c, n2 = t[:, 1, 0], t[:, 1].sum(axis=1)
    n = n1 + n2
    r, s = np.sum(a * n2 / n), np.sum(c * n1 / n)
    table = StratifiedTable(tables)
    # statsmodels' CMH statistic; its p-value as chi2.sf (statsmodels' own `pvalue` is 1 − cdf, which loses the
    # digits below 1e-16 that the 1e-9 relative comparison needs)
    has_variance = np.sum(n1 * n2 * (a + c) * (n - a - c)) > 0
    p = float(stats.chi2.sf(table.test_null_odds(correction=False).statistic, 1)) if has_variance else 1.0
    if r == 0 or s == 0:
        lift = None if r == s == 0 else math.inf if s == 0 else 0.0  # RR_MH = r / s: 0/0 is undefined
        return {"lift": lift, "low": None, "high": None, "p": p, "strata": len(tables)}
    half = stats.norm.ppf(1 - (1 - level) / 2) * math.sqrt(np.sum(((a + c) * n1 * n2 - a * c * n) / n**2) / (r * s))
    rr = float(table.riskratio_pooled)
    return {"lift": rr, "low": rr * math.exp(-half), "high": rr * math.exp(half), "p": p, "strata": len(tables)}


_ADJUSTMENTS: dict[tuple, dict] = {}
"""Recomputed adjustments by (stored tables, key, window, months, level): the perturbation tests check the same
stored counts again and again, and only the signals table they compare with changes."""


def recomputed_adjustment(
    key: str, window: int, months: list[str], counts: pl.DataFrame, strata: pl.DataFrame, level: float
) -> dict:
    """`mantel_haenszel_independently` of the candidate's stratified tables, computed once per stored tables
    (the module's `run` fixture keeps them alive, so their ids are not reused while it runs)."""
    cache_key = (id(counts), id(strata), key, window, tuple(months), level)
    if cache_key not in _ADJUSTMENTS:
        _ADJUSTMENTS[cache_key] = mantel_haenszel_independently(
            stratified_tables(key, window, months, counts, strata), level
        )
    return _ADJUSTMENTS[cache_key]


def same_bands(strata: pl.DataFrame, custom_strata: pl.DataFrame) -> list[str]:
    """The custom signals' bands are the discovered candidates' bands of the same month and window (where the
    month's discovered candidates have that window)."""
    band = ["cohort_month", "activity_window_days", "stratum"]
    columns = [*band, "activity_low", "activity_high", "n_total", "conversions_total"]
    shared = custom_strata.select(columns).join(strata.select(columns), on=band, how="inner", suffix="_discovered")
    bad = []
    groups = custom_strata.select("cohort_month", "activity_window_days").unique()
    covered = (
        strata.select("cohort_month", "activity_window_days")
        .unique()
        .join(groups, on=["cohort_month", "activity_window_days"])
    )
    wanted = strata.join(covered, on=["cohort_month", "activity_window_days"]).height
    if (
        shared.height != wanted
        or custom_strata.join(covered, on=["cohort_month", "activity_window_days"]).height != wanted
    ):
        bad.append(f"custom signals' bands: {shared.height} shared with the discovered candidates', {wanted} expected")
    for c in columns[len(band) :]:
        differ = shared.filter(pl.col(c) != pl.col(f"{c}_discovered"))
        if differ.height:
            bad.append(f"custom signals' bands: {c} differs from the discovered candidates' in {differ.height} band(s)")
    return bad


def check_adjusted(
    rows: list[dict],
    counts: pl.DataFrame,
    strata: pl.DataFrame,
    discovery: list[str],
    holdout: list[str],
    rules: dict,
    custom: tuple[pl.DataFrame, pl.DataFrame] | None = None,
) -> list[str]:
    """Every adjusted column of every discovered single and custom signal, recomputed from the stored stratum
    counts (`custom`: the custom signals' counts and bands; None: custom rows must not be adjusted); the
    adjusted q-values over every row with an adjusted p-value."""
    bad = []
    windows = dict(counts.select("key", "activity_window_days").unique("key").iter_rows())
    custom_windows = (
        {} if custom is None else dict(custom[0].select("key", "activity_window_days").unique("key").iter_rows())
    )
    if custom is not None:
        bad += same_bands(strata, custom[1])
    for r in rows:
        sid = r["signal_id"]
        if r["kind"] == "pair":
            continue
        is_custom = r["source"] == "custom"
        if is_custom and r["candidate_key"] not in custom_windows:
            if r["adjustment_method"] is not None:  # not counted per band, or held by nobody
                bad.append(f"{sid}: a custom signal without stratum counts but with an adjustment")
            continue
        if r["adjustment_method"] is None or r["candidate_key"] not in windows | custom_windows:
            bad.append(f"{sid}: a single without an adjustment or without stratum counts")
            continue
        window = (custom_windows if is_custom else windows)[r["candidate_key"]]
        row_counts, row_strata = custom if is_custom else (counts, strata)
        if f"(all events in the first {window} days)" not in r["adjustment_method"]:
            bad.append(f"{sid}: adjustment_method {r['adjustment_method']!r} does not name its window {window}")
        for prefix, months in (("adjusted_", discovery), ("holdout_adjusted_", holdout)):
            want = recomputed_adjustment(
                r["candidate_key"], window, months, row_counts, row_strata, r["confidence_level"]
            )
            for col, key in (("lift", "lift"), ("lift_ci_low", "low"), ("lift_ci_high", "high"), ("p_value", "p")):
                if not close(r[f"{prefix}{col}"], want[key]):
                    bad.append(f"{sid}: {prefix}{col} = {r[f'{prefix}{col}']!r}, recomputed {want[key]!r}")
            if prefix == "adjusted_" and r["activity_strata"] != want["strata"]:
                bad.append(f"{sid}: activity_strata = {r['activity_strata']}, informative strata {want['strata']}")
    return bad + bh_mismatches(rows, "adjusted_p_value", "adjusted_q_value")


def check_projected_arr(row: dict, acv: float, span_days: float) -> list[str]:
    """Sign of projected ARR, and ARR per conversion = acv when the signal has no conversion."""
    if missing(row["rate_with"]) or missing(row["rate_without"]) or missing(row["projected_arr"]):
        return []
    diff = row["rate_with"] - row["rate_without"]
    per_year = row["n_with"] * 365.0 / span_days
    if row["conversions_with"] == 0:
        return [] if close(row["projected_arr"], diff * per_year * acv) else [f"{row['signal_id']}: projected_arr"]
    if diff != 0 and np.sign(row["projected_arr"]) != np.sign(diff):
        return [f"{row['signal_id']}: projected_arr {row['projected_arr']} has the wrong sign for {diff}"]
    return []


def temporal_split(cohort_totals: pl.DataFrame, holdout_fraction: float) -> tuple[list[str], list[str]]:
    """(discovery, holdout) cohort months: the holdout is the shortest run of latest months holding at least
    `holdout_fraction` of the eligible accounts (README step 1); at least one month stays in discovery."""
    months = cohort_totals.sort("cohort_month")
    labels, n = months.get_column("cohort_month").to_list(), months.get_column("n_total").to_list()
    k, held = 0, 0
    while k < len(n) - 1 and held < holdout_fraction * sum(n):
        k += 1
        held += n[-k]
    return labels[: len(labels) - k], labels[len(labels) - k :]


def months_span_days(months: list[str]) -> float:
    """Days covered by the calendar months from the first to the last of `months` (YYYY-MM), 365/12 each."""
    if not months:
        return 365.0
    (y0, m0), (y1, m1) = (map(int, min(months).split("-")), map(int, max(months).split("-")))
    return ((y1 - y0) * 12 + m1 - m0 + 1) * 365.0 / 12.0


def check_signals(
    frame: pl.DataFrame,
    cohort_totals: pl.DataFrame,
    rules: dict,
    holdout_fraction: float,
    acv: float,
    candidate_counts: pl.DataFrame | None = None,
    stratified: tuple[pl.DataFrame, ...] | None = None,
) -> list[str]:
    """Every problem found in `frame` (the discovered and custom rows of beton.signals of one run).

    `cohort_totals` has one row per eligible cohort month: `cohort_month` (YYYY-MM), `n_total`,
    `conversions_total`; `candidate_counts` (`key`, `cohort_month`, `n_with`, `conversions_with`) holds the
    per-cohort counts of the pairs' parts; `stratified` the discovered candidates' stratum counts and bands, then
    (optionally) the custom signals'. Returns messages (empty when every row is consistent)."""
    rows = frame.to_dicts()
    totals = {r["cohort_month"]: (r["n_total"], r["conversions_total"]) for r in cohort_totals.to_dicts()}
    discovery, holdout = temporal_split(cohort_totals, holdout_fraction)
    holdout_accounts = sum(totals[m][0] for m in holdout)
    holdout_conversions = sum(totals[m][1] for m in holdout)
    bad = [
        f"{r['signal_id']}: holdout_n_total {r['holdout_n_total']}, the holdout months {holdout} hold {holdout_accounts}"
        for r in rows
        if r["holdout_n_total"] != holdout_accounts
    ]
    span_days = months_span_days(discovery)
    for r in rows:
        months = discovery[1::2] if r["kind"] == "pair" else discovery
        n_months = sum(totals[m][0] for m in months)
        conv_months = sum(totals[m][1] for m in months)
        if (r["n_with"] + r["n_without"], r["conversions_with"] + r["conversions_without"]) != (n_months, conv_months):
            bad.append(
                f"{r['signal_id']}: counts add up to {r['n_with'] + r['n_without']} accounts / "
                f"{r['conversions_with'] + r['conversions_without']} conversions, its months "
                f"({'odd discovery' if r['kind'] == 'pair' else 'discovery'}) hold {n_months} / {conv_months}"
            )
        bad += check_row_statistics(r)
        bad += check_holdout(r, holdout_conversions)
        bad += check_projected_arr(r, acv, span_days)
    bad += check_q_values(rows)
    pair_months = discovery[1::2]
    pair_part_counts = {}
    if candidate_counts is not None and candidate_counts.height:
        summed = (
            candidate_counts.filter(pl.col("cohort_month").is_in(pair_months))
            .group_by("key")
            .agg(pl.col("n_with").sum(), pl.col("conversions_with").sum())
        )
        pair_part_counts = {k: (int(n), int(c)) for k, n, c in summed.iter_rows()}
        keys = {r["candidate_key"] for r in rows if r["kind"] != "pair"}
        pair_part_counts |= {k: (0, 0) for k in keys - set(pair_part_counts)}  # fired for nobody in those months
    bad += check_recommendations(rows, rules, pair_part_counts)
    if stratified is not None:
        custom = (stratified[2], stratified[3]) if len(stratified) == 4 else None
        bad += check_adjusted(rows, stratified[0], stratified[1], discovery, holdout, rules, custom)
    return bad


# ------------------------------------------------------------------------------------------------
# The session's warehouse
# ------------------------------------------------------------------------------------------------
def read_run(warehouse) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        frame = con.sql("select * from beton.signals where source in ('discovered', 'custom')").pl()
        totals = con.sql(
            """
            select c.cohort_month, any_value(c.n_total) as n_total, any_value(c.conversions_total) as conversions_total
            from beton.signal_cohort_counts c
            where c.cohort_month in (
                select distinct strftime(cohort_month, '%Y-%m') from marts.account_outcomes where is_eligible
            )
            group by 1 order by 1
            """
        ).pl()
        parts = con.sql(
            """
            select c.key, c.cohort_month, c.n_with, c.conversions_with
            from beton.signal_cohort_counts c
            where c.key in (
                select s.candidate_key from beton.signals s
                where s.signal_id in (select part_a_id from beton.signals union select part_b_id from beton.signals)
            )
            """
        ).pl()
        stratified = (
            con.sql("select * from beton.signal_cohort_stratum_counts").pl(),
            con.sql("select * from beton.signal_cohort_strata").pl(),
            con.sql("select * from beton.custom_signal_stratum_counts").pl(),
            con.sql("select * from beton.custom_signal_strata").pl(),
        )
    return frame, totals, parts, stratified


def settings_rules() -> tuple[dict, float, float]:
    cfg = load_settings()
    t = cfg.thresholds
    rules = {"fdr_alpha": t.fdr_alpha, "min_sample": t.min_sample, "min_lift": t.min_lift}
    return rules, cfg.windows.holdout_fraction, cfg.discovery_config().acv


@pytest.fixture(scope="module")
def run(pipeline_run):
    return read_run(pipeline_run.warehouse)


def test_every_signals_row_recomputes(run):
    frame, totals, parts, stratified = run
    assert frame.height > 0 and totals.height > 0
    assert frame.filter(pl.col("kind") == "pair").height > 0, "the demo should test pairs"
    assert frame.filter(pl.col("method").str.starts_with("Fisher")).height > 0, "the demo should need Fisher"
    rules, holdout_fraction, acv = settings_rules()
    problems = check_signals(frame, totals, rules, holdout_fraction, acv, parts, stratified)
    assert not problems, f"{len(problems)} problem(s) in beton.signals ({frame.height} rows):\n" + "\n".join(
        problems[:20]
    )


def perturbed(frame: pl.DataFrame, column: str, where: pl.Expr, change) -> pl.DataFrame:
    index = frame.with_row_index().filter(where).get_column("index")[0]
    return frame.with_columns(
        pl.when(pl.int_range(pl.len()) == index).then(change(pl.col(column))).otherwise(pl.col(column)).alias(column)
    )


@pytest.mark.parametrize(
    ("column", "where", "change"),
    [
        ("rate_with", pl.col("n_with") > 0, lambda c: c * (1 + 1e-8)),
        ("lift", pl.col("lift").is_not_null(), lambda c: c * (1 + 1e-8)),
        ("lift_ci_low", pl.col("method").str.contains("Haldane"), lambda c: c * (1 + 1e-8)),
        ("lift_ci_high", pl.col("lift_ci_high").is_not_null(), lambda c: c * (1 - 1e-8)),
        ("p_value", pl.col("method").str.starts_with("Fisher") & (pl.col("p_value") < 0.5), lambda c: c * (1 + 1e-8)),
        ("p_value", pl.col("method").str.starts_with("z-test"), lambda c: c * (1 - 1e-8)),
        ("q_value", pl.col("q_value") < 0.5, lambda c: c * (1 + 1e-8)),
        ("holdout_lift", pl.col("holdout_lift").is_not_null(), lambda c: c * (1 + 1e-8)),
        ("holdout_p_value", pl.col("holdout_p_value").is_not_null(), lambda c: c * (1 + 1e-8)),
        ("conversions_without", pl.col("conversions_without") > 0, lambda c: c - 1),
        ("n_without", pl.col("kind") == "pair", lambda c: c + 1),
        ("holdout_conversions_with", pl.col("holdout_conversions_with") > 0, lambda c: c - 1),
        ("is_family_best", pl.col("recommendation") == "enable", lambda c: ~c),
        ("recommendation", pl.col("recommendation") == "review", lambda c: pl.lit("enable")),
        ("enabled", pl.col("recommendation") == "enable", lambda c: ~c),
        ("method", pl.col("method").str.starts_with("z-test"), lambda c: pl.lit("Fisher exact; ") + c),
        ("adjusted_lift", pl.col("adjusted_lift").is_not_null() & (pl.col("kind") != "pair"), lambda c: c * (1 + 1e-8)),
        (
            "adjusted_lift_ci_low",
            pl.col("adjusted_lift_ci_low").is_not_null() & (pl.col("kind") != "pair"),
            lambda c: c * (1 - 1e-8),
        ),
        ("adjusted_p_value", pl.col("adjusted_p_value") < 0.5, lambda c: c * (1 + 1e-8)),
        ("adjusted_lift", pl.col("source") == "custom", lambda c: c * (1 + 1e-8)),
        ("holdout_adjusted_p_value", pl.col("source") == "custom", lambda c: c * (1 + 1e-8)),
        ("adjusted_q_value", pl.col("adjusted_q_value") < 0.5, lambda c: c * (1 + 1e-8)),
        (
            "holdout_adjusted_lift_ci_low",
            pl.col("holdout_adjusted_lift_ci_low").is_not_null() & (pl.col("kind") != "pair"),
            lambda c: c * (1 + 1e-8),
        ),
        ("activity_strata", pl.col("activity_strata") > 1, lambda c: c - 1),
        ("adjustment_method", pl.col("source") == "custom", lambda c: pl.lit("Mantel-Haenszel RR")),
    ],
)
def test_the_checker_reports_one_perturbed_value(run, column, where, change):
    """The check can fail: one value of one row of a copy of the session's table, moved by 1e-8 or so, is reported."""
    frame, totals, parts, stratified = run
    rules, holdout_fraction, acv = settings_rules()
    problems = check_signals(
        perturbed(frame, column, where, change), totals, rules, holdout_fraction, acv, parts, stratified
    )
    assert problems, f"perturbing {column} went unnoticed"


def test_q_values_over_a_smaller_family_are_reported(run):
    """Benjamini–Hochberg over the discovered rows only (leaving out the custom signals) is not the documented family."""
    frame, totals, parts, stratified = run
    custom = frame.get_column("source") == "custom"
    assert custom.any(), "the demo project has custom signals in signals/"
    discovered = frame.filter(~custom)
    q = multipletests(discovered.get_column("p_value").to_numpy(), method="fdr_bh")[1]
    wrong = pl.concat([discovered.with_columns(pl.Series("q_value", q)), frame.filter(custom)])
    rules, holdout_fraction, acv = settings_rules()
    problems = check_signals(wrong, totals, rules, holdout_fraction, acv, parts, stratified)
    assert any("Benjamini-Hochberg over" in p for p in problems), problems[:3]


def test_the_statistics_against_textbook_values():
    """Anchors for the helpers on hand-made tables: Fisher's tea-tasting table, a z-test by hand, a Katz CI."""
    tea = table_stats(3, 4, 1, 4, 0.95)
    assert tea["test"] == "Fisher exact" and math.isclose(tea["p_value"], 34 / 70, rel_tol=1e-12)
    big = table_stats(60, 200, 100, 800, 0.95)
    p1, p2, pooled = 60 / 200, 100 / 800, 160 / 1000
    z = (p1 - p2) / math.sqrt(pooled * (1 - pooled) * (1 / 200 + 1 / 800))
    assert big["test"] == "z-test (pooled)" and math.isclose(big["p_value"], math.erfc(z / math.sqrt(2)), rel_tol=1e-9)
    se = math.sqrt(1 / 60 - 1 / 200 + 1 / 100 - 1 / 800)
    assert math.isclose(big["lift_ci_low"], 2.4 * math.exp(-1.959963984540054 * se), rel_tol=1e-9)
    zero = table_stats(0, 50, 10, 500, 0.95)  # Haldane: 0.5/51 vs 10.5/501
    assert zero["lift"] == 0.0 and zero["haldane"]
    se0 = math.sqrt(1 / 0.5 - 1 / 51 + 1 / 10.5 - 1 / 501)
    assert math.isclose(
        zero["lift_ci_high"], (0.5 / 51) / (10.5 / 501) * math.exp(1.959963984540054 * se0), rel_tol=1e-9
    )


def test_the_checker_on_a_hand_made_run():
    """A two-row run built by hand passes; a 1e-8 change of one q-value fails it."""
    totals = pl.DataFrame(
        {"cohort_month": ["2025-01", "2025-02"], "n_total": [1000, 500], "conversions_total": [160, 80]}
    )

    def row(sid, a, n1, ha, hn1):
        s = table_stats(a, n1, 160 - a, 1000 - n1, 0.95)
        h = table_stats(ha, hn1, 80 - ha, 500 - hn1, 0.95)
        return {
            "signal_id": sid, "candidate_key": sid, "kind": "event", "family": sid, "source": "discovered",
            "n_with": n1, "conversions_with": a, "n_without": 1000 - n1, "conversions_without": 160 - a,
            **{k: s[k] for k in ("rate_with", "rate_without", "lift", "lift_ci_low", "lift_ci_high", "p_value")},
            "holdout_n_with": hn1, "holdout_conversions_with": ha, "holdout_n_total": 500,
            "holdout_lift": h["lift"], "holdout_lift_ci_low": h["lift_ci_low"],
            "holdout_lift_ci_high": h["lift_ci_high"], "holdout_p_value": h["p_value"],
            "method": f"{s['test']}; lift CI: Katz log; q: Benjamini-Hochberg over 2 candidates (discovered and custom)",
            "confidence_level": 0.95, "projected_arr": None, "part_a_id": None, "part_b_id": None,
            "enabled_override": None,
        }  # fmt: skip

    rows = [row("sig_a", 60, 200, 30, 100), row("sig_b", 20, 150, 8, 80)]
    q = multipletests([r["p_value"] for r in rows], method="fdr_bh")[1]
    for r, qv in zip(rows, q, strict=True):
        r["q_value"] = float(qv)
        r["recommendation"] = (
            "enable"
            if qualifies(r, {"fdr_alpha": 0.05, "min_sample": 30, "min_lift": 1.3})
            and replicates(r, {"fdr_alpha": 0.05, "min_sample": 30, "min_lift": 1.3})
            else ("review" if r["q_value"] <= 0.05 and r["lift"] > 1 else "reject")
        )
        r["enabled"], r["is_family_best"], r["alternatives"] = r["recommendation"] == "enable", True, json.dumps([])
    assert [r["recommendation"] for r in rows] == ["enable", "reject"]
    frame = pl.DataFrame(rows, infer_schema_length=None)
    rules = {"fdr_alpha": 0.05, "min_sample": 30, "min_lift": 1.3}
    assert check_signals(frame, totals, rules, 0.3, 12_000.0) == []
    wrong = perturbed(frame, "q_value", pl.col("signal_id") == "sig_b", lambda c: c * (1 + 1e-8))
    assert any("sig_b: q_value" in p for p in check_signals(wrong, totals, rules, 0.3, 12_000.0))
