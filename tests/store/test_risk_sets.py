"""The risk_set rule's warehouse side: the daily risk sets computed in SQL agree with the core's numpy
count (`core.risk_sets.risk_set_counts`) on the same accounts and firings, and the rule writes health rows."""

from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest

from beton_pipeline.core.risk_sets import NEVER, risk_set_counts
from beton_pipeline.settings import Settings
from beton_pipeline.store import monitoring
from beton_pipeline.store.monitoring import compute_signal_health, discovery_months, risk_set_counts_of
from tests.store.daily_fixtures import FIRST_START, create_signals, outcomes_warehouse


@pytest.fixture
def con(tmp_path):
    with outcomes_warehouse(tmp_path) as c:
        yield c


def _firings(con, seed: int) -> pl.DataFrame:
    """Two signals firing for random accounts, a few days after their start (one account twice)."""
    rng = np.random.default_rng(seed)
    accounts = con.sql("select account_id, started_at from marts.account_outcomes order by account_id").pl()
    rows = []
    for sid in ("sig_a", "sig_b"):
        for acc, started in accounts.iter_rows():
            if rng.random() < 0.4:
                rows.append((acc, sid, started + timedelta(days=int(rng.integers(0, 15)), hours=5)))
    rows.append((rows[0][0], rows[0][1], rows[0][2] + timedelta(days=3)))
    return pl.DataFrame(rows, schema=["account_id", "signal_id", "fired_at"], orient="row")


def _numpy_counts(con, firings, order, first, n_days):
    """The same risk sets by the core's count, one account row per signal."""
    acc = con.sql(
        "select account_id, started_at::date s, (case when converted then converted_at else outcome_window_end_at "
        "end)::date l, converted from marts.account_outcomes where has_events and not converted_before_start"
    ).pl()
    day = lambda col: (col.to_numpy().astype("datetime64[D]") - np.datetime64(first, "D")).astype(np.int64)  # noqa: E731
    parts = []
    for g, sid in enumerate(order):
        fired = firings.filter(pl.col("signal_id") == sid).group_by("account_id").agg(pl.col("fired_at").min())
        joined = acc.join(fired, on="account_id", how="left")
        f = np.where(joined["fired_at"].is_null().to_numpy(), NEVER, 0)
        f[f == 0] = day(joined["fired_at"].drop_nulls().dt.date())
        parts.append((day(joined["s"]), day(joined["l"]), joined["converted"].to_numpy(), f, np.full(joined.height, g)))
    s, last, conv, f, grp = (np.concatenate(x) for x in zip(*parts, strict=True))
    return risk_set_counts(s, last, conv, f, grp, len(order), n_days)


@pytest.mark.parametrize("seed", [0, 1])
def test_sql_risk_sets_match_the_core_count(con, seed):
    firings = _firings(con, seed)
    order = ["sig_a", "sig_b", "sig_none"]
    first = date(2025, 1, 10)  # after the first starts: those already at risk carry over into day 0
    risk = risk_set_counts_of(con, firings, order, first, 150, discovery_months=[])
    expected = _numpy_counts(con, firings, order, first, 150)
    for got, want in zip(
        (risk.daily.conversions_with, risk.daily.n_with, risk.daily.conversions_without, risk.daily.n_without),
        (expected.conversions_with, expected.n_with, expected.conversions_without, expected.n_without),
        strict=True,
    ):
        np.testing.assert_array_equal(got, want)
    assert risk.daily.n_with.sum() > 0 and risk.daily.conversions_with.sum() > 0
    assert risk.reference.n_with.shape[0] == 0  # no discovery months: no reference risk sets


def test_reference_risk_sets_are_the_discovery_cohorts(con):
    firings = _firings(con, 2)
    months = discovery_months(con, Settings())
    assert months and "2025-01" in months
    risk = risk_set_counts_of(con, firings, ["sig_a"], date(2025, 1, 1), 10, months)
    converted, started = con.sql(
        "select count(*) filter (where converted), count(*) from marts.account_outcomes where is_eligible "
        "and strftime(cohort_month, '%Y-%m') in (select unnest(?))",
        params=[months],
    ).fetchall()[0]
    ref = risk.reference
    assert int((ref.conversions_with + ref.conversions_without).sum()) == converted > 0
    # one discovery account starts a day: exactly one is at risk on the first day, in the first age band
    assert int(ref.n_with[0, 0, 0] + ref.n_without[0, 0, 0]) == 1 and started > 1


def test_the_risk_set_rule_writes_the_same_columns(con, monkeypatch):
    create_signals(con, enabled=True)
    firings = _firings(con, 3).with_columns(pl.lit("s1").alias("signal_id"))
    monkeypatch.setattr(monitoring, "enabled_firings", lambda _con, _signals: firings)
    settings = Settings.model_validate({"monitoring": {"method": "risk_set"}})
    days = [FIRST_START.date() + timedelta(days=70), FIRST_START.date() + timedelta(days=71)]
    rows = compute_signal_health(con, settings, days)
    base = compute_signal_health(con, Settings(), days)
    assert rows.columns == base.columns and rows.height == base.height
    assert set(rows["health_rule"]) == {"risk_set"}
    assert rows["alarm_threshold"].drop_nulls().len() == rows.height
