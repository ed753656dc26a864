"""`core.starter.suggest_windows`: the windows `beton init` suggests, on hand-made inputs."""

import numpy as np

from beton_pipeline.core.starter import suggest_windows

AS_OF = np.datetime64("2026-01-01T00:00:00")


def starts(first: str, months: int) -> np.ndarray:
    """One account starting on the 1st of each month from `first`, for `months` months."""
    return np.arange(np.datetime64(first, "M"), np.datetime64(first, "M") + months).astype("datetime64[s]")


def test_windows_follow_the_quantiles_of_days_to_first_payment():
    days = np.arange(1.0, 101.0)  # 1 … 100 days: the 90th percentile is 90.1, the 25th 25.75
    s = suggest_windows(days, starts("2024-01", 24), AS_OF, 60, 14)
    assert s.conversion_window_days.value == 91  # 90.1 days rounded up to 13 weeks
    assert "within 90.1 days" in s.conversion_window_days.reason
    assert s.observation_days.value == 25 and "within 25.8 days" in s.observation_days.reason
    # Cohorts 2024-01 … 2025-10 have start + 91 days ≤ the as-of (2025-10-01 + 91 days = 2025-12-31):
    # 22 months, the latest round(6.6) = 7 held out.
    assert s.holdout_fraction.value == round(7 / 22, 2)
    assert (
        s.holdout_fraction.reason.startswith("22 cohort months")
        and "the latest 7 held out" in s.holdout_fraction.reason
    )


def test_conversions_at_or_before_the_start_are_left_out_and_the_window_is_capped_by_the_span():
    days = np.array([-3.0, 0.0, np.nan, 200.0, 210.0, 220.0])
    s = suggest_windows(days, starts("2025-07", 6), AS_OF, 60, 14)
    assert "of 3 conversions" in s.conversion_window_days.reason
    assert s.conversion_window_days.value == 92  # half of the 184 days from 2025-07-01 to the as-of
    assert "capped" in s.conversion_window_days.reason
    assert s.observation_days.value == 46  # the 25th percentile (205) capped at half the window


def test_without_conversions_the_defaults_stay_and_one_month_gets_no_holdout():
    s = suggest_windows(np.array([]), starts("2025-10", 1), AS_OF, 60, 14)
    assert s.conversion_window_days.value is None and s.observation_days.value is None
    assert s.holdout_fraction.value == 0.0 and "too few for a holdout" in s.holdout_fraction.reason
