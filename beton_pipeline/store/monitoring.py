"""Warehouse side of signal health: read the enabled signals, the accounts' outcomes and the firings,
assess each signal's health per day (`core.monitoring`; the risk_set rule's daily risk sets:
`core.risk_sets`), and write `beton.signal_health`, replacing exactly the days computed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta

import duckdb
import numpy as np
import polars as pl
import scipy.sparse as sp

from beton_pipeline.core.discovery import temporal_split
from beton_pipeline.core.monitoring import (
    SEQUENTIAL_METHODS,
    HealthConfig,
    SignalCounts,
    daily_counts,
    health_over_days,
)
from beton_pipeline.core.risk_sets import AGE_BANDS_DAYS, conditional_log_odds_ratio, risk_set_evidence
from beton_pipeline.core.scoring import HEALTH_SCHEMA
from beton_pipeline.settings import Settings
from beton_pipeline.store.daily import data_days, partition_days, write_days
from beton_pipeline.store.live_signals import enabled_firings, enabled_signals
from beton_pipeline.store.tables import sql_beside
from beton_pipeline.warehouse import table_exists

HEALTH_STATES = ("healthy", "degrading", "broken", "insufficient_data")

CLOSED_OUTCOMES_SQL = (
    "select account_id, outcome_window_end_at::date as closed_on, converted from marts.account_outcomes "
    "where has_events and not converted_before_start order by account_id"
)
"""Every account whose outcome can be judged, with the day its outcome window closed."""

RISK_SET_DELTAS_SQL = sql_beside(__file__, "risk_sets.sql")
"""Per (discovery cohort or not, signal or '' for every account, day, age band): the change in the number at
risk that day (+1 entering, −1 leaving) and the conversions. An account is at risk from its start to its
conversion or its outcome window's end (`core.risk_sets.risk_set_counts`, which this computes in SQL); its
signal counts from the day after it fired. The age bands are `core.risk_sets.AGE_BANDS_DAYS`."""


@dataclass(frozen=True)
class SignalHealth:
    """What one materialisation computed and wrote: the days (within the data) and their rows."""

    days: list[date]
    rows: pl.DataFrame

    @property
    def latest(self) -> pl.DataFrame:
        """The rows of the latest day computed (empty when none)."""
        return self.rows.filter(pl.col("day") == self.rows["day"].max()) if not self.rows.is_empty() else self.rows

    @property
    def broken(self) -> list[str]:
        """The definitions of the signals broken on the latest day computed."""
        latest = self.latest
        return latest.filter(pl.col("health") == "broken")["definition"].to_list() if not latest.is_empty() else []


def _membership(accounts: pl.DataFrame, firings: pl.DataFrame, signal_order: list[str]) -> sp.csr_matrix:
    """accounts × signals, 1 where the signal ever fired for the account."""
    acc_index = accounts.select("account_id").with_row_index("_r")
    sig_index = pl.DataFrame({"signal_id": signal_order}).with_row_index("_c")
    coords = (
        firings.select("account_id", "signal_id")
        .unique()
        .join(acc_index, on="account_id")
        .join(sig_index, on="signal_id")
    )
    return sp.csr_matrix(
        (np.ones(coords.height), (coords["_r"].to_numpy(), coords["_c"].to_numpy())),
        shape=(accounts.height, len(signal_order)),
    )


def monitoring_origin(con: duckdb.DuckDBPyConnection, settings: Settings, days: list[date]) -> date:
    """The first monitoring day, from which the sequential evidence accumulates: the later of
    `monitoring.start_date` and the first day an outcome window closed (the first partition day), so a
    day's health is the same whichever days a run computes (never later than the days asked for)."""
    bounds = data_days(con)
    origin = date.fromisoformat(settings.monitoring.start_date)
    if bounds is not None:
        origin = max(origin, bounds[0])
    return min(origin, min(days))


@dataclass(frozen=True)
class RiskSets:
    """The risk_set rule's inputs: daily risk sets (days × bands × signals) from the first day asked, and the
    discovery cohorts' risk sets over all their days (the reference)."""

    daily: SignalCounts
    reference: SignalCounts


def _risk_set_arrays(deltas: pl.DataFrame, order: list[str], base: date, n_days: int) -> SignalCounts:
    """Scatter the deltas of `RISK_SET_DELTAS_SQL` into days × bands × signals counts from `base` (at risk: the
    running sum of the deltas, over every earlier day too)."""
    k, s = len(AGE_BANDS_DAYS), len(order)
    column = {sid: i for i, sid in enumerate(order)}
    column[""] = s
    days = (deltas["day"].to_numpy().astype("datetime64[D]") - np.datetime64(base, "D")).astype(np.int64)
    cols = deltas["signal_id"].replace_strict(column, return_dtype=pl.Int64).to_numpy()
    bands = deltas["band"].to_numpy().astype(np.int64)
    at_risk = np.zeros((n_days, k, s + 1), dtype=np.int64)
    events = np.zeros((n_days, k, s + 1), dtype=np.int64)
    before = days < 0
    np.add.at(at_risk[0], (bands[before], cols[before]), deltas["at_risk"].to_numpy()[before])
    inside = (days >= 0) & (days < n_days)
    np.add.at(at_risk, (days[inside], bands[inside], cols[inside]), deltas["at_risk"].to_numpy()[inside])
    np.add.at(events, (days[inside], bands[inside], cols[inside]), deltas["events"].to_numpy()[inside])
    at_risk = np.cumsum(at_risk, axis=0)
    fired, everyone = at_risk[..., :s], at_risk[..., s:]
    fired_events, all_events = events[..., :s], events[..., s:]
    return SignalCounts(fired_events, fired, all_events - fired_events, everyone - fired)


def risk_set_counts_of(
    con: duckdb.DuckDBPyConnection,
    firings: pl.DataFrame,
    order: list[str],
    first: date,
    n_days: int,
    discovery_months: list[str],
) -> RiskSets:
    """The daily risk sets of every signal in `order`, from `firings` (account_id, signal_id, fired_at) and
    `marts.account_outcomes`, in one SQL pass (`RISK_SET_DELTAS_SQL`): every account's for the `n_days` days
    from `first`, and the discovery cohorts' (`discovery_months`, eligible accounts) over all their days."""
    upper = list(AGE_BANDS_DAYS[1:]) + [10**6]
    scoped = firings.filter(pl.col("signal_id").is_in(order)).select("account_id", "signal_id", "fired_at")
    con.register("risk_set_firings", scoped.to_arrow())
    try:
        deltas = con.sql(
            RISK_SET_DELTAS_SQL,
            params={
                "discovery_months": list(discovery_months),
                "band_lo": list(AGE_BANDS_DAYS),
                "band_hi": upper,
                "band": list(range(len(AGE_BANDS_DAYS))),
            },
        ).pl()
    finally:
        con.unregister("risk_set_firings")
    daily = _risk_set_arrays(deltas, order, first, n_days)
    discovery = deltas.filter(pl.col("discovery"))
    if discovery.is_empty():
        empty = np.zeros((0, len(AGE_BANDS_DAYS), len(order)), dtype=np.int64)
        return RiskSets(daily, SignalCounts(empty, empty, empty, empty))
    lo, hi = discovery["day"].min(), discovery["day"].max()
    reference = _risk_set_arrays(discovery, order, lo, (hi - lo).days + 1)
    return RiskSets(daily, reference)


def discovery_months(con: duckdb.DuckDBPyConnection, settings: Settings) -> list[str]:
    """The cohort months discovery learnt from (`core.discovery.temporal_split` of the eligible accounts)."""
    months = con.sql(
        "select strftime(cohort_month, '%Y-%m') as m from marts.account_outcomes "
        "where is_eligible and has_events and not converted_before_start"
    ).pl()["m"]
    if months.is_empty():
        return []
    return list(temporal_split(months.to_numpy(), settings.windows.holdout_fraction).discovery_months)


def compute_signal_health(
    con: duckdb.DuckDBPyConnection, settings: Settings, days: list[date], config: HealthConfig | None = None
) -> pl.DataFrame:
    """beton.signal_health rows for `days` × enabled signals (see core.monitoring for the rules), by
    `config` (default: the settings' `health_config()`; another to compare rules on the same data).

    Reads every closed outcome: the sequential rule's evidence on a day depends on every day since the
    first monitoring day (`monitoring_origin`), so computing only the newest day reads that history.
    """
    signals = enabled_signals(con)
    if signals.is_empty() or not days:
        return pl.DataFrame(schema=HEALTH_ROW_SCHEMA)
    window = settings.monitoring.window_days
    health_config = config or settings.health_config()
    origin = monitoring_origin(con, settings, days)
    first = origin - timedelta(days=window)
    n_days = (max(days) - first).days + 1
    accounts = con.sql(CLOSED_OUTCOMES_SQL).pl()
    firings = enabled_firings(con, signals)
    order = signals["signal_id"].to_list()
    member = _membership(accounts, firings, order)
    offset = (accounts["closed_on"].to_numpy().astype("datetime64[D]") - np.datetime64(first, "D")).astype(np.int64)
    closure = np.where((offset >= 0) & (offset < n_days), offset, -1).astype(np.int64)
    daily = daily_counts(closure, accounts["converted"].to_numpy(), member, n_days)
    reference = SignalCounts(
        *(signals[name].to_numpy() for name in ("conversions_with", "n_with", "conversions_without", "n_without"))
    )
    start = (origin - first).days
    risk_evidence = None
    if health_config.method == "risk_set":
        risk = risk_set_counts_of(con, firings, order, first, n_days, discovery_months(con, settings))
        risk_evidence = risk_set_evidence(risk.daily, conditional_log_odds_ratio(risk.reference), health_config, start)
    result = health_over_days(
        daily,
        window,
        reference,
        health_config,
        settings.thresholds.confidence_level,
        start=start,
        evidence=risk_evidence,
    )
    wanted = np.array([(d - first).days for d in days])
    a, n1 = result.window.conversions_with[wanted], result.window.n_with[wanted]
    c, n2 = result.window.conversions_without[wanted], result.window.n_without[wanted]
    pick = lambda x: x[wanted].ravel()  # noqa: E731
    evidence = lambda x: np.where(np.isfinite(pick(x)), pick(x), np.nan)  # noqa: E731
    k = len(order)
    return (
        pl.DataFrame(
            {
                "day": np.repeat(np.array(days, dtype="datetime64[D]"), k),
                "signal_id": np.tile(order, len(days)),
                "definition": np.tile(signals["definition"].to_numpy(), len(days)),
                "window_days": window,
                "n_with": n1.ravel().astype(np.int64),
                "conversions_with": a.ravel().astype(np.int64),
                "n_without": n2.ravel().astype(np.int64),
                "conversions_without": c.ravel().astype(np.int64),
                "precision": np.where(n1.ravel() > 0, a.ravel() / np.maximum(n1.ravel(), 1), np.nan),
                "lift": pick(result.lift),
                "lift_ci_low": pick(result.lift_ci_low),
                "lift_ci_high": pick(result.lift_ci_high),
                "backtest_lift": np.tile(signals["lift"].to_numpy(), len(days)),
                "z_vs_backtest": pick(result.z_vs_reference),
                "alpha_per_look": health_config.alpha_per_look,
                "health_rule": health_config.method,
                "degrading_evidence": evidence(result.degrading_evidence),
                "broken_evidence": evidence(result.broken_evidence),
                "alarm_threshold": (
                    health_config.alarm_threshold if health_config.method in SEQUENTIAL_METHODS else np.nan
                ),
                "health": pick(result.health).astype(str),
            }
        )
        .with_columns(pl.col("day").cast(pl.Date))
        .with_columns(pl.col(pl.Float64).fill_nan(None))
    )


HEALTH_ROW_SCHEMA = {
    "day": pl.Date,
    "signal_id": pl.String,
    "definition": pl.String,
    "window_days": pl.Int64,
    "n_with": pl.Int64,
    "conversions_with": pl.Int64,
    "n_without": pl.Int64,
    "conversions_without": pl.Int64,
    "precision": pl.Float64,
    "lift": pl.Float64,
    "lift_ci_low": pl.Float64,
    "lift_ci_high": pl.Float64,
    "backtest_lift": pl.Float64,
    "z_vs_backtest": pl.Float64,
    "alpha_per_look": pl.Float64,
    "health_rule": pl.String,
    "degrading_evidence": pl.Float64,
    "broken_evidence": pl.Float64,
    "alarm_threshold": pl.Float64,
    "health": pl.String,
}
"""The columns of beton.signal_health (the table exists, empty, when no signal is enabled)."""


def health_history(con: duckdb.DuckDBPyConnection, through: date) -> pl.DataFrame:
    """day, signal_id, health of every `beton.signal_health` row up to `through` (empty when the table does
    not exist): what the scores of those days weight each signal by (`core.scoring.weigh_by_health`)."""
    if not table_exists(con, "beton", "signal_health"):
        return pl.DataFrame(schema=HEALTH_SCHEMA)
    return (
        con.sql(
            "select day, signal_id, health from beton.signal_health where day <= ? order by signal_id, day",
            params=[through],
        )
        .pl()
        .cast(HEALTH_SCHEMA)
    )


def refresh_signal_health(
    con: duckdb.DuckDBPyConnection, settings: Settings, partition_keys: Iterable[str]
) -> SignalHealth:
    """Compute the health of every enabled signal on the partition days the data covers, and replace those
    days' rows of beton.signal_health. With no enabled signal those days' rows are removed (a signal
    disabled since keeps no stale health) and the table exists, empty, for its readers."""
    days = partition_days(con, partition_keys)
    rows = compute_signal_health(con, settings, days) if days else pl.DataFrame(schema=HEALTH_ROW_SCHEMA)
    if days:
        write_days(con, "beton.signal_health", rows, days, create_empty=True)
    return SignalHealth(days=days, rows=rows)
