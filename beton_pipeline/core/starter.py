"""Windows suggested from an export's own data, for the starter `beton.yaml` that `beton init` writes.

Each suggestion carries the figure it came from, written beside it as a comment:

* `conversion_window_days`: the 90th percentile of the days from an account's start (its first event)
  to its first payment, among accounts that converted after their start, rounded up to whole weeks;
  capped at half the span of account starts, so that at least half the cohorts have a known outcome.
* `observation_days`: the 25th percentile of those days (three in four conversions come after the
  window closes, so behaviour in it precedes most outcomes), at least 1 and at most half the
  conversion window.
* `holdout_fraction`: with M cohort months whose outcome is known under the suggested window, the
  latest k = max(1, round(0.3·M)) of them, as a share k/M capped at 0.5; 0 when M < 2 (a holdout needs
  a later month than discovery's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CONVERSION_QUANTILE = 0.90
OBSERVATION_QUANTILE = 0.25
HOLDOUT_SHARE_OF_MONTHS = 0.30
MAX_HOLDOUT_FRACTION = 0.5


@dataclass(frozen=True)
class Suggestion:
    """A suggested setting, or None (keep beton's default), and the figure it came from."""

    value: float | int | None
    reason: str


@dataclass(frozen=True)
class WindowSuggestions:
    conversion_window_days: Suggestion
    observation_days: Suggestion
    holdout_fraction: Suggestion


def _quantile(values: np.ndarray, q: float) -> float:
    return float(np.quantile(values, q, method="linear"))


def suggest_windows(
    days_to_convert: np.ndarray,
    started_at: np.ndarray,
    as_of: np.datetime64,
    default_conversion_days: int,
    default_observation_days: int,
) -> WindowSuggestions:
    """The three suggestions (module docstring) from the days start → first payment of each converted
    account (`days_to_convert`, only those that converted after their start: > 0), every account's
    start (`started_at`, datetime64) and the as-of time. The defaults apply when there is no conversion."""
    days = np.asarray(days_to_convert, dtype=float)
    days = days[np.isfinite(days) & (days > 0)]
    starts = np.asarray(started_at, dtype="datetime64[s]")
    starts = starts[~np.isnat(starts)]
    as_of = np.datetime64(as_of, "s")
    span_days = float((as_of - starts.min()) / np.timedelta64(1, "D")) if starts.size else 0.0

    if days.size:
        q90 = _quantile(days, CONVERSION_QUANTILE)
        weeks = max(1, math.ceil(q90 / 7))
        cap = max(7, int(span_days // 2))
        window = min(7 * weeks, cap)
        capped = " (capped at half the start span)" if window < 7 * weeks else ""
        conversion = Suggestion(
            window,
            f"90% of {days.size:,} conversions after the account's start paid within {q90:.1f} days; "
            f"rounded up to whole weeks{capped}; account starts span {span_days:.0f} days",
        )
        q25 = _quantile(days, OBSERVATION_QUANTILE)
        observation = Suggestion(
            int(min(max(1, math.floor(q25)), max(1, window // 2))),
            f"25% of those conversions came within {q25:.1f} days of the start; at most half the conversion window",
        )
    else:
        window = default_conversion_days
        conversion = Suggestion(None, "no account paid after its start: beton's default kept")
        observation = Suggestion(None, "no account paid after its start: beton's default kept")
        if default_observation_days > window:
            observation = Suggestion(window, "the conversion window")

    known = starts[starts + np.timedelta64(int(window), "D") <= as_of]
    months = np.unique(known.astype("datetime64[M]")).size
    if months < 2:
        holdout = Suggestion(
            0.0,
            f"{months} cohort month(s) with a known outcome under a {window}-day window: too few for a holdout",
        )
    else:
        k = max(1, round(HOLDOUT_SHARE_OF_MONTHS * months))
        fraction = min(k / months, MAX_HOLDOUT_FRACTION)
        holdout = Suggestion(
            round(fraction, 2),
            f"{months} cohort months with a known outcome under a {window}-day window: the latest {k} held out",
        )
    return WindowSuggestions(conversion, observation, holdout)
