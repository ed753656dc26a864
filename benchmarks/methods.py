"""What the benchmark times besides `beton run`, and how it scores discovery against the planted truth.

Every function takes a read-only DuckDB connection to a warehouse that `beton run` has built, so all
methods see the same data on the same machine:

* `floor` — one DuckDB query over `raw.raw_events`: the account key each event carries
  (`properties.$groups.company`), the account's start (its first event), and the events in the first
  `observation_days` grouped by account and event. The least work any discovery must do: one scan
  of the events, an attribution to accounts, the window filter, one group-by.
* `peer` — PostHog-style correlation (PostHog's funnel correlation, `FunnelCorrelation`) as one SQL
  query: per event, the converted and non-converted accounts that did it, the odds ratio with a
  prior count of 1, `((a+1)/(b+1)) / ((c+1)/(d+1))` with a = converted with the event,
  b = converted without, c = non-converted with, d = non-converted without; events done by fewer
  than min(25, 2 % of accounts) dropped; the top 10 by odds ratio. It runs on beton's resolved
  events and outcomes (eligible accounts, events strictly before the point-in-time window end), so
  it gets identity resolution, outcomes and the leak-free window for free: what differs is the method.
* `analyst_pandas` — what an analyst writes in a notebook: the same resolved events and outcomes read
  into pandas, features with `groupby`, then one `scipy.stats.fisher_exact` per candidate (event ×
  window × threshold, URL path × window × threshold, attribute value) in a Python loop, and
  Benjamini–Hochberg over them. Also given identity resolution and outcomes for free.
* `beton_core` — beton's discovery core timed function by function on the loaded marts
  (`read_feature_frames`, `candidate_matrix`, `cohort_counts_from_matrix`,
  `discover_from_cohort_counts`): the Python half of the compute path without Dagster.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import duckdb
import numpy as np
import polars as pl


def warm_up() -> None:
    """Import what the timed functions use, so that no timing includes a first import."""
    import pandas  # noqa: F401
    import scipy.stats  # noqa: F401

    import beton_pipeline.core.discovery  # noqa: F401
    import beton_pipeline.defs.signals.assets  # noqa: F401
    import beton_pipeline.store.signals  # noqa: F401


# --------------------------------------------------------------------------------------------------
# The floor
# --------------------------------------------------------------------------------------------------

FLOOR_SQL = """
with events as (
    select json_extract_string(properties, '$."$groups".company') as account_key, event, "timestamp" as ts
    from raw.raw_events
),
starts as (
    select account_key, min(ts) as started_at from events where account_key is not null group by account_key
),
grouped as (
    select e.account_key, e.event, count(*) as n
    from events as e inner join starts as s on s.account_key = e.account_key
    where e.ts < s.started_at + to_days({observation_days})
    group by e.account_key, e.event
)
select count(*) as account_events, sum(n) as events_in_window from grouped
"""
"""The floor: scan, attribute (by `$groups.company`), window, group by account × event. Returns one
row (the group count and the events counted) so nothing but the aggregation is timed."""


def floor(con: duckdb.DuckDBPyConnection, observation_days: int) -> dict[str, int]:
    """Run the floor query; its group count and the events inside the windows."""
    groups, events = con.sql(FLOOR_SQL.format(observation_days=int(observation_days))).fetchall()[0]
    return {"account_events": int(groups), "events_in_window": int(events or 0)}


# --------------------------------------------------------------------------------------------------
# The peer's method: PostHog-style correlation
# --------------------------------------------------------------------------------------------------

PEER_MIN_COUNT = 25
PEER_MIN_SHARE = 0.02
PEER_PRIOR = 1
PEER_TOP = 10

PEER_SQL = """
with accounts as (
    select account_id, converted, feature_window_end_at
    from marts.account_outcomes
    where is_eligible and has_events
),
counts as (
    select
        e.event_name as event,
        count(distinct e.account_id) filter (where a.converted) as success_count,
        count(distinct e.account_id) filter (where not a.converted) as failure_count
    from intermediate.int_events_resolved as e
    inner join accounts as a on a.account_id = e.account_id
    where e.occurred_at < a.feature_window_end_at and e.event_name not in ({excluded})
    group by e.event_name
),
totals as (
    select count(*) filter (where converted) as success_total, count(*) filter (where not converted) as failure_total
    from accounts
)
select
    event,
    success_count,
    failure_count,
    ((success_count + {prior}) * (failure_total - failure_count + {prior}))::double
        / ((success_total - success_count + {prior}) * (failure_count + {prior})) as odds_ratio
from counts cross join totals
where success_count + failure_count >= least({min_count}, {min_share} * (success_total + failure_total))
order by odds_ratio desc, event
limit {top}
"""
"""PostHog's `get_entity_odds_ratio` and `are_results_insignificant`, as one query."""


def peer(con: duckdb.DuckDBPyConnection, excluded_events: tuple[str, ...]) -> pl.DataFrame:
    """The peer's top events: event, success_count, failure_count, odds_ratio (positively correlated first)."""
    excluded = ", ".join("'" + e.replace("'", "''") + "'" for e in excluded_events) or "''"
    query = PEER_SQL.format(
        excluded=excluded, prior=PEER_PRIOR, min_count=PEER_MIN_COUNT, min_share=PEER_MIN_SHARE, top=PEER_TOP
    )
    return con.sql(query).pl()


# --------------------------------------------------------------------------------------------------
# The analyst's pandas
# --------------------------------------------------------------------------------------------------

ANALYST_EVENTS_SQL = """
select e.account_id, e.event_name, e.occurred_at, e.current_url
from intermediate.int_events_resolved as e
where e.account_id is not null
"""

ANALYST_ACCOUNTS_SQL = """
select o.account_id, o.converted, o.started_at, o.feature_window_end_at, f.industry, f.employee_band, f.plan_interval
from marts.account_outcomes as o inner join marts.account_features as f on f.account_id = o.account_id
where o.is_eligible and o.has_events
"""


@dataclass
class AnalystResult:
    """The analyst's candidates (one row each, with Fisher's p and BH q) and the seconds per step."""

    tests: object  # pandas.DataFrame
    seconds: dict[str, float] = field(default_factory=dict)


ANALYST_COUNT_THRESHOLDS = (1, 2, 3, 5, 10)
"""The grid an analyst writes by hand; used when beton's own thresholds are `auto` (chosen from the data)."""


def analyst_pandas(
    con: duckdb.DuckDBPyConnection,
    windows: tuple[int, ...],
    thresholds: tuple[int, ...] | str,
    excluded_events: tuple[str, ...],
    property_event: str = "$pageview",
    property_thresholds: tuple[int, ...] = (1, 2, 3),
    min_support: int = 10,
) -> AnalystResult:
    """Features in pandas, then one Fisher exact test per candidate in a Python loop (see the module docstring).

    The 2×2 table of a candidate is built from boolean sums (the cheapest per-candidate form, so the
    loop's cost is the test itself, not a slow `crosstab`). `thresholds="auto"` (beton's default) means the
    analyst's hand-written grid, `ANALYST_COUNT_THRESHOLDS`. Candidates fired for fewer than
    `min_support` accounts, or missing for fewer, are skipped, as beton skips them.
    """
    import pandas as pd
    from scipy import stats

    if isinstance(thresholds, str):
        thresholds = ANALYST_COUNT_THRESHOLDS
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    events = con.sql(ANALYST_EVENTS_SQL).df()
    accounts = con.sql(ANALYST_ACCOUNTS_SQL).df()
    seconds["read into pandas"] = time.perf_counter() - t

    t = time.perf_counter()
    df = events.merge(accounts[["account_id", "started_at", "feature_window_end_at"]], on="account_id", how="inner")
    df = df[df["occurred_at"] < df["feature_window_end_at"]]
    df["day"] = (df["occurred_at"] - df["started_at"]) / pd.Timedelta(days=1)
    account_index = pd.Index(accounts["account_id"], name="account_id")
    counted = df[~df["event_name"].isin(list(excluded_events))]
    event_counts = {
        d: counted[counted["day"] < d]
        .groupby(["account_id", "event_name"])
        .size()
        .unstack(fill_value=0)
        .reindex(account_index, fill_value=0)
        for d in windows
    }
    pages = df[df["event_name"] == property_event].copy()
    pages["path"] = pages["current_url"].str.replace(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*|[?#].*$", "", regex=True)
    pages = pages[pages["path"].notna() & (pages["path"] != "")]
    path_counts = {
        d: pages[pages["day"] < d]
        .groupby(["account_id", "path"])
        .size()
        .unstack(fill_value=0)
        .reindex(account_index, fill_value=0)
        for d in windows
    }
    seconds["features"] = time.perf_counter() - t

    t = time.perf_counter()
    y = accounts["converted"].to_numpy(dtype=bool)
    n, conversions = len(y), int(y.sum())
    rows = []

    def test(name: str, fired: np.ndarray) -> None:
        n_with = int(fired.sum())
        if n_with < min_support or n - n_with < min_support:
            return
        a = int((fired & y).sum())
        c = conversions - a
        odds, p = stats.fisher_exact([[a, n_with - a], [c, n - n_with - c]])
        rate_with, rate_without = a / n_with, c / (n - n_with)
        rows.append((name, n_with, a, rate_with / rate_without if rate_without else np.nan, odds, p))

    for d, table in event_counts.items():
        for event in table.columns:
            counts = table[event].to_numpy()
            for threshold in thresholds:
                test(f"event:{event}:first_{d}d:>={threshold}", counts >= threshold)
    for d, table in path_counts.items():
        for path in table.columns:
            counts = table[path].to_numpy()
            for threshold in property_thresholds:
                test(f"property:{property_event}:$current_url={path}:first_{d}d:>={threshold}", counts >= threshold)
    for column in ("industry", "employee_band", "plan_interval"):
        values = accounts[column]
        for value in values.dropna().unique():
            test(f"attribute:{column}={value}", (values == value).to_numpy())
    tests = pd.DataFrame(rows, columns=["key", "n_with", "conversions_with", "lift", "odds_ratio", "p_value"])
    tests["q_value"] = stats.false_discovery_control(tests["p_value"].to_numpy()) if len(tests) else []
    seconds["tests (loop)"] = time.perf_counter() - t
    return AnalystResult(tests=tests, seconds=seconds)


# --------------------------------------------------------------------------------------------------
# beton's core, function by function
# --------------------------------------------------------------------------------------------------


@dataclass
class CoreResult:
    """beton's discovery core on the loaded marts: the signals it found and the seconds per function."""

    signals: pl.DataFrame
    candidates: int
    seconds: dict[str, float] = field(default_factory=dict)


def beton_core(con: duckdb.DuckDBPyConnection, settings) -> CoreResult:
    """Time `read_feature_frames` → `candidate_matrix` → `cohort_counts_from_matrix`
    → `discover_from_cohort_counts` (with in-memory pairs), as the assets call them, on every eligible account."""
    from beton_pipeline.core.candidates import candidate_matrix
    from beton_pipeline.core.discovery import (
        cohort_counts_from_matrix,
        cohort_labels,
        discover_from_cohort_counts,
        matrix_pair_source,
    )
    from beton_pipeline.store.tables import read_feature_frames

    seconds: dict[str, float] = {}

    def timed(name, fn, *args, **kwargs):
        started = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds[name] = time.perf_counter() - started
        return out

    frames = timed("read_feature_frames", read_feature_frames, con, settings.feature_windows)
    matrix = timed("candidate_matrix", candidate_matrix, frames, settings.feature_spec())
    accounts = frames.accounts
    months = cohort_labels(frames)
    converted = accounts.get_column("converted").to_numpy()
    arr = accounts.get_column("arr").fill_null(0).to_numpy()
    counts = timed("cohort_counts_from_matrix", cohort_counts_from_matrix, matrix, months, converted, arr)
    run = timed(
        "discover_from_cohort_counts",
        discover_from_cohort_counts,
        counts,
        matrix_pair_source(matrix, months, converted, arr),
        settings.discovery_config(),
        settings.windows.holdout_fraction,
    )
    return CoreResult(signals=run.signals, candidates=matrix.n_candidates, seconds=seconds)


# --------------------------------------------------------------------------------------------------
# Discovery quality against the planted truth
# --------------------------------------------------------------------------------------------------


def planted_families(truth: dict) -> dict[str, str]:
    """beton family → planted name, for every behaviour planted in the demo (TRUTH.json `planted`)."""
    out = {}
    for p in truth["planted"]:
        kind = p["kind"]
        if kind == "event_count":
            out[f"event:{p['event']}"] = p["name"]
        elif kind == "event_property":
            out[f"property:{p['event']}:{p['property']}={p['value']}"] = p["name"]
        elif kind == "crm_attribute":
            out[f"attribute:{p['attribute']}={p['value']}"] = p["name"]
        elif kind == "intent":
            out[f"intent:{p['signal_type']}"] = p["name"]
    return out


def classify_family(family: str, truth: dict) -> str:
    """`planted`, `drifting`, `leak`, `planted pair` (both parts planted or drifting) or `noise`."""
    planted = planted_families(truth)
    drifting = {f"event:{d['event']}" for d in truth.get("drifting", [])}
    leaks = {f"event:{leak['event']}" for leak in truth.get("leaks", [])}
    if family.startswith("pair:"):
        parts = family.removeprefix("pair:").split("&")
        return "planted pair" if all(p in planted or p in drifting for p in parts) else "noise"
    if family in planted:
        return "planted"
    if family in drifting:
        return "drifting"
    if family in leaks:
        return "leak"
    return "noise"


def proxy_families(truth: dict) -> set[str]:
    """The activity proxies' beton families named in TRUTH.json `proxies` (events and property values)."""
    out = set()
    for p in truth.get("proxies", []):
        if p["kind"] == "event_count":
            out.add(f"event:{p['event']}")
        elif p["kind"] == "event_property":
            out.add(f"property:{p['event']}:{p['property']}={p['value']}")
    return out


def is_activity_proxy(family: str, truth: dict) -> bool:
    """Whether a family that is not planted, drifting or a leak rests on pure activity: a TRUTH `proxies`
    entry, or any condition on an event TRUTH lists in `activity_events` (noise, neutral, flags, ordinary page
    views: their counts scale with activity, which drives conversion). A pair is a proxy when it is `noise`
    and one of its parts is. Demos without `activity_events` (before activity drove conversion) have none."""
    if classify_family(family, truth) != "noise":
        return False
    activity_events = set(truth.get("activity_events", []))
    named = proxy_families(truth)
    parts = family.removeprefix("pair:").split("&") if family.startswith("pair:") else [family]
    for part in parts:
        if part in named:
            return True
        if part.startswith("event:") and part.removeprefix("event:") in activity_events:
            return True
        if part.startswith("property:") and part.removeprefix("property:").split(":", 1)[0] in activity_events:
            return True
    return False


@dataclass(frozen=True)
class Quality:
    """How a method's output compares with the planted truth."""

    planted_found: int  # planted behaviours among what the method puts forward
    planted_total: int  # planted behaviours in the data
    expressible: int  # of those, how many the method can express at all (the peer: events only)
    planted_in_top10: int
    noise_in_top10: int
    leak_in_top10: int
    enabled: int | None = None  # beton only: signals enabled
    noise_enabled: int | None = None
    missed: tuple[str, ...] = ()
    proxies_in_top10: int = 0  # of noise_in_top10: activity proxies (`is_activity_proxy`)
    proxies_enabled: int | None = None  # of noise_enabled: activity proxies


def beton_quality(con: duckdb.DuckDBPyConnection, truth: dict) -> Quality:
    """beton: planted found = planted families with an enabled signal; noise among enabled and in the
    top 10 that `beton signals` prints (one row per family, enabled first). Only what discovery found
    counts: custom signals (user-defined in `signals/`) are left out."""
    from beton_pipeline.store.signals import read_signals

    best = read_signals(con)
    if "source" in best.columns:
        best = best.filter(pl.col("source") != "custom")
    enabled = best.filter(pl.col("enabled")).get_column("family").to_list()
    return family_quality(best.get_column("family").to_list(), enabled, truth)


def family_quality(families: list[str], enabled: list[str], truth: dict) -> Quality:
    """The quality of a list of families in the order `beton signals` prints them (its first 10 are the top
    10) and of the `enabled` ones among them (one row per family)."""
    top = [classify_family(f, truth) for f in families[:10]]
    enabled_classes = [classify_family(f, truth) for f in enabled]
    enabled_families = set(enabled)
    planted = planted_families(truth)
    return Quality(
        planted_found=sum(1 for f in planted if f in enabled_families),
        planted_total=len(planted),
        expressible=len(planted),
        planted_in_top10=top.count("planted"),
        noise_in_top10=top.count("noise"),
        leak_in_top10=top.count("leak"),
        enabled=len(enabled_classes),
        noise_enabled=enabled_classes.count("noise"),
        missed=tuple(sorted(name for f, name in planted.items() if f not in enabled_families)),
        proxies_in_top10=sum(is_activity_proxy(f, truth) for f in families[:10]),
        proxies_enabled=sum(is_activity_proxy(f, truth) for f in enabled_families),
    )


def beton_marginal_quality(signals: pl.DataFrame, truth: dict, config) -> tuple[Quality, pl.DataFrame]:
    """beton under the *marginal* rule alone: what `beton signals` would recommend had discovery not asked
    "beyond overall activity", computed from the stored `beton.signals` rows (every candidate,
    `read_signals(con, include_all=True)`), no re-run.

    The rows go through discovery's own `recommend` (core/discovery.py, steps 6–8) with their adjusted
    columns set to NULL, which is that rule's marginal half exactly: a candidate qualifies on q ≤ fdr_alpha,
    lift ≥ min_lift with CI low > 1 and n_with ≥ min_sample; the family keeps its candidate chosen on the
    discovery figures alone; that candidate is enabled when its holdout lift is ≥ min_lift with CI low > 1.
    No masked-by-activity route (it needs the adjusted figures). Singles only: a pair's conditional figures
    (lift given each part, `conditional_on_parts`) are not stored in `beton.signals`, and `recommend` never
    enables a pair without them, so pairs are left out rather than counted as rejected. Custom signals are
    left out as in `beton_quality`. `config` is a `DiscoveryConfig` (the run's `settings.discovery_config()`).

    Returns the quality and the families' chosen rows (`family`, `key`, `recommendation`, the marginal and
    holdout figures), ordered as `read_signals` prints them: enabled first, then by recommendation, q, lift.
    """
    from beton_pipeline.core.discovery import ADJUSTED_COLUMNS, recommend

    singles = signals.filter((pl.col("source") != "custom") & (pl.col("kind") != "pair"))
    stored = ["recommendation", "recommendation_reason", "is_family_best", "alternatives", *ADJUSTED_COLUMNS]
    frame = singles.drop([c for c in stored if c in singles.columns]).rename({"candidate_key": "key"})
    chosen = (
        recommend(frame, config)
        .filter(pl.col("is_family_best"))
        .with_columns(
            (pl.col("recommendation") == "enable").alias("enabled"),
            pl.col("recommendation").replace_strict({"enable": 0, "review": 1}, default=2).alias("_order"),
        )
        .sort(["enabled", "_order", "q_value", "lift"], descending=[True, False, False, True], nulls_last=True)
        .drop("_order")
    )
    enabled = chosen.filter(pl.col("enabled")).get_column("family").to_list()
    quality = family_quality(chosen.get_column("family").to_list(), enabled, truth)
    columns = ["family", "key", "recommendation", "enabled", "n_with", "lift", "lift_ci_low", "q_value"]
    return quality, chosen.select(*columns, "holdout_lift", "holdout_lift_ci_low")


def peer_quality(top: pl.DataFrame, truth: dict) -> Quality:
    """The peer: its top 10 is what it shows; it can express only the planted *event* behaviours."""
    classes = [classify_family(f"event:{e}", truth) for e in top.get_column("event").to_list()]
    planted = planted_families(truth)
    expressible = {f: n for f, n in planted.items() if f.startswith("event:")}
    shown = {f"event:{e}" for e in top.get_column("event").to_list()}
    return Quality(
        planted_found=sum(1 for f in expressible if f in shown),
        planted_total=len(planted),
        expressible=len(expressible),
        planted_in_top10=classes.count("planted"),
        noise_in_top10=classes.count("noise"),
        leak_in_top10=classes.count("leak"),
        missed=tuple(sorted(n for f, n in planted.items() if f not in shown)),
        proxies_in_top10=sum(is_activity_proxy(f"event:{e}", truth) for e in top.get_column("event").to_list()),
    )


def analyst_family(key: str) -> str:
    """The beton family of one of the analyst's candidate keys (`event:E:first_7d:>=2` → `event:E`)."""
    if key.startswith(("event:", "property:")):
        return key.rsplit(":first_", 1)[0]
    return key


def analyst_quality(tests, truth: dict, alpha: float = 0.05) -> Quality:
    """The analyst's reading of their own table: families with a candidate at BH q ≤ alpha and lift > 1 are
    "found"; the top 10 is the families' best candidates by p-value."""
    planted = planted_families(truth)
    if len(tests) == 0:
        return Quality(
            planted_found=0,
            planted_total=len(planted),
            expressible=len(planted) - 1,
            planted_in_top10=0,
            noise_in_top10=0,
            leak_in_top10=0,
            enabled=0,
            noise_enabled=0,
            missed=tuple(sorted(planted.values())),
            proxies_enabled=0,
        )
    frame = tests.assign(family=tests["key"].map(analyst_family))
    significant = frame[(frame["q_value"] <= alpha) & (frame["lift"] > 1)]
    families = set(significant["family"])
    best = significant.sort_values(["p_value", "key"]).drop_duplicates("family")
    top = [classify_family(f, truth) for f in best["family"].head(10)]
    classes = [classify_family(f, truth) for f in families]
    expressible = {f: n for f, n in planted.items() if not f.startswith("intent:")}
    return Quality(
        planted_found=sum(1 for f in planted if f in families),
        planted_total=len(planted),
        expressible=len(expressible),
        planted_in_top10=top.count("planted"),
        noise_in_top10=top.count("noise"),
        leak_in_top10=top.count("leak"),
        enabled=len(families),
        noise_enabled=classes.count("noise"),
        missed=tuple(sorted(n for f, n in planted.items() if f not in families)),
        proxies_in_top10=sum(is_activity_proxy(f, truth) for f in best["family"].head(10)),
        proxies_enabled=sum(is_activity_proxy(f, truth) for f in families),
    )
