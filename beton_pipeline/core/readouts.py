"""Readouts, pure: did a playbook cause conversions (treated vs randomized holdout), and which
experiment variant converts best (PostHog feature-flag exposures).

Both are the same comparison of two proportions, built on :mod:`beton_pipeline.core.stats`:

* rates ``p = conversions / units`` with Wilson intervals;
* difference ``p_arm − p_reference`` with the **Newcombe** hybrid score interval;
* lift ``p_arm / p_reference`` with the **Katz log** interval (Haldane–Anscombe +0.5 per cell when a
  count is zero; the lift itself is never corrected and is empty when the reference rate is 0);
* two-sided p-value: the **pooled two-proportion z-test**, or **Fisher's exact test** when an
  expected cell is below 5 (``method`` says which);
* **sample-ratio mismatch**: Pearson chi-square of the units per arm against the designed shares
  (``srm_pvalue``); ``p < 0.001`` flags the assignment as broken, and then no comparison should be
  trusted (Fabijan et al., KDD 2019);
* **small samples**: a warning when an arm has fewer than ``min_units`` units (100) or fewer than
  ``min_events`` conversions or non-conversions (10) — below that the normal approximation behind
  the z-test and the intervals is poor and the test has little power;
* experiments with several treatment variants: the variant-vs-control p-values are adjusted with
  **Holm's step-down** method (family-wise error control across the variants of one experiment;
  Holm 1979), and ``significant`` uses the adjusted value.

Everything here takes counts (sufficient statistics: SQL computes them) and returns frozen
dataclasses or polars frames; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import numpy as np
import polars as pl

from beton_pipeline.core import stats
from beton_pipeline.core.playbooks import Experiment
from beton_pipeline.core.stats import holm_adjust

SRM_ALPHA = 0.001
"""A sample-ratio-mismatch p-value below this flags the assignment as broken."""
MIN_UNITS = 100
"""Fewer units than this in an arm → small-sample warning."""
MIN_EVENTS = 10
"""Fewer conversions (or non-conversions) than this in an arm → small-sample warning."""


def small_sample_reasons(
    label: str, units: int, conversions: int, min_units: int = MIN_UNITS, min_events: int = MIN_EVENTS
) -> list[str]:
    """Why an arm is too small to read (empty list when it is fine)."""
    reasons = []
    if units < min_units:
        reasons.append(f"{label}: {units} units (< {min_units})")
    elif min(conversions, units - conversions) < min_events:
        reasons.append(
            f"{label}: {conversions} conversions out of {units} (< {min_events} conversions or non-conversions)"
        )
    return reasons


def _counts(values: object, name: str) -> np.ndarray:
    """A 1-D int64 array of non-negative integer counts (ValueError otherwise)."""
    arr = np.atleast_1d(np.asarray(values, dtype=np.float64)).ravel()
    if np.any(~np.isfinite(arr)) or np.any(arr < 0) or np.any(arr != np.floor(arr)):
        raise ValueError(f"{name} must be non-negative integer counts")
    return arr.astype(np.int64)


def _f(x: object) -> float:
    return float(np.asarray(x).ravel()[0])


@dataclass(frozen=True)
class TreatmentReadout:
    """Treated vs held-out accounts of one playbook (intention to treat: assignment, not delivery).

    Rates are conversions / accounts; ``rate_diff`` = treated − held out (Newcombe CI);
    ``lift`` = treated / held out (Katz log CI); ``p_value`` two-sided (``method`` names the test);
    ``srm_pvalue`` tests the held-out share against ``expected_holdout_fraction``.
    """

    n_treated: int
    conversions_treated: int
    n_held_out: int
    conversions_held_out: int
    rate_treated: float
    rate_held_out: float
    rate_diff: float
    diff_ci_low: float
    diff_ci_high: float
    lift: float
    lift_ci_low: float
    lift_ci_high: float
    p_value: float
    method: str
    significant: bool
    confidence_level: float
    expected_holdout_fraction: float
    observed_holdout_fraction: float
    srm_pvalue: float
    srm_flag: bool
    small_sample: bool
    warnings: tuple[str, ...] = field(default_factory=tuple)


def treatment_readout(
    conversions_treated: int,
    n_treated: int,
    conversions_held_out: int,
    n_held_out: int,
    expected_holdout_fraction: float,
    confidence_level: float = 0.95,
    min_units: int = MIN_UNITS,
    min_events: int = MIN_EVENTS,
) -> TreatmentReadout:
    """Compare the conversion of treated and held-out accounts (see the module docstring for methods).

    Never raises for empty or all-zero arms: undefined quantities are NaN and a warning says why.
    """
    if not 0 <= expected_holdout_fraction < 1:
        raise ValueError("expected_holdout_fraction must be in [0, 1)")
    cmp = stats.compare_proportions(conversions_treated, n_treated, conversions_held_out, n_held_out, confidence_level)
    diff_low, diff_high = stats.newcombe_diff_interval(
        conversions_treated, n_treated, conversions_held_out, n_held_out, confidence_level
    )
    total = n_treated + n_held_out
    warnings: list[str] = []
    if expected_holdout_fraction == 0:
        srm = float("nan")
        warnings.append("holdout_fraction is 0: there is no control group, so the effect cannot be measured")
    elif total == 0:
        srm = float("nan")
    else:
        srm = stats.srm_pvalue(
            np.array([n_treated, n_held_out]), np.array([1 - expected_holdout_fraction, expected_holdout_fraction])
        )
    srm_flag = bool(np.isfinite(srm) and srm < SRM_ALPHA)
    if srm_flag:
        warnings.append(
            f"sample-ratio mismatch: {n_held_out} of {total} held out ({n_held_out / total:.1%}) vs {expected_holdout_fraction:.1%} designed "
            f"(p = {srm:.2g}); the assignment is broken, do not trust the comparison"
        )
    small = small_sample_reasons(
        "treated", n_treated, conversions_treated, min_units, min_events
    ) + small_sample_reasons("held out", n_held_out, conversions_held_out, min_units, min_events)
    if small:
        warnings.append("small sample: " + "; ".join(small))
    p = _f(cmp.p_value)
    rate_t, rate_h = _f(cmp.rate_with), _f(cmp.rate_without)
    return TreatmentReadout(
        n_treated=int(n_treated),
        conversions_treated=int(conversions_treated),
        n_held_out=int(n_held_out),
        conversions_held_out=int(conversions_held_out),
        rate_treated=rate_t,
        rate_held_out=rate_h,
        rate_diff=rate_t - rate_h,
        diff_ci_low=_f(diff_low),
        diff_ci_high=_f(diff_high),
        lift=_f(cmp.lift),
        lift_ci_low=_f(cmp.lift_ci_low),
        lift_ci_high=_f(cmp.lift_ci_high),
        p_value=p,
        method=str(cmp.method[0]),
        significant=bool(np.isfinite(p) and p < 1 - confidence_level),
        confidence_level=confidence_level,
        expected_holdout_fraction=expected_holdout_fraction,
        observed_holdout_fraction=n_held_out / total if total else float("nan"),
        srm_pvalue=srm,
        srm_flag=srm_flag,
        small_sample=bool(small),
        warnings=tuple(warnings),
    )


@dataclass(frozen=True)
class AssignmentCounts:
    """Accounts per arm whose outcome is known, and those left out (with why)."""

    n_treated: int
    conversions_treated: int
    n_held_out: int
    conversions_held_out: int
    n_awaiting_outcome: int
    n_converted_before: int
    n_unknown_account: int


def assignment_counts(assigned: pl.DataFrame, as_of: datetime | date | None, window_days: int) -> AssignmentCounts:
    """Count a playbook's assigned accounts and their conversions after the first action.

    Input columns: ``account_id``, ``held_out`` (bool), ``first_day`` (date of the account's first
    row for the playbook), ``converted_at`` (timestamp or null), ``known_account`` (the account is in
    ``account_outcomes``). Per account:

    * left out when it converted before ``first_day`` (nothing left to cause), or is unknown;
    * converted = ``first_day <= converted_at < first_day + window_days``;
    * counted only when the outcome is known: ``first_day + window_days <= as_of`` (else *awaiting*).
    """
    if assigned.is_empty() or as_of is None:
        return AssignmentCounts(0, 0, 0, 0, assigned.height if as_of is None else 0, 0, 0)
    as_of_day = as_of.date() if isinstance(as_of, datetime) else as_of
    window = timedelta(days=window_days)
    first_ts = pl.col("first_day").cast(pl.Datetime("us"))
    conv = pl.col("converted_at").cast(pl.Datetime("us"))
    frame = assigned.with_columns(
        unknown=~pl.col("known_account").fill_null(False),
        before=conv.is_not_null() & (conv < first_ts),
        known=(pl.col("first_day") + window) <= pl.lit(as_of_day),
        converted=conv.is_not_null() & (conv >= first_ts) & (conv < first_ts + pl.lit(window)),
    )
    unknown = int(frame.get_column("unknown").sum())
    frame = frame.filter(~pl.col("unknown"))
    before = int(frame.get_column("before").sum())
    frame = frame.filter(~pl.col("before"))
    awaiting = int((~frame.get_column("known")).sum())
    frame = frame.filter(pl.col("known"))
    treated = frame.filter(~pl.col("held_out"))
    held = frame.filter(pl.col("held_out"))
    return AssignmentCounts(
        n_treated=treated.height,
        conversions_treated=int(treated.get_column("converted").sum()),
        n_held_out=held.height,
        conversions_held_out=int(held.get_column("converted").sum()),
        n_awaiting_outcome=awaiting,
        n_converted_before=before,
        n_unknown_account=unknown,
    )


# ------------------------------------------------------------------------------------------------
# Experiments
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExperimentReadout:
    """One experiment: a row per variant in ``table`` (control first), the SRM check, warnings, summary."""

    experiment: str
    goal_event: str
    control: str
    table: pl.DataFrame
    srm_pvalue: float
    srm_flag: bool
    small_sample: bool
    warnings: tuple[str, ...]
    summary: str


EXPERIMENT_COLUMNS = (
    "experiment",
    "goal_event",
    "variant",
    "is_control",
    "exposures",
    "conversions",
    "rate",
    "rate_ci_low",
    "rate_ci_high",
    "expected_share",
    "observed_share",
    "rate_diff",
    "diff_ci_low",
    "diff_ci_high",
    "lift",
    "lift_ci_low",
    "lift_ci_high",
    "p_value",
    "p_value_holm",
    "significant",
    "method",
    "small_sample",
    "srm_pvalue",
    "srm_flag",
    "warnings",
    "summary",
)


def _pct(x: float) -> str:
    return "—" if not np.isfinite(x) else f"{100 * x:.2f}%"


def _num(x: float, digits: int = 2) -> str:
    return "—" if not np.isfinite(x) else f"{x:.{digits}f}"


def _p(x: float) -> str:
    if not np.isfinite(x):
        return "—"
    return "< 0.0001" if x < 1e-4 else f"{x:.4f}"


def experiment_readout(
    experiment: str,
    goal_event: str,
    variants: Sequence[str],
    exposures: Sequence[int],
    conversions: Sequence[int],
    control: str = "control",
    expected_shares: Sequence[float] | None = None,
    confidence_level: float = 0.95,
    min_units: int = MIN_UNITS,
    min_events: int = MIN_EVENTS,
    notes: Sequence[str] = (),
) -> ExperimentReadout:
    """Per-variant readout of one experiment against its control (see the module docstring).

    ``variants``/``exposures``/``conversions`` are aligned (one entry per variant, control included);
    ``expected_shares`` default to equal. ``notes`` are extra warnings from the caller (users who saw
    several variants, unexpected variants). The summary is plain text, deterministic (variants in
    the given order, fixed number formats), so it can be diffed and pasted.
    """
    names = [str(v) for v in variants]
    if len(set(names)) != len(names):
        raise ValueError("variants must be distinct")
    n, k = _counts(exposures, "exposures"), _counts(conversions, "conversions")
    if not (len(names) == n.size == k.size):
        raise ValueError("variants, exposures and conversions must have the same length")
    if np.any(k > n):
        raise ValueError("conversions exceed exposures")
    shares = np.ones(len(names)) if expected_shares is None else np.asarray(expected_shares, dtype=np.float64)
    if shares.size != len(names) or np.any(~np.isfinite(shares)) or np.any(shares <= 0):
        raise ValueError("expected_shares must be positive, one per variant")
    shares = shares / shares.sum()
    warnings = list(notes)
    if control not in names:
        warnings.append(f"control {control!r} has no exposures: no comparison is possible")
        names, n, k, shares = [control, *names], np.r_[0, n], np.r_[0, k], np.r_[0.0, shares]
    order = [names.index(control)] + [i for i in range(len(names)) if names[i] != control]
    names = [names[i] for i in order]
    n, k, shares = n[order], k[order], shares[order]
    nc, kc = n[0], k[0]

    cmp = stats.compare_proportions(k, n, kc, nc, confidence_level)
    diff_low, diff_high = stats.newcombe_diff_interval(k, n, kc, nc, confidence_level)
    rate_low, rate_high = stats.wilson_interval(k, n, confidence_level)
    p_raw = np.where(np.arange(len(names)) == 0, np.nan, cmp.p_value)
    p_holm = holm_adjust(p_raw)
    alpha = 1 - confidence_level
    total = int(n.sum())
    srm = stats.srm_pvalue(n, shares) if total and (shares > 0).sum() >= 2 else float("nan")
    srm_flag = bool(np.isfinite(srm) and srm < SRM_ALPHA)
    if srm_flag:
        warnings.append(
            "sample-ratio mismatch: exposures "
            + ", ".join(f"{v} {c:,}" for v, c in zip(names, n.tolist(), strict=True))
            + f" do not match the designed split (p = {srm:.2g}); the assignment or the exposure logging is broken"
        )
    small_per_arm = [
        small_sample_reasons(v, int(a), int(b), min_units, min_events) for v, a, b in zip(names, n, k, strict=True)
    ]
    small_any = any(small_per_arm)
    if small_any:
        warnings.append("small sample: " + "; ".join(r for rs in small_per_arm for r in rs))

    with np.errstate(all="ignore"):
        rate = np.where(n > 0, k / np.maximum(n, 1), np.nan)
        observed = n / total if total else np.full(len(names), np.nan)
    is_control = np.arange(len(names)) == 0
    nan_for_control = lambda a: np.where(is_control, np.nan, np.asarray(a, dtype=np.float64))  # noqa: E731
    significant = ~is_control & np.isfinite(p_holm) & (p_holm < alpha)

    lines = [
        f"Experiment {experiment} (goal: {goal_event}): {len(names)} variants, {total:,} exposed users.",
        f"  {names[0]} (control): {_pct(rate[0])} ({int(k[0]):,}/{int(n[0]):,})",
    ]
    for i in range(1, len(names)):
        verdict = "significant" if significant[i] else "not significant"
        lines.append(
            f"  {names[i]}: {_pct(rate[i])} ({int(k[i]):,}/{int(n[i]):,}); lift {_num(float(cmp.lift[i]))} "
            f"({int(round(100 * confidence_level))}% CI {_num(float(cmp.lift_ci_low[i]))}–{_num(float(cmp.lift_ci_high[i]))}), "
            f"diff {_pct(float(rate[i] - rate[0]))} (CI {_pct(float(diff_low[i]))} to {_pct(float(diff_high[i]))}), "
            f"p {_p(float(p_raw[i]))}, Holm p {_p(float(p_holm[i]))}: {verdict}"
        )
    srm_text = "—" if not np.isfinite(srm) else f"{srm:.4f}" + (" (MISMATCH)" if srm_flag else " (ok)")
    lines.append(f"  Sample ratio p = {srm_text}.")
    winners = [names[i] for i in range(1, len(names)) if significant[i] and float(rate[i] - rate[0]) > 0]
    losers = [names[i] for i in range(1, len(names)) if significant[i] and float(rate[i] - rate[0]) < 0]
    if srm_flag:
        lines.append("  Verdict: do not read — the sample ratio is off.")
    elif winners:
        lines.append(f"  Verdict: {', '.join(winners)} beat{'s' if len(winners) == 1 else ''} {names[0]}.")
    elif losers:
        lines.append(f"  Verdict: {', '.join(losers)} convert{'s' if len(losers) == 1 else ''} worse than {names[0]}.")
    else:
        lines.append(
            f"  Verdict: no variant differs from {names[0]} significantly" + (" (small sample)." if small_any else ".")
        )
    for w in warnings:
        lines.append(f"  Warning: {w}")
    summary = "\n".join(lines)

    table = pl.DataFrame(
        {
            "experiment": [experiment] * len(names),
            "goal_event": [goal_event] * len(names),
            "variant": names,
            "is_control": is_control,
            "exposures": n.astype(np.int64),
            "conversions": k.astype(np.int64),
            "rate": rate,
            "rate_ci_low": rate_low,
            "rate_ci_high": rate_high,
            "expected_share": shares,
            "observed_share": observed,
            "rate_diff": nan_for_control(rate - rate[0]),
            "diff_ci_low": nan_for_control(diff_low),
            "diff_ci_high": nan_for_control(diff_high),
            "lift": nan_for_control(cmp.lift),
            "lift_ci_low": nan_for_control(cmp.lift_ci_low),
            "lift_ci_high": nan_for_control(cmp.lift_ci_high),
            "p_value": p_raw,
            "p_value_holm": p_holm,
            "significant": significant,
            "method": [None if c else str(m) for c, m in zip(is_control, cmp.method, strict=True)],
            "small_sample": [bool(r) for r in small_per_arm],
            "srm_pvalue": [srm] * len(names),
            "srm_flag": [srm_flag] * len(names),
            "warnings": ["; ".join(warnings)] * len(names),
            "summary": [summary] * len(names),
        },
        strict=False,
    )
    return ExperimentReadout(experiment, goal_event, control, table, srm, srm_flag, small_any, tuple(warnings), summary)


def experiment_notes(counts: pl.DataFrame, diagnostics: dict, expected: Sequence[str]) -> list[str]:
    """The warnings of an experiment's readout that come from its counts, not from the statistics.

    Users who saw several variants (``diagnostics["saw_several_variants"]``; counted in their first),
    users exposed too recently to count (``diagnostics["awaiting_window"]``), and variants outside
    ``expected`` (left out of the comparison, with their exposures).
    """
    notes = []
    if diagnostics["saw_several_variants"]:
        notes.append(
            f"{diagnostics['saw_several_variants']} user(s) saw more than one variant (counted in their first)"
        )
    if diagnostics["awaiting_window"]:
        notes.append(
            f"{diagnostics['awaiting_window']} user(s) exposed too recently to count (inside the conversion window)"
        )
    unexpected = counts.filter(~pl.col("variant").is_in(list(expected)))
    if unexpected.height:
        notes.append(
            "unexpected variant(s) left out: "
            + ", ".join(f"{v} ({n})" for v, n in unexpected.select("variant", "exposures").iter_rows())
        )
    return notes


def experiment_readout_from_counts(
    experiment: Experiment, counts: pl.DataFrame, diagnostics: dict, confidence_level: float = 0.95
) -> ExperimentReadout:
    """:func:`experiment_readout` of one configured experiment from its counts per variant.

    ``counts`` has ``variant``, ``exposures``, ``conversions`` (one row per variant seen);
    ``diagnostics`` has ``saw_several_variants`` and ``awaiting_window``. The variants compared are
    the experiment's ``variants``, or every variant seen plus the control; a variant with no row
    counts 0 exposures.
    """
    expected = list(experiment.variants) or sorted(set(counts.get_column("variant").to_list()) | {experiment.control})
    by_variant = {v: (e, c) for v, e, c in counts.select("variant", "exposures", "conversions").iter_rows()}
    return experiment_readout(
        experiment.name,
        experiment.goal_event,
        expected,
        [by_variant.get(v, (0, 0))[0] for v in expected],
        [by_variant.get(v, (0, 0))[1] for v in expected],
        control=experiment.control,
        expected_shares=list(experiment.weights) or None,
        confidence_level=confidence_level,
        notes=experiment_notes(counts, diagnostics, expected),
    )
