"""When a custom condition fired: `core.conditions.firing_times_many` against a per-account reference that
reads raw events (not the marts' counts, not the vectorised code), on random condition trees (hypothesis),
and the invariants of the rules: an account fires exactly where the condition is true, never after its
feature window end; `all` fires no earlier than any child, `any` at its earliest true child."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beton_pipeline.core.candidates import FeatureFrames
from beton_pipeline.core.conditions import (
    FIRST_SUBSCRIPTION_LEAF,
    LEAF_TIME_SCHEMA,
    AllOf,
    AnyOf,
    AttributeCondition,
    EventCondition,
    IntentCondition,
    Not,
    bind,
    evaluate_many,
    firing_times_many,
    leaf_id,
    parse_signal,
    timed_leaves,
    vocabulary_from_frames,
)

WINDOWS = (1, 3, 7, 14)
LOOKBACK = 90
PATHS = ("/settings/integrations", "/home", "/billing")
INDUSTRIES = ("Fintech", "Education")
BASE = datetime(2025, 1, 1)


@dataclass
class Account:
    """One account's raw history: what the marts and the occurrence models are built from."""

    account_id: str
    start: datetime
    end: datetime  # feature window end
    industry: str | None
    employees: int | None
    invites: list[datetime]
    pages: list[tuple[datetime, str]]
    intent: list[datetime]  # funding rounds
    subscriptions: list[tuple[datetime, str, float]]  # created, plan, annualized amount


def make_accounts(n: int, seed: int) -> list[Account]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        start = BASE + timedelta(days=int(i % 60), hours=int(rng.integers(0, 24)))
        roll = rng.random()
        if roll < 0.05:  # converted before its first event: the window ends before the start
            end = start - timedelta(hours=3)
        elif roll < 0.3:  # converted (or the as-of) early in the observation window
            end = start + timedelta(hours=int(rng.integers(1, 24 * 20)))
        else:
            end = start + timedelta(days=30)

        def times(k: int, lo_h: int, hi_h: int, start: datetime = start) -> list[datetime]:
            return sorted(start + timedelta(minutes=int(m)) for m in rng.integers(lo_h * 60, hi_h * 60, k))

        invites = [t for t in times(int(rng.integers(0, 7)), 0, 24 * 20) if t < end]
        pages = [(t, str(rng.choice(PATHS))) for t in times(int(rng.integers(0, 6)), 0, 24 * 16) if t < end]
        intent = [t for t in times(int(rng.integers(0, 3)), -24 * 120, 24 * 15) if t < end]
        subs = []
        for created in times(int(rng.integers(0, 3)), -24 * 5, 24 * 25):
            if created < end:
                plan = str(rng.choice(["month", "year"]))
                subs.append((created, plan, 1200.0 if plan == "month" else 9000.0))
        out.append(
            Account(
                account_id=f"acc_{i:04d}",
                start=start,
                end=end,
                industry=None if rng.random() < 0.1 else str(rng.choice(INDUSTRIES)),
                employees=None if rng.random() < 0.1 else int(rng.integers(1, 2000)),
                invites=invites,
                pages=pages,
                intent=intent,
                subscriptions=subs,
            )
        )
    return out


def _first_days(times: list[datetime], a: Account, days: int) -> list[datetime]:
    return [t for t in times if t < a.start + timedelta(days=days)]


def frames_of(accounts: list[Account]) -> FeatureFrames:
    """The point-in-time marts of `accounts` (counts in each first-N-days window, before the window end)."""
    rows, events, props, intent = [], [], [], []
    for a in accounts:
        first = a.subscriptions[0] if a.subscriptions else None
        rows.append(
            {
                "account_id": a.account_id,
                "cohort_month": "2025-01",
                "started_at": a.start,
                "feature_window_end_at": a.end,
                "converted": False,
                "arr": None,
                "industry": a.industry,
                "employee_band": None,
                "employee_count": a.employees,
                "plan_interval": first[1] if first else None,
                "plan_annualized_amount": first[2] if first else None,
                "n_events": len(a.invites) + len(a.pages),
            }
        )
        if a.invites:
            counts = {f"n_first_{d}d": len(_first_days(a.invites, a, d)) for d in WINDOWS}
            events.append({"account_id": a.account_id, "event_name": "invite", **counts})
        if a.pages:
            counts = {f"n_first_{d}d": len(_first_days([t for t, _ in a.pages], a, d)) for d in WINDOWS}
            events.append({"account_id": a.account_id, "event_name": "$pageview", **counts})
        for path in sorted({p for _, p in a.pages}):
            times = [t for t, p in a.pages if p == path]
            counts = {f"n_first_{d}d": len(_first_days(times, a, d)) for d in WINDOWS}
            props.append(
                {
                    "account_id": a.account_id,
                    "event_name": "$pageview",
                    "property_name": "$current_url",
                    "property_value": path,
                    **counts,
                }
            )
        qualifying = [t for t in a.intent if t >= a.start - timedelta(days=LOOKBACK)]
        if qualifying:
            intent.append(
                {
                    "account_id": a.account_id,
                    "signal_type": "funding_round",
                    "n_before_start": sum(t < a.start for t in qualifying),
                    "n_before_window_end": len(qualifying),
                }
            )
    counts_schema = {f"n_first_{d}d": pl.Int64 for d in WINDOWS}
    return FeatureFrames(
        accounts=pl.DataFrame(
            rows,
            schema_overrides={
                "started_at": pl.Datetime("us"),
                "feature_window_end_at": pl.Datetime("us"),
                "arr": pl.Float64,
                "industry": pl.String,
                "employee_band": pl.String,
                "employee_count": pl.Int64,
                "plan_interval": pl.String,
                "plan_annualized_amount": pl.Float64,
            },
        ),
        events=pl.DataFrame(events, schema={"account_id": pl.String, "event_name": pl.String, **counts_schema}),
        properties=pl.DataFrame(
            props,
            schema={
                "account_id": pl.String,
                "event_name": pl.String,
                "property_name": pl.String,
                "property_value": pl.String,
                **counts_schema,
            },
        ),
        intent=pl.DataFrame(
            intent,
            schema={
                "account_id": pl.String,
                "signal_type": pl.String,
                "n_before_start": pl.Int64,
                "n_before_window_end": pl.Int64,
            },
        ),
    )


def leaf_times_of(accounts: list[Account], leaves: pl.DataFrame) -> pl.DataFrame:
    """What the warehouse looks up for each timed leaf (condition_leaf_times.sql), account by account."""
    out = []
    for leaf in leaves.iter_rows(named=True):
        for a in accounts:
            at = None
            if leaf["kind"] == "event":
                if leaf["property"] is None:
                    times = a.invites if leaf["event"] == "invite" else []
                else:
                    times = [t for t, p in a.pages if p in leaf["values"]]
                times = _first_days(times, a, leaf["window_days"])
                at = times[leaf["nth"] - 1] if len(times) >= leaf["nth"] else None
            elif leaf["kind"] == "intent":
                stop = a.start if leaf["until"] == "start" else a.end
                times = [t for t in a.intent if a.start - timedelta(days=leaf["lookback_days"]) <= t < stop]
                at = max(times) if times else None
            elif leaf["kind"] == "plan":
                at = a.subscriptions[0][0] if a.subscriptions else None
            if at is not None:
                out.append({"leaf": leaf["leaf"], "account_id": a.account_id, "at": at})
    return pl.DataFrame(out, schema=LEAF_TIME_SCHEMA)


_OPS = {
    ">=": lambda x, y: x >= y,
    ">": lambda x, y: x > y,
    "<=": lambda x, y: x <= y,
    "<": lambda x, y: x < y,
    "==": lambda x, y: x == y,
    "!=": lambda x, y: x != y,
}


def reference(cond, a: Account) -> tuple[bool, datetime | None, bool]:
    """(true, when it became true, decided at the start) for one account, by the documented rules, from raw events."""
    start = min(a.start, a.end)

    def clip(t: datetime) -> datetime:
        return min(t, a.end)

    if isinstance(cond, AllOf):
        parts = [reference(c, a) for c in cond.children]
        true = all(p[0] for p in parts)
        return true, max(p[1] for p in parts) if true else None, all(p[2] for p in parts)
    if isinstance(cond, AnyOf):
        parts = [reference(c, a) for c in cond.children]
        true_times = [p[1] for p in parts if p[0]]
        return bool(true_times), min(true_times) if true_times else None, all(p[2] for p in parts)
    if isinstance(cond, Not):
        true, _, fixed = reference(cond.child, a)
        return (not true), (start if fixed else a.end) if not true else None, fixed
    if isinstance(cond, EventCondition):
        times = a.invites if cond.property is None else [t for t, p in a.pages if p in cond.values]
        times = _first_days(times, a, cond.window_days)
        true = _OPS[cond.op](len(times), cond.threshold)
        if not true:
            return False, None, False
        if cond.op == ">=" and cond.threshold == 0:
            return True, start, True
        if cond.op in (">=", ">"):
            n = cond.threshold if cond.op == ">=" else cond.threshold + 1
            return True, clip(times[n - 1]), False
        return True, a.end, False
    if isinstance(cond, AttributeCondition):
        first = a.subscriptions[0] if a.subscriptions else None
        value = {
            "industry": a.industry,
            "employee_count": a.employees,
            "plan_interval": first[1] if first else None,
            "plan_annualized_amount": first[2] if first else None,
            "n_events": len(a.invites) + len(a.pages),
        }[cond.attribute]
        if value is None:
            true = False
        elif cond.op == "in":
            true = value in cond.values
        elif cond.op == "not_in":
            true = value not in cond.values
        else:
            true = _OPS[cond.op](float(value), cond.values[0])
        if cond.attribute in ("industry", "employee_count"):
            return true, start if true else None, True
        if cond.attribute.startswith("plan_"):
            return true, clip(max(first[0], a.start)) if true else None, False
        return true, a.end if true else None, False
    if isinstance(cond, IntentCondition):
        stop = a.start if cond.until == "start" else a.end
        times = [t for t in a.intent if a.start - timedelta(days=cond.lookback_days) <= t < stop]
        return bool(times), clip(max(times)) if times else None, cond.until == "start"
    raise TypeError(cond)


LEAVES = st.one_of(
    st.builds(
        lambda op, t, w: EventCondition("invite", op, t, w),
        st.sampled_from(tuple(_OPS)),
        st.integers(0, 5),
        st.sampled_from(WINDOWS),
    ),
    st.builds(
        lambda t, w, values: EventCondition("$pageview", ">=", t, w, "$current_url", tuple(sorted(values))),
        st.integers(1, 3),
        st.sampled_from(WINDOWS),
        st.sets(st.sampled_from(PATHS), min_size=1, max_size=3),
    ),
    st.builds(
        lambda op, v: AttributeCondition("industry", op, (v,)),
        st.sampled_from(["in", "not_in"]),
        st.sampled_from(INDUSTRIES),
    ),
    st.builds(
        lambda op, x: AttributeCondition("employee_count", op, (float(x),)),
        st.sampled_from(tuple(_OPS)),
        st.sampled_from([20, 500]),
    ),
    st.builds(
        lambda op, v: AttributeCondition("plan_interval", op, (v,)),
        st.sampled_from(["in", "not_in"]),
        st.sampled_from(["month", "year"]),
    ),
    st.builds(lambda x: AttributeCondition("plan_annualized_amount", ">=", (float(x),)), st.sampled_from([1000, 5000])),
    st.builds(lambda x: AttributeCondition("n_events", ">=", (float(x),)), st.sampled_from([2, 6])),
    st.builds(
        lambda until: IntentCondition("funding_round", until, LOOKBACK), st.sampled_from(["start", "window_end"])
    ),
)
CONDITIONS = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=3).map(lambda c: AllOf(tuple(c))),
        st.lists(children, min_size=1, max_size=3).map(lambda c: AnyOf(tuple(c))),
        children.map(Not),
    ),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def data():
    accounts = make_accounts(240, seed=11)
    return accounts, frames_of(accounts)


def _firings(conditions, accounts, frames):
    return firing_times_many(conditions, frames, leaf_times_of(accounts, timed_leaves(conditions)))


def _expected(cond, accounts) -> np.ndarray:
    return np.array(
        [
            np.datetime64(t, "us") if t is not None else np.datetime64("NaT")
            for t in (reference(cond, a)[1] for a in accounts)
        ],
        dtype="datetime64[us]",
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cond=CONDITIONS)
def test_firing_times_match_a_per_account_reference_and_fire_exactly_where_the_condition_holds(data, cond):
    accounts, frames = data
    result = _firings([cond], accounts, frames)
    got = result.fired_at[:, 0]
    np.testing.assert_array_equal(got, _expected(cond, accounts))
    np.testing.assert_array_equal(result.fired[:, 0], evaluate_many([cond], frames)[:, 0])
    end = frames.accounts["feature_window_end_at"].to_numpy().astype("datetime64[us]")
    assert (got[result.fired[:, 0]] <= end[result.fired[:, 0]]).all()
    assert result.missing_leaf_times == 0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(children=st.lists(CONDITIONS, min_size=1, max_size=3))
def test_all_fires_at_its_latest_child_and_any_at_its_earliest_true_child(data, children):
    accounts, frames = data
    both = [AllOf(tuple(children)), AnyOf(tuple(children)), *children]
    fired_at = _firings(both, accounts, frames).fired_at
    all_at, any_at, kids = fired_at[:, 0], fired_at[:, 1], fired_at[:, 2:]
    fired_all = ~np.isnat(all_at)
    assert (fired_all == (~np.isnat(kids)).all(axis=1)).all()
    assert (all_at[fired_all, None] >= kids[fired_all]).all()  # no earlier than any child
    assert (all_at[fired_all] == kids[fired_all].max(axis=1)).all()
    fired_any = ~np.isnat(any_at)
    assert (fired_any == (~np.isnat(kids)).any(axis=1)).all()
    true_kids = np.where(np.isnat(kids), np.datetime64("9999-01-01", "us"), kids)
    assert (any_at[fired_any, None] <= true_kids[fired_any]).all()  # no later than the earliest true child
    assert (any_at[fired_any] == true_kids[fired_any].min(axis=1)).all()


def test_a_negated_leaf_fires_at_the_window_end_unless_it_is_decided_at_the_start(data):
    accounts, frames = data
    start = frames.accounts["started_at"].to_numpy().astype("datetime64[us]")
    end = frames.accounts["feature_window_end_at"].to_numpy().astype("datetime64[us]")
    crm = Not(AttributeCondition("industry", "in", ("Education",)))
    invites = Not(EventCondition("invite", ">=", 2, 7))
    intent_before_start = Not(IntentCondition("funding_round", "start", LOOKBACK))
    fired_at = _firings([crm, invites, intent_before_start], accounts, frames).fired_at
    for column, at in ((0, np.minimum(start, end)), (1, end), (2, np.minimum(start, end))):
        fired = ~np.isnat(fired_at[:, column])
        assert fired.sum() > 10
        np.testing.assert_array_equal(fired_at[fired, column], at[fired])


def test_timed_leaves_are_looked_up_once_with_the_occurrence_that_makes_them_true():
    at_least = EventCondition("invite", ">=", 3, 14)
    more_than = EventCondition("invite", ">", 3, 14)
    pages = EventCondition("$pageview", ">=", 2, 7, "$current_url", ("/billing", "/home"))
    conditions = [
        AllOf((at_least, Not(more_than))),
        AnyOf((at_least, pages, EventCondition("invite", ">=", 0, 14), EventCondition("invite", "<", 2, 14))),
        AllOf(
            (
                AttributeCondition("plan_interval", "in", ("year",)),
                AttributeCondition("plan_annualized_amount", ">=", (5000.0,)),
            )
        ),
        AllOf((IntentCondition("funding_round", "start", 90), AttributeCondition("industry", "in", ("Fintech",)))),
    ]
    leaves = timed_leaves(conditions).sort("leaf")
    assert leaves["leaf"].to_list() == sorted(
        [
            leaf_id(at_least),
            leaf_id(more_than),
            leaf_id(pages),
            FIRST_SUBSCRIPTION_LEAF,
            leaf_id(conditions[3].children[0]),
        ]
    )
    nth = dict(zip(leaves["leaf"], leaves["nth"], strict=True))
    assert (nth[leaf_id(at_least)], nth[leaf_id(more_than)], nth[leaf_id(pages)]) == (3, 4, 2)
    assert leaves.filter(pl.col("leaf") == leaf_id(pages))["values"].to_list() == [["/billing", "/home"]]


def test_a_true_leaf_without_a_looked_up_time_fires_at_the_window_end_and_is_counted(data):
    accounts, frames = data
    cond = EventCondition("invite", ">=", 1, 14)
    complete = leaf_times_of(accounts, timed_leaves([cond]))
    dropped = complete.head(5)
    result = firing_times_many([cond], frames, complete.slice(5))
    assert result.missing_leaf_times == 5
    np.testing.assert_array_equal(result.fired[:, 0], evaluate_many([cond], frames)[:, 0])
    rows = frames.accounts.with_row_index().join(dropped, on="account_id")["index"].to_numpy()
    end = frames.accounts["feature_window_end_at"].to_numpy().astype("datetime64[us]")
    np.testing.assert_array_equal(result.fired_at[rows, 0], end[rows])


def test_the_demo_team_invites_signal_fires_at_the_third_invite_or_the_later_integrations_visit():
    start = datetime(2025, 3, 1, 9)
    hours = lambda h: start + timedelta(hours=h)  # noqa: E731
    accounts = [
        # third invite at +30 h, integrations page at +50 h: the later of the two
        Account(
            "a",
            start,
            start + timedelta(days=30),
            "Fintech",
            40,
            [hours(1), hours(2), hours(30)],
            [(hours(50), PATHS[0])],
            [],
            [],
        ),
        # funding round before the start stands in for the page: fires at the third invite
        Account(
            "b",
            start,
            start + timedelta(days=30),
            "Fintech",
            40,
            [hours(1), hours(2), hours(3)],
            [],
            [start - timedelta(days=5)],
            [],
        ),
        # in education: never
        Account(
            "c",
            start,
            start + timedelta(days=30),
            "Education",
            40,
            [hours(1), hours(2), hours(3)],
            [(hours(4), PATHS[0])],
            [],
            [],
        ),
        # third invite after 14 days: never
        Account(
            "d",
            start,
            start + timedelta(days=30),
            "Fintech",
            40,
            [hours(1), hours(2), hours(24 * 15)],
            [(hours(4), PATHS[0])],
            [],
            [],
        ),
    ]
    frames = frames_of(accounts)
    text = """\
name: Team invites early
when:
  all:
    - {event: invite, count: ">= 3", within_days: 14}
    - not: {attribute: industry, equals: Education}
    - any:
        - {event: "$pageview", property: "$current_url", equals: "/settings/integrations", within_days: 14}
        - {intent: funding_round, within_days_before_start: 90}
"""
    vocab = vocabulary_from_frames(frames, WINDOWS, 14, LOOKBACK)
    cond = bind(parse_signal(text, "signals/team.yml"), vocab).condition
    fired_at = _firings([cond], accounts, frames).fired_at[:, 0]
    assert fired_at.tolist() == [hours(50), hours(3), None, None]
