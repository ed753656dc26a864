"""A small hand-made warehouse for the signals domain's store tests: the five marts discovery reads.

160 accounts over four cohort months (2025-01 … 2025-04), all eligible. Accounts that invited three
or more teammates in their first 14 days convert far more often (the planted signal); `noise` fires
at random. One `$pageview` property, one attribute per account, one intent type.
"""

from __future__ import annotations

from datetime import datetime
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
    with duckdb.connect(str(path)) as con:
        con.execute("create schema marts")
        for name, frame in (
            ("account_outcomes", outcomes),
            ("account_features", features),
            ("account_event_features", events),
            ("account_property_features", properties),
            ("account_intent_features", intent),
        ):
            con.register("_frame", frame.to_arrow())
            con.execute(f"create table marts.{name} as select * from _frame")
            con.unregister("_frame")
    return path
