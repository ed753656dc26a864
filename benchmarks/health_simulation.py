"""Signal health rules side by side on simulated signals: false alarms on stable signals and detection delay
after a drift, for the `bonferroni` rule (rolling windows, α / looks_per_year per look), the `sequential`
rule (Shiryaev–Roberts on each day's closed outcomes) and the `risk_set` rule (Shiryaev–Roberts on each
day's conversions among the accounts at risk, by age band), all on the same simulated accounts
(`core.risk_sets.simulate_rules`: account-level conversion times, a signal that fires early and predicts
early conversions, so hazards are not proportional).

    .venv/bin/python -m benchmarks.health_simulation                 # the table of the README (8 minutes on 2 busy cores)
    .venv/bin/python -m benchmarks.health_simulation --signals 200   # a quick look
    .venv/bin/python -m benchmarks.health_simulation --demo data      # and the demo's drifting behaviour

`--demo DIR` reads a demo run's warehouse (`DIR/warehouse.duckdb`, after `make run`) and its truth
(`DIR/demo/TRUTH.json`): on a copy, it enables the planted drifting behaviour (discovery does not enable
it) and prints the day each rule first turns it `degrading`, against the day its first post-drift outcomes
closed, then what the health (by the configured rule) does to the scores of the accounts it fired for.

Every scenario draws the same accounts for every rule (same seed). Detection delay counts the days from the
first post-drift outcomes closing to the first day the signal is `degrading` (or `broken`) since the first
post-drift accounts started; it is negative when the risk_set rule flags the signal before any post-drift
outcome has closed. A signal not flagged within the simulated looks counts as never (the percentile then
reads "never"). A false alarm is a stable signal flagged on any of the 365 daily looks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

from beton_pipeline.core.formatting import markdown_table
from beton_pipeline.core.monitoring import HEALTH_METHODS, HealthConfig
from beton_pipeline.core.risk_sets import SimulatedRules, simulate_rules
from beton_pipeline.settings import load_settings
from beton_pipeline.store.daily import data_days
from beton_pipeline.store.monitoring import compute_signal_health, refresh_signal_health
from beton_pipeline.store.scoring import compute_account_scores
from beton_pipeline.store.signals import set_override

DRIFTS = (("vanishes (→ 1)", lambda lift: 1.0), ("halves (→ lift/2)", lambda lift: lift / 2))
"""The drifts simulated: a name and the lift after the drift as a function of the lift before."""


RULES = {name: HealthConfig(method=name) for name in HEALTH_METHODS}
"""The rules compared, at the default settings (α = 0.05 per year of 365 looks)."""


@dataclass(frozen=True)
class Scenario:
    """The simulated world: daily volume, the signal's prevalence, base rate and lift, the reference size."""

    accounts_per_day: float
    prevalence: float = 0.25
    base_rate: float = 0.08
    lift: float = 2.5
    reference_accounts: int = 4000
    window_days: int = 90
    conversion_window_days: int = 60
    growth: float = 1.0
    """The daily volume is multiplied by this over the simulated days (the risk sets' age mix shifts)."""


def _kwargs(scenario: Scenario) -> dict:
    return dataclasses.asdict(scenario)


def false_alarms(scenario: Scenario, n_signals: int, seed: int, rules: dict = RULES) -> SimulatedRules:
    """Stable signals watched on a year of daily looks by every rule (`SimulatedRules.false_alarm_rate`)."""
    return simulate_rules(rules, n_signals=n_signals, days=365, seed=seed, **_kwargs(scenario))


def delays(
    scenario: Scenario, lift_after: float, n_signals: int, seed: int, drift_day: int, days: int, rules: dict = RULES
) -> dict[str, np.ndarray]:
    """Per rule and simulated signal, days from the first post-drift closures to the first alarm (inf = never)."""
    sim = simulate_rules(
        rules,
        n_signals=n_signals,
        days=days,
        seed=seed,
        lift_after=lift_after,
        drift_day=drift_day,
        **_kwargs(scenario),
    )
    return {name: sim.detection_delays(name) for name in rules}


def _days(values: np.ndarray, q: float) -> str:
    """The q-th percentile of delays as a sample value (no interpolation, so 'never' stays never)."""
    v = float(np.percentile(values, q, method="inverted_cdf")) if values.size else float("nan")
    return "never" if not np.isfinite(v) else f"{v:.0f}"


def _rate(rate: float, se: float) -> str:
    return f"{100 * rate:.2f} % ± {100 * se:.2f}"


def run(
    volumes: tuple[float, ...],
    n_signals: int,
    n_drifting: int,
    drift_day: int,
    days: int,
    seed: int,
    growth: float = 1.0,
    reference_accounts: int = 4000,
) -> tuple[str, str]:
    """The two markdown tables: false alarms per year of daily looks (also with the volume growing by
    `growth` when it is not 1), and detection delays, per rule."""
    alarm_rows, delay_rows = [], []
    for i, volume in enumerate(volumes):
        scenario = Scenario(accounts_per_day=volume, reference_accounts=reference_accounts)
        conversions = volume * (scenario.prevalence * scenario.base_rate * scenario.lift)
        conversions += volume * (1 - scenario.prevalence) * scenario.base_rate
        label = f"{volume:g} ({conversions:.1f})"
        fa = false_alarms(scenario, n_signals, seed + i)
        alarm_rows.append([label, *(_rate(fa.false_alarm_rate(name), fa.false_alarm_se(name)) for name in RULES)])
        if growth != 1:
            grown = false_alarms(dataclasses.replace(scenario, growth=growth), n_signals, seed + 50 + i)
            alarm_rows.append(
                [
                    f"{label}, volume ×{growth:g} over the year",
                    *(_rate(grown.false_alarm_rate(name), grown.false_alarm_se(name)) for name in RULES),
                ]
            )
        for j, (drift, after) in enumerate(DRIFTS):
            found = delays(scenario, after(scenario.lift), n_drifting, seed + 100 + 10 * i + j, drift_day, days)
            delay_rows.append([label, drift, *(f"{_days(found[n], 50)} / {_days(found[n], 90)}" for n in RULES)])
    alarm_table = markdown_table(["accounts/day (conversions/day)", *RULES], alarm_rows, empty="No scenario.")
    delay_table = markdown_table(
        ["accounts/day (conversions/day)", "the lift", *RULES], delay_rows, empty="No scenario."
    )
    return alarm_table, delay_table


def demo_drift(data_dir: Path) -> str:
    """A markdown table: for each rule, the day the demo's drifting behaviour first turns `degrading` (or
    `broken`), in days after the drift and after its first post-drift outcomes closed, and the days other
    enabled signals were flagged (all stable in the demo)."""
    truth = json.loads((data_dir / "demo" / "TRUTH.json").read_text())
    drift = truth["drifting"][0]
    key = f"event:{drift['event']}:first_{drift['window_days']}d:>={drift['threshold']}"
    drift_at = date.fromisoformat(drift["drift_at"])
    settings = load_settings()
    first_closed = drift_at + timedelta(days=settings.windows.conversion_window_days)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "warehouse.duckdb"
        shutil.copy(data_dir / "warehouse.duckdb", copy)
        with duckdb.connect(str(copy)) as con:
            signal_id = con.sql("select signal_id from beton.signals where candidate_key = ?", params=[key]).fetchall()
            signal_id = signal_id[0][0]
            set_override(con, signal_id, True, "health simulation", "watch the drifting behaviour")
            lo, hi = data_days(con)
            days = [lo + timedelta(days=i) for i in range((hi - lo).days + 1)]
            scores_table = demo_scores(con, settings, signal_id, days)
            for method in HEALTH_METHODS:
                config = dataclasses.replace(settings.health_config(), method=method)
                health = compute_signal_health(con, settings, days, config)
                flagged = health.filter(pl.col("health").is_in(["degrading", "broken"]))
                mine = flagged.filter(pl.col("signal_id") == signal_id)
                first = mine["day"].min()
                others = flagged.filter(pl.col("signal_id") != signal_id)
                stable = health["signal_id"].n_unique() - 1
                rows.append(
                    [
                        method,
                        "never" if first is None else first.isoformat(),
                        "–" if first is None else (first - drift_at).days,
                        "–" if first is None else (first - first_closed).days,
                        others.height,
                        f"{others['signal_id'].n_unique()} of {stable}",
                    ]
                )
    header = (
        f"Demo ({data_dir}): `{key}` ({signal_id}), effect gone for accounts starting from {drift_at}; "
        f"their outcomes start closing {first_closed}; health over {days[0]} … {days[-1]}.\n\n"
    )
    return (
        header
        + markdown_table(
            [
                "rule",
                "first degrading",
                "days after the drift",
                "days after first post-drift closures",
                "other signal-days flagged",
                "other signals flagged",
            ],
            rows,
        )
        + ("\n\n" + scores_table)
    )


def demo_scores(con: duckdb.DuckDBPyConnection, settings, signal_id: str, days: list[date]) -> str:
    """What the health (by the settings' rule) does to the scores of the accounts in play on which `signal_id`
    had fired: its weight factor on those account-days, and their score and leads surfaced without and with
    health weighting (the same days, signals and calibration; only the health table differs)."""
    con.execute("drop table if exists beton.signal_health")
    unweighted = compute_account_scores(con, settings, days).scores
    refresh_signal_health(con, settings, [d.isoformat() for d in days])
    weighted = compute_account_scores(con, settings, days).scores
    fired = (
        weighted.select("day", "account_id", "signals_fired")
        .explode("signals_fired")
        .unnest("signals_fired")
        .select("day", "account_id", "signal_id", "weight_factor", "weight_note")
        .filter(pl.col("signal_id") == signal_id)
        .join(
            unweighted.select("day", "account_id", pl.col("score").alias("score_before")),
            on=["day", "account_id"],
        )
        .join(weighted.select("day", "account_id", "score"), on=["day", "account_id"])
    )
    lead = settings.scoring.lead_threshold
    rows = []
    for factor, part in sorted(fired.group_by("weight_factor"), key=lambda kv: -kv[0][0]):
        rows.append(
            [
                f"{factor[0]:g}",
                part.sort("day")["weight_note"].drop_nulls().first() or "full weight",
                f"{part['day'].min()} … {part['day'].max()}",
                part.height,
                f"{part['score_before'].mean():.3f} → {part['score'].mean():.3f}",
                f"{(part['score_before'] >= lead).sum()} → {(part['score'] >= lead).sum()}",
            ]
        )
    header = (
        f"Scores by the `{settings.monitoring.method}` rule's health (`scoring.degrading_weight` "
        f"{settings.scoring.degrading_weight}): account-days in play on which `{signal_id}` had fired, by its "
        "weight factor that day.\n\n"
    )
    return header + markdown_table(
        [
            "factor",
            "why (its first such day)",
            "days",
            "account-days",
            "mean score without → with health",
            f"leads (score ≥ {lead}) without → with",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> None:
    """Print the tables (markdown) with the settings they were measured at."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", type=float, nargs="+", default=[10.0, 20.0, 50.0], help="accounts a day")
    parser.add_argument("--signals", type=int, default=1000, help="stable signals per volume (false alarms)")
    parser.add_argument("--drifting", type=int, default=200, help="drifting signals per volume and drift")
    parser.add_argument("--drift-day", type=int, default=120, help="look on which post-drift outcomes start closing")
    parser.add_argument("--days", type=int, default=365, help="daily looks simulated in the drift scenarios")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--reference-accounts", type=int, default=4000, help="accounts the simulated reference is estimated from"
    )
    parser.add_argument(
        "--growth", type=float, default=2.0, help="also false alarms with the volume growing by this factor"
    )
    parser.add_argument("--demo", type=Path, help="also check a demo run's drifting behaviour (e.g. data)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    alarm_table, delay_table = run(
        tuple(args.volumes),
        args.signals,
        args.drifting,
        args.drift_day,
        args.days,
        args.seed,
        args.growth,
        args.reference_accounts,
    )
    cfg, scenario = HealthConfig(), Scenario(accounts_per_day=0, reference_accounts=args.reference_accounts)
    print(
        f"Simulated accounts: signal prevalence {scenario.prevalence}, fired on a day uniform in the first 14; "
        f"base rate {scenario.base_rate} (conversion day geometric, mean ≈ 9, within 30), lift {scenario.lift} "
        f"(the extra conversions a few days after the signal fired: hazards not proportional); "
        f"{scenario.conversion_window_days}-day outcome windows; reference from {scenario.reference_accounts:,} "
        f"earlier accounts; {scenario.window_days}-day rolling windows; α = {cfg.alpha} per year of "
        f"{cfg.looks_per_year} daily looks, min_lift {cfg.min_lift}.\n"
    )
    print(f"**False alarms**: stable signals flagged on any of 365 daily looks ({args.signals:,} per volume; ± 1 SE)\n")
    print(alarm_table)
    print(
        f"\n**Detection delay**: median / 90th percentile days from the first post-drift outcomes closing to "
        f"`degrading` ({args.drifting:,} signals per row; drift on look {args.drift_day} of {args.days}; "
        f"'never' = not flagged within the {args.days - args.drift_day} looks after it)\n"
    )
    print(delay_table)
    if args.demo is not None:
        print()
        print(demo_drift(args.demo))
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
