"""A small hand-made warehouse for the signals domain's store tests: the five marts discovery reads.

160 accounts over four cohort months (2025-01 … 2025-04), all eligible. Accounts that invited three
or more teammates in their first 14 days convert far more often (the planted signal); `noise` fires
at random. One `$pageview` property, one attribute per account, one intent type. The intermediate occurrence
models firing times read (`int_event_occurrences`, `int_property_occurrences`, `int_account_intent_signals`,
`int_account_subscriptions`) hold the same events: an account's k-th event of a kind at k × 10 minutes
after its start, its intent signals 10 days before the start and 12 hours after it, one monthly plan
from 2 hours after the start.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

from beton_pipeline.settings import Settings

MONTHS = ("2025-01", "2025-02", "2025-03", "2025-04")
PER_MONTH = 40
AS_OF = datetime(2025, 12, 31)


def make_marts(path: Path, seed: int = 0) -> Path:
    """Write the marts to a new DuckDB file at `path`; returns `path`."""
    rng = np.random.default_rng(seed)
    windows = Settings().feature_windows
    n = PER_MONTH * len(MONTHS)
    ids = [f"acc_{i:04d}" for i in range(n)]
    months = [MONTHS[i // PER_MONTH] for i in range(n)]
    invites = rng.integers(0, 6, n)
    converted = rng.random(n) < np.where(invites >= 3, 0.7, 0.1)
    started = [datetime(int(m[:4]), int(m[5:]), 1 + i % 20) for i, m in enumerate(months)]
    outcomes = pl.DataFrame(
        {
            "account_id": ids,
            "cohort_month": [datetime(int(m[:4]), int(m[5:]), 1).date() for m in months],
            "started_at": started,
            "converted": converted,
            "arr": np.where(converted, 12_000.0, np.nan),
            "is_eligible": [True] * n,
            "has_events": [True] * n,
            "as_of_at": [AS_OF] * n,
        }
    )
    features = pl.DataFrame(
        {
            "account_id": ids,
            "industry": ["Fintech" if i % 2 else "Retail" for i in range(n)],
            "employee_band": ["11-50"] * n,
            "plan_interval": ["month"] * n,
            "feature_window_end_at": [datetime(s.year, s.month, s.day, 23) for s in started],
            "employee_count": (rng.integers(5, 500, n)).astype(np.int64),
            "plan_annualized_amount": [1200.0] * n,
            "is_crm_company": [i % 3 == 0 for i in range(n)],
            "n_events": invites.astype(np.int64) + 10,
            "n_distinct_events": [3] * n,
            "n_users": [2] * n,
            "n_active_days": [4] * n,
        }
    )
    noise = rng.integers(0, 3, n)
    events = pl.concat(
        [
            pl.DataFrame(
                {
                    "account_id": ids,
                    "event_name": [name] * n,
                    **{f"n_first_{d}d": counts.astype(np.int64) for d in windows},
                    "n_in_window": counts.astype(np.int64),
                }
            )
            for name, counts in (("invited_teammate", invites), ("noise", noise))
        ]
    ).filter(pl.col("n_in_window") > 0)
    pages = rng.integers(0, 4, n)
    properties = pl.DataFrame(
        {
            "account_id": ids,
            "event_name": ["$pageview"] * n,
            "property_name": ["$current_url"] * n,
            "property_value": ["/pricing" if i % 2 else "/docs&faq" for i in range(n)],
            **{f"n_first_{d}d": pages.astype(np.int64) for d in windows},
            "n_in_window": pages.astype(np.int64),
        }
    ).filter(pl.col("n_in_window") > 0)
    intent = pl.DataFrame(
        {
            "account_id": ids[::4],
            "signal_type": ["g2_visit"] * len(ids[::4]),
            "n_before_start": [1] * len(ids[::4]),
            "n_before_window_end": [2] * len(ids[::4]),
        }
    )
    start_of = dict(zip(ids, started, strict=True))
    end_of = {a: datetime(s.year, s.month, s.day, 23) for a, s in start_of.items()}
    occurrences = pl.DataFrame(
        [
            {
                "account_id": r["account_id"],
                "event_name": r["event_name"],
                "event_id": f"{r['account_id']}:{r['event_name']}:{k}",
                "occurred_at": start_of[r["account_id"]] + timedelta(minutes=10 * k),
                "started_at": start_of[r["account_id"]],
                "occurrence_number": k,
            }
            for r in events.iter_rows(named=True)
            for k in range(1, r["n_in_window"] + 1)
        ]
    )
    property_occurrences = pl.DataFrame(
        [
            {
                "account_id": r["account_id"],
                "event_name": r["event_name"],
                "property_name": r["property_name"],
                "property_value": r["property_value"],
                "event_id": f"{r['account_id']}:page:{k}",
                "occurred_at": start_of[r["account_id"]] + timedelta(minutes=10 * k),
                "started_at": start_of[r["account_id"]],
                "occurrence_number": k,
            }
            for r in properties.iter_rows(named=True)
            for k in range(1, r["n_in_window"] + 1)
        ]
    )
    intent_signals = pl.DataFrame(
        [
            {
                "account_id": a,
                "signal_type": "g2_visit",
                "occurred_at": start_of[a] + shift,
                "started_at": start_of[a],
                "feature_window_end_at": end_of[a],
            }
            for a in ids[::4]
            for shift in (timedelta(days=-10), timedelta(hours=12))
        ]
    )
    subscriptions = pl.DataFrame(
        {
            "account_id": ids,
            "subscription_id": [f"sub_{a}" for a in ids],
            "plan_interval": ["month"] * n,
            "annualized_amount": [1200.0] * n,
            "created_at": [start_of[a] + timedelta(hours=2) for a in ids],
        }
    )
    with duckdb.connect(str(path)) as con:
        con.execute("create schema marts; create schema intermediate")
        for name, frame in (
            ("marts.account_outcomes", outcomes),
            ("marts.account_features", features),
            ("marts.account_event_features", events),
            ("marts.account_property_features", properties),
            ("marts.account_intent_features", intent),
            ("intermediate.int_event_occurrences", occurrences),
            ("intermediate.int_property_occurrences", property_occurrences),
            ("intermediate.int_account_intent_signals", intent_signals),
            ("intermediate.int_account_subscriptions", subscriptions),
        ):
            con.register("_frame", frame.to_arrow())
            con.execute(f"create table {name} as select * from _frame")
            con.unregister("_frame")
    return path
