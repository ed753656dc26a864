"""The pages' charts as Plotly figures (plain dicts: `{"data": [...], "layout": {...}}`), drawn in the browser
by the plotly.js that ships inside the `plotly` package (served by the app itself: no CDN, so pages work offline).

Each function takes the rows the page shows and returns a figure whose numbers are those rows' values, unrounded,
so a test can compare a chart with the warehouse. A figure with nothing to draw says so in its title.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

from beton_pipeline.core.playbooks import weight_note_for_rep

DAY_MS = 86_400_000
"""One day on a date axis (plotly counts milliseconds): a tick per day on a short history, not per hour."""
LIFT_AXIS = {"type": "log", "title": {"text": "lift (log scale; 1 = no difference)"}, "zeroline": False}
NO_EFFECT_LINE = {"type": "line", "xref": "x", "yref": "paper", "x0": 1, "x1": 1, "y0": 0, "y1": 1}


def _finite(value: object) -> float | None:
    """A number a chart can draw: None for missing, NaN, infinite or non-positive (a log axis) values."""
    if value is None or isinstance(value, str):
        return None
    number = float(value)
    return number if math.isfinite(number) and number > 0 else None


def _error(estimates: list, lows: list, highs: list) -> dict:
    """Plotly's asymmetric error bars from interval ends (no bar where an end is missing)."""
    plus = [None if e is None or h is None else h - e for e, h in zip(estimates, highs, strict=True)]
    minus = [None if e is None or lo is None else e - lo for e, lo in zip(estimates, lows, strict=True)]
    return {"type": "data", "symmetric": False, "array": plus, "arrayminus": minus}


def _layout(title: str, **extra) -> dict:
    return {"title": {"text": title}, "margin": {"l": 60, "r": 70, "t": 50, "b": 50}, "hovermode": "closest", **extra}


def forest_plot(signals: Sequence[Mapping], names: Sequence[str]) -> dict:
    """Lift with its confidence interval per signal (a forest plot), one row per signal in the order given:
    the discovery lift (all accounts) and, where discovery computed it, the lift among equally active accounts
    (the activity-adjusted estimate). Signals without a drawable lift are left out of that trace."""
    labels = [html.escape(name) for name in names]  # plotly draws tags in text: names come from the data
    traces = []
    for key, label in (("lift", "lift"), ("adjusted_lift", "among equally active accounts")):
        x = [_finite(s.get(key)) for s in signals]
        if not any(v is not None for v in x):
            continue
        lows = [_finite(s.get(f"{key}_ci_low")) for s in signals]
        highs = [_finite(s.get(f"{key}_ci_high")) for s in signals]
        traces.append(
            {
                "type": "scatter",
                "mode": "markers",
                "orientation": "h",  # grouped along y (`scattermode`)
                "name": label,
                "x": x,
                "y": labels,
                "error_x": _error(x, lows, highs),
                "hovertemplate": "%{y}<br>" + label + " %{x:.2f}<extra></extra>",
            }
        )
    title = "Lift with its confidence interval" if traces else "No signal has a lift to draw yet"
    height = max(260, 60 + 28 * len(labels))
    return {
        "data": traces,
        "layout": _layout(
            title,
            xaxis=LIFT_AXIS,
            yaxis={"autorange": "reversed", "automargin": True},
            shapes=[NO_EFFECT_LINE],
            height=height,
            scattermode="group",  # the two estimates of a signal side by side on its row, not on top of each other
            legend={"orientation": "h"},
        ),
    }


def backtest_by_month(rows: Sequence[Mapping]) -> dict:
    """A signal's backtest by cohort month: lift with its confidence interval (markers, left axis) and precision,
    the share of accounts with the signal that converted (bars, right axis)."""
    months = [str(r["cohort_month"]) for r in rows]
    lift = [_finite(r.get("lift")) for r in rows]
    traces = [
        {
            "type": "bar",
            "name": "precision",
            "x": months,
            "y": [r.get("precision") for r in rows],
            "yaxis": "y2",
            "opacity": 0.35,
        },
        {
            "type": "scatter",
            "mode": "markers",
            "name": "lift",
            "x": months,
            "y": lift,
            "error_y": _error(
                lift, [_finite(r.get("lift_ci_low")) for r in rows], [_finite(r.get("lift_ci_high")) for r in rows]
            ),
        },
    ]
    title = "Backtest by cohort month" if rows else "No backtest yet: the next run backtests this signal"
    return {
        "data": traces if rows else [],
        "layout": _layout(
            title,
            xaxis={"type": "category", "title": {"text": "cohort month"}},
            yaxis={"title": {"text": "lift"}, "rangemode": "tozero"},
            yaxis2={"title": {"text": "precision"}, "overlaying": "y", "side": "right", "tickformat": ".0%"},
            legend={"orientation": "h"},
        ),
    }


def health_over_time(rows: Sequence[Mapping]) -> dict:
    """A signal's health by day: the lift over its trailing window with the interval, beside the lift its backtest
    promised (dashed); each point's hover names the day's verdict (healthy, degrading, broken…)."""
    days = [str(r["day"]) for r in rows]
    lift = [_finite(r.get("lift")) for r in rows]
    traces = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "lift over the trailing window",
            "x": days,
            "y": lift,
            "text": [r.get("health") for r in rows],
            "hovertemplate": "%{x}: lift %{y:.2f} (%{text})<extra></extra>",
            "error_y": _error(
                lift, [_finite(r.get("lift_ci_low")) for r in rows], [_finite(r.get("lift_ci_high")) for r in rows]
            ),
        },
        {
            "type": "scatter",
            "mode": "lines",
            "name": "backtest lift",
            "x": days,
            "y": [_finite(r.get("backtest_lift")) for r in rows],
            "line": {"dash": "dash"},
        },
    ]
    title = "Health: lift by day" if rows else "No health history yet: only enabled signals are monitored"
    return {
        "data": traces if rows else [],
        "layout": _layout(
            title,
            xaxis={"type": "date"},
            yaxis={"title": {"text": "lift"}, "rangemode": "tozero"},
            legend={"orientation": "h"},
        ),
    }


def accuracy_trend(rows: Sequence[Mapping]) -> dict:
    """Signal accuracy (the conversion rate of accounts a signal fired for) beside the conversion rate of every
    account, over the outcomes closed in the trailing 30 days, by day: how much better than the base rate the
    signals pick."""
    days = [str(r["day"]) for r in rows]
    traces = [
        {
            "type": "scatter",
            "mode": "lines",
            "name": name,
            "x": days,
            "y": [r.get(column) for r in rows],
            "hovertemplate": "%{x}: %{y:.1%}<extra>" + name + "</extra>",
        }
        for column, name in (
            ("signal_accuracy_30d", "signal accuracy"),
            ("conversion_rate_30d", "conversion rate, all accounts"),
        )
    ]
    title = "Accuracy trend (outcomes closed in the last 30 days)" if rows else "No scored days yet"
    return {
        "data": traces if rows else [],
        "layout": _layout(
            title,
            xaxis={"type": "date"},
            yaxis={"tickformat": ".0%", "rangemode": "tozero"},
            legend={"orientation": "h"},
        ),
    }


def leads_by_day(rows: Sequence[Mapping]) -> dict:
    """Leads surfaced per day (accounts at or over the lead threshold) with the accounts in play."""
    days = [str(r["day"]) for r in rows]
    traces = [
        {"type": "bar", "name": "leads surfaced", "x": days, "y": [r.get("leads_surfaced") for r in rows]},
        {
            "type": "scatter",
            "mode": "lines",
            "name": "accounts in play",
            "x": days,
            "y": [r.get("accounts_in_play") for r in rows],
            "yaxis": "y2",
        },
    ]
    return {
        "data": traces if rows else [],
        "layout": _layout(
            "Leads surfaced per day" if rows else "No scored days yet",
            xaxis={"type": "date"},
            yaxis={"title": {"text": "leads"}, "rangemode": "tozero"},
            yaxis2={"title": {"text": "in play"}, "overlaying": "y", "side": "right", "rangemode": "tozero"},
            legend={"orientation": "h"},
        ),
    }


def score_histogram(bins: Sequence[Mapping], day: object) -> dict:
    """How many accounts scored in each band of 0–1 on `day`."""
    return {
        "data": [
            {
                "type": "bar",
                "name": "accounts",
                "x": [(b["low"] + b["high"]) / 2 for b in bins],
                "y": [b["accounts"] for b in bins],
                "width": [b["high"] - b["low"] for b in bins],
                "hovertemplate": "score %{x:.2f}: %{y} accounts<extra></extra>",
            }
        ]
        if bins
        else [],
        "layout": _layout(
            f"Score distribution on {day}" if bins else "No scores yet",
            xaxis={"range": [0, 1], "tickformat": ".0%", "title": {"text": "score"}},
            yaxis={"title": {"text": "accounts"}},
            bargap=0.05,
        ),
    }


def score_history(rows: Sequence[Mapping]) -> dict:
    """An account's score by day (0–1, left axis) with its rank among the day's accounts (right axis, 1 at the
    top): when it became a lead and how it moved since."""
    days = [str(r["day"]) for r in rows]
    ranks = [r.get("score_rank") for r in rows if r.get("score_rank") is not None]
    traces = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "score",
            "x": days,
            "y": [r.get("score") for r in rows],
            "text": [r.get("n_signals_fired") for r in rows],
            "hovertemplate": "%{x}: score %{y:.1%} (%{text} signals fired)<extra></extra>",
        },
        {
            "type": "scatter",
            "mode": "lines",
            "name": "rank",
            "x": days,
            "y": [r.get("score_rank") for r in rows],
            "yaxis": "y2",
            "line": {"dash": "dot"},
            "hovertemplate": "%{x}: rank %{y}<extra></extra>",
        },
    ]
    return {
        "data": traces if rows else [],
        "layout": _layout(
            "Score by day" if rows else "No scored days",
            xaxis={"type": "date", "tickformat": "%Y-%m-%d", **({"dtick": DAY_MS} if len(days) < 8 else {})},
            yaxis={"title": {"text": "score"}, "range": [0, 1], "tickformat": ".0%"},
            # rank 1 at the top; the axis from the worst rank drawn to 0
            yaxis2={
                "title": {"text": "rank (1 = best)"},
                "overlaying": "y",
                "side": "right",
                "range": [max(ranks, default=1) * 1.05, 0],
            },
            legend={"orientation": "h"},
        ),
    }


def contributions(entries: Sequence[Mapping], names: Sequence[str]) -> dict:
    """What makes up an account's latest score: each signal's contribution to it (bars, largest at the top), named
    in plain language; the hover says when the signal fired and its weight when health lowered it."""
    labels = [html.escape(name) for name in names]
    return {
        "data": [
            {
                "type": "bar",
                "orientation": "h",
                "name": "contribution",
                "x": [e.get("contribution") for e in entries],
                "y": labels,
                "text": [
                    "; ".join([f"fired {str(e.get('fired_at'))[:10]}", *filter(None, [weight_note_for_rep(e)])])
                    for e in entries
                ],
                "hovertemplate": "%{y}: %{x:.3f} (%{text})<extra></extra>",
            }
        ]
        if entries
        else [],
        "layout": _layout(
            "Top contributions to the latest score" if entries else "No signal contributes to the latest score",
            yaxis={"autorange": "reversed", "automargin": True},
            xaxis={"title": {"text": "contribution: log of the backtested lift, halved per half-life since it fired"}},
            margin={"l": 20, "r": 20, "t": 50, "b": 50},
        ),
    }


def variant_rates(rows: list[dict], confidence_level: float) -> dict:
    """An experiment's conversion rate per variant with its confidence interval (markers with error bars, control
    first), from its readout rows (beton.experiment_readouts' columns)."""
    variants = [r["variant"] for r in rows]
    rates = [r["rate"] for r in rows]
    plus = [None if r["rate"] is None or r["rate_ci_high"] is None else r["rate_ci_high"] - r["rate"] for r in rows]
    minus = [None if r["rate"] is None or r["rate_ci_low"] is None else r["rate"] - r["rate_ci_low"] for r in rows]
    level = f"{100 * confidence_level:.0f}%"
    drawn = any(r is not None and r == r for r in rates)  # NaN != NaN: a variant without exposures
    return {
        "data": [
            {
                "type": "bar",
                "name": "conversion rate",
                "x": variants,
                "y": rates,
                "error_y": {"type": "data", "symmetric": False, "array": plus, "arrayminus": minus},
                "hovertemplate": "%{x}: %{y:.2%}<extra></extra>",
            }
        ]
        if drawn
        else [],
        "layout": {
            "title": {
                "text": f"Conversion rate by variant, with its {level} interval"
                if drawn
                else "No exposures yet: nothing to draw"
            },
            "margin": {"l": 60, "r": 70, "t": 50, "b": 50},
            "hovermode": "closest",
            "xaxis": {"type": "category", "title": {"text": "variant"}},
            "yaxis": {"title": {"text": "conversion rate"}, "tickformat": ".1%", "rangemode": "tozero"},
        },
    }
