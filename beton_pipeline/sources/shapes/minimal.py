"""A small startup's export: the least the data contract accepts, written the way such exports look.

`generate_minimal(out_dir, n_accounts, seed)` writes a source directory and `TRUTH.json`:

* Only the required tables: ``events.csv.gz``, ``crm_companies.csv``, ``crm_people.csv``,
  ``billing_customers.csv``, ``billing_subscriptions.csv``, ``billing_invoices.csv``; only their
  required columns (no ``properties`` on events, no ``industry``/``employee_count``, no billing
  ``metadata``).
* Identity by e-mail only: no ``$groups``; a user's e-mail is on its ``$identify`` event
  (``person_properties``) and on no other event. The first user of each account (the billing
  contact) has a company e-mail; a third of the other users use free mail (gmail.com, outlook.com,
  yahoo.com, proton.me) and are known only through ``crm_people``; half of the company-mail users are
  in ``crm_people`` too. The contract's rules resolve an ``$identify`` by its e-mail's domain (or the
  CRM person), and a later event only through ``crm_people`` (the e-mail its ``distinct_id`` carried
  on ``$identify``): the later events of company-mail users in no CRM list resolve to no account.
  ``TRUTH.json`` counts them (``unresolvable_events``); it is a large share of the events.
* Events in gzip'd CSV with ISO-8601 timestamps in each account's local zone offset
  (``2026-03-01T09:15:00+05:30``; offsets from -08:00 to +09:00, half-hour ones included);
  billing timestamps are Unix epoch seconds (as Stripe writes them); CRM timestamps ISO with ``Z``.
* Accounts sign up over ~10 months; then acquisition stops: no account starts in the last
  `LULL_DAYS` + 40 days of the data, so no billing customer is created in the last `LULL_DAYS`
  days or more, while existing accounts keep using the product and paying monthly until the end.
* Company names with commas, double quotes, apostrophes and non-ASCII letters
  (``Müller, Schmidt & Söhne "Nord"``, ``Łódź Dane, sp. z o.o.``).
* A heavy event (``query_run``: dozens to hundreds per account) and eight ordinary product events,
  none with any effect.
* The planted effect: ``alert_configured`` >= `PLANTED_THRESHOLD` times in the first
  `PLANTED_WINDOW_DAYS` days (held by `HOLDER_SHARE` of accounts, odds ratio `PLANTED_ODDS_RATIO`
  on a base rate of about 10 %). Holders configure it 2-4 times in that window; half the
  others exactly once in it, some later (after day 14), so the threshold matters.
* Conversion: the first paid invoice, 15-38 days after the start (after the observation window).
  70 % of accounts start a 14-day trial (customer + trialing subscription at sign-up); the others
  buy directly (customer and subscription created when they pay). Trials that do not convert end
  ``canceled``. Converters pay monthly (some yearly) until the end of the data.

Deterministic: the same arguments give byte-identical files.
"""

from __future__ import annotations

import argparse
import gzip
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

__all__ = ["MinimalSummary", "generate_minimal", "main"]

DAY = 86_400
HOUR = 3_600
OBSERVATION_DAYS = 14
TRIAL_DAYS = 14
SIGNUP_DAYS = 300
LULL_DAYS = 60
CONVERSION_WINDOW_DAYS = 60

PLANTED_EVENT = "alert_configured"
PLANTED_THRESHOLD = 2
PLANTED_WINDOW_DAYS = 14
PLANTED_ODDS_RATIO = 4.0
HOLDER_SHARE = 0.25
BASE_RATE = 0.10

HEAVY_EVENT = "query_run"
ORDINARY_EVENTS = (
    "dashboard_viewed",
    "report_created",
    "chart_edited",
    "filter_applied",
    "export_csv",
    "comment_added",
    "datasource_connected",
    "template_used",
)
FREE_MAIL = ("gmail.com", "outlook.com", "yahoo.com", "proton.me")
OFFSETS_MINUTES = (-480, -300, -180, 0, 60, 120, 330, 540, 345)

_NAME_STEMS = (
    ('Müller, Schmidt & Söhne "{w}"', "mueller-schmidt"),
    ("Łódź Dane, sp. z o.o. ({w})", "lodz-dane"),
    ('Café "{w}", S.L.', "cafe"),
    ("São Paulo Análise {w}, Ltda.", "sao-paulo-analise"),
    ("Ørsted & Dahl {w} ApS", "orsted-dahl"),
    ("O'Brien, Ní Bhriain {w}", "obrien-nibhriain"),
    ('Žalgiris "{w}" UAB', "zalgiris"),
    ("Nguyễn {w} Co., Ltd.", "nguyen"),
    ("Équipe {w}, SAS", "equipe"),
    ("Straße {w} GmbH", "strasse"),
    ("{w} Labs", "labs"),
    ("{w}, Inc.", "inc"),
)
_WORDS = ("Nord", "Lumen", "Kvarts", "Brisa", "Atlas", "Fjord", "Sol", "Vento", "Kite", "Örn", "Żuraw", "Mar")
_FIRST = ("ana", "jonas", "li", "maria", "sam", "noor", "olu", "eva", "ravi", "kai", "zoe", "tomas")
_LAST = ("silva", "kowalski", "nguyen", "garcia", "okafor", "berg", "khan", "rossi", "tanaka", "dubois")


@dataclass(frozen=True)
class MinimalSummary:
    out_dir: Path
    n_accounts: int
    n_events: int
    rows: dict[str, int]
    truth_path: Path


def _iso_utc(seconds: np.ndarray) -> pl.Series:
    return pl.Series(seconds.astype(np.int64) * 1_000_000).cast(pl.Datetime("us")).dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso_with_offset(seconds: np.ndarray, offset_minutes: np.ndarray) -> pl.Series:
    """Local wall-clock time plus its offset, e.g. ``2026-03-01T09:15:00+05:30`` (the same instant)."""
    local = pl.Series((seconds + offset_minutes * 60).astype(np.int64) * 1_000_000).cast(pl.Datetime("us"))
    sign = np.where(offset_minutes < 0, "-", "+")
    magnitude = np.abs(offset_minutes)
    suffix = [f"{s}{m // 60:02d}:{m % 60:02d}" for s, m in zip(sign, magnitude, strict=True)]
    return local.dt.strftime("%Y-%m-%dT%H:%M:%S") + pl.Series(suffix)


def _nullable(values: np.ndarray, present: np.ndarray) -> pl.Series:
    """Integer values where `present`, nulls elsewhere."""
    return pl.Series(values.astype(np.int64)).zip_with(
        pl.Series(present), pl.Series([None] * len(values), dtype=pl.Int64)
    )


def _uuids(rng: np.random.Generator, n: int) -> list[str]:
    words = rng.integers(0, 2**63, size=(n, 2), dtype=np.int64)
    return [str(uuid.UUID(int=(int(a) << 64) | int(b), version=4)) for a, b in words]


def _times_in(rng: np.random.Generator, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return (low + rng.random(low.shape[0]) * np.maximum(high - low, 1)).astype(np.int64)


def generate_minimal(
    out_dir: Path | str, n_accounts: int = 1500, seed: int = 11, end: str = "2026-03-31"
) -> MinimalSummary:
    """Write the minimal export to `out_dir` (replacing its table files) and its truth to TRUTH.json."""
    if n_accounts < 50:
        raise ValueError("n_accounts must be >= 50 (fewer leave discovery nothing to test)")
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    end_s = int(datetime.fromisoformat(end).replace(tzinfo=UTC).timestamp())
    first_start = end_s - (SIGNUP_DAYS + LULL_DAYS + 40) * DAY

    # Accounts --------------------------------------------------------------------------------------
    n = n_accounts
    idx = np.arange(n)
    start = first_start + rng.integers(0, SIGNUP_DAYS * DAY, n)
    offset = np.asarray(OFFSETS_MINUTES)[rng.integers(0, len(OFFSETS_MINUTES), n)]
    stem = rng.integers(0, len(_NAME_STEMS), n)
    word = rng.integers(0, len(_WORDS), n)
    names = [_NAME_STEMS[s][0].format(w=_WORDS[w]) + f" {i + 1}" for i, s, w in zip(idx, stem, word, strict=True)]
    domains = [f"{_NAME_STEMS[s][1]}-{i + 1}.example" for i, s in zip(idx, stem, strict=True)]
    record_ids = [f"cmp_{i:05d}" for i in idx]
    activity = rng.lognormal(0.0, 0.6, n)
    holder = rng.random(n) < HOLDER_SHARE
    base_logit = np.log(BASE_RATE / (1 - BASE_RATE))
    p_convert = 1 / (1 + np.exp(-(base_logit + np.log(PLANTED_ODDS_RATIO) * holder)))
    converts = rng.random(n) < p_convert
    conversion = start + rng.integers(15 * DAY, 38 * DAY, n)
    trial = rng.random(n) < 0.7

    # Users -----------------------------------------------------------------------------------------
    n_users = 1 + rng.binomial(3, 0.4, n)
    u_account = np.repeat(idx, n_users)
    u_rank = np.concatenate([np.arange(k) for k in n_users])
    n_u = u_account.shape[0]
    u_free = (u_rank > 0) & (rng.random(n_u) < 1 / 3)
    u_in_crm = u_free | (rng.random(n_u) < 0.5)
    u_join = np.where(u_rank == 0, start[u_account], start[u_account] + rng.integers(HOUR, 10 * DAY, n_u))
    first = rng.integers(0, len(_FIRST), n_u)
    last = rng.integers(0, len(_LAST), n_u)
    free_domain = rng.integers(0, len(FREE_MAIL), n_u)
    u_email = [
        f"{_FIRST[f]}.{_LAST[la]}{u}@{FREE_MAIL[fd]}" if free else f"{_FIRST[f]}.{_LAST[la]}.{u}@{domains[a]}"
        for u, (a, free, f, la, fd) in enumerate(zip(u_account, u_free, first, last, free_domain, strict=True))
    ]
    u_distinct = [f"{h:016x}" for h in rng.integers(0, 2**63, n_u, dtype=np.int64)]

    # Events ----------------------------------------------------------------------------------------
    window_end = start + OBSERVATION_DAYS * DAY
    # the same intensity for everyone in the observation window; later, converters stay, others fade
    early = rng.poisson(activity[u_account] * 6 * np.maximum((window_end[u_account] - u_join) / (14 * DAY), 0.1))
    late_days = np.where(
        converts[u_account], (end_s - window_end[u_account]) / DAY, np.minimum(rng.exponential(12, n_u), 90)
    )
    late = rng.poisson(activity[u_account] * 0.35 * late_days)
    e_user = np.concatenate([np.repeat(np.arange(n_u), early), np.repeat(np.arange(n_u), late)])
    is_early = np.concatenate([np.ones(early.sum(), bool), np.zeros(late.sum(), bool)])
    e_account = u_account[e_user]
    low = np.where(is_early, u_join[e_user] + 60, window_end[e_account])
    high = np.where(is_early, window_end[e_account], np.minimum(window_end[e_account] + late_days[e_user] * DAY, end_s))
    e_time = _times_in(rng, low, high)
    weights = 1 / np.arange(1, len(ORDINARY_EVENTS) + 1)
    e_name = np.asarray(ORDINARY_EVENTS)[rng.choice(len(ORDINARY_EVENTS), e_time.shape[0], p=weights / weights.sum())]

    # the heavy event: dozens to hundreds per account over its life, no effect
    heavy = rng.poisson(activity[u_account] * 25)
    h_user = np.repeat(np.arange(n_u), heavy)
    h_time = _times_in(rng, u_join[h_user] + 60, np.minimum(window_end[u_account[h_user]] + 30 * DAY, end_s))

    # the planted event: holders 2-4 times in the window (before conversion: conversion is after it);
    # half the others once in the window; a fifth of the others 1-3 times after the window
    first_user = np.searchsorted(u_account, idx)  # users are grouped by account, rank 0 first
    once = ~holder & (rng.random(n) < 0.5)
    later = ~holder & (rng.random(n) < 0.2)
    p_count = np.where(holder, rng.integers(2, 5, n), once.astype(int))
    l_count = np.where(later, rng.integers(1, 4, n), 0)
    p_user = np.concatenate([np.repeat(first_user, p_count), np.repeat(first_user, l_count)])
    p_acc = u_account[p_user]
    p_early = np.concatenate([np.ones(p_count.sum(), bool), np.zeros(l_count.sum(), bool)])
    p_time = _times_in(
        rng,
        np.where(p_early, start[p_acc] + HOUR, window_end[p_acc] + HOUR),
        np.where(p_early, window_end[p_acc] - HOUR, np.minimum(window_end[p_acc] + 40 * DAY, end_s)),
    )

    # $identify: each user's first event, the only one that carries the e-mail
    all_user = np.concatenate([np.arange(n_u), e_user, h_user, p_user])
    all_time = np.concatenate([u_join, e_time, h_time, p_time])
    all_name = np.concatenate(
        [
            np.full(n_u, "$identify"),
            e_name,
            np.full(h_user.shape[0], HEAVY_EVENT),
            np.full(p_user.shape[0], PLANTED_EVENT),
        ]
    )
    person = np.full(all_user.shape[0], None, dtype=object)
    person[:n_u] = [json.dumps({"email": e}) for e in u_email]
    # the data ends at `end`: the most active converter's last event is its as-of
    keep = all_time < end_s
    later_event = np.arange(all_user.shape[0]) >= n_u
    unresolvable = int((keep & later_event & ~u_in_crm[all_user]).sum())
    events = pl.DataFrame(
        {
            "uuid": _uuids(rng, int(keep.sum())),
            "event": all_name[keep],
            "timestamp": _iso_with_offset(all_time[keep], offset[u_account[all_user[keep]]]),
            "distinct_id": np.asarray(u_distinct)[all_user[keep]],
            "person_properties": pl.Series(person[keep], dtype=pl.String),
            "_t": all_time[keep],
        }
    ).sort("_t", "uuid")
    as_of = int(events["_t"].max())

    # CRM -------------------------------------------------------------------------------------------
    crm_created = start - rng.integers(DAY, 60 * DAY, n)
    companies = pl.DataFrame(
        {"record_id": record_ids, "name": names, "domain": domains, "created_at": _iso_utc(crm_created)}
    )
    crm_users = np.flatnonzero(u_in_crm)
    people = pl.DataFrame(
        {
            "record_id": [f"per_{u:06d}" for u in crm_users],
            "email": np.asarray(u_email)[crm_users],
            "company_record_id": np.asarray(record_ids)[u_account[crm_users]],
            "created_at": _iso_utc(np.minimum(u_join[crm_users], crm_created[u_account[crm_users]] + DAY)),
        }
    )

    # Billing ---------------------------------------------------------------------------------------
    converted = converts & (conversion < as_of)
    has_customer = trial | converted
    cust_created = np.where(trial, start + rng.integers(HOUR, 6 * HOUR, n), conversion - 600)
    billing_email = np.asarray(u_email)[first_user]
    customers_idx = np.flatnonzero(has_customer)
    customers = pl.DataFrame(
        {
            "id": [f"cus_{i:06d}" for i in customers_idx],
            "email": billing_email[customers_idx],
            "created": cust_created[customers_idx],
        }
    )
    yearly = rng.random(n) < 0.15
    amount = np.where(yearly, 49_000, np.where(rng.random(n) < 0.5, 4_900, 9_900))
    status = np.where(converted, "active", "canceled")
    subscriptions = pl.DataFrame(
        {
            "id": [f"sub_{i:06d}" for i in customers_idx],
            "customer": [f"cus_{i:06d}" for i in customers_idx],
            "status": status[customers_idx],
            "created": cust_created[customers_idx],
            "trial_end": _nullable(cust_created + TRIAL_DAYS * DAY, trial)[customers_idx],
            "canceled_at": _nullable(cust_created + TRIAL_DAYS * DAY, ~converted)[customers_idx],
            "plan_amount": amount[customers_idx],
            "plan_interval": np.where(yearly, "year", "month")[customers_idx],
            "currency": "usd",
        }
    )
    # invoices: the first paid one at conversion, then one per period until the as-of
    conv_idx = np.flatnonzero(converted)
    period = np.where(yearly, 365 * DAY, 30 * DAY)[conv_idx]
    n_inv = 1 + (as_of - conversion[conv_idx]) // period
    i_acc = np.repeat(conv_idx, n_inv)
    i_k = np.concatenate([np.arange(k) for k in n_inv]) if conv_idx.size else np.zeros(0, np.int64)
    i_paid = conversion[i_acc] + i_k * np.where(yearly, 365 * DAY, 30 * DAY)[i_acc]
    invoices = pl.DataFrame(
        {
            "id": [f"in_{a:06d}_{k:03d}" for a, k in zip(i_acc, i_k, strict=True)],
            "customer": [f"cus_{a:06d}" for a in i_acc],
            "subscription": [f"sub_{a:06d}" for a in i_acc],
            "status": "paid",
            "amount_paid": amount[i_acc],
            "currency": "usd",
            "created": i_paid - 3_600,
            "paid_at": i_paid,
        },
        schema_overrides={"amount_paid": pl.Int64, "created": pl.Int64, "paid_at": pl.Int64},
    )
    newest_customer = int(customers["created"].max())
    lull_days = (as_of - newest_customer) / DAY
    if lull_days < LULL_DAYS:
        raise AssertionError(f"the lull is {lull_days:.1f} days, not >= {LULL_DAYS}")

    # Write -----------------------------------------------------------------------------------------
    tables = {
        "crm_companies": companies,
        "crm_people": people,
        "billing_customers": customers,
        "billing_subscriptions": subscriptions,
        "billing_invoices": invoices,
    }
    for name, frame in tables.items():
        frame.write_csv(out / f"{name}.csv")
    events_out = events.drop("_t")
    with gzip.GzipFile(out / "events.csv.gz", "wb", mtime=0) as gz:
        events_out.write_csv(gz)
    rows = {"events": events_out.height, **{name: frame.height for name, frame in tables.items()}}

    # Truth -----------------------------------------------------------------------------------------
    eligible = start + CONVERSION_WINDOW_DAYS * DAY <= as_of
    truth = {
        "shape": "minimal",
        "seed": seed,
        "rows": rows,
        "accounts": n,
        "eligible_accounts": int(eligible.sum()),
        "conversions": int(converted.sum()),
        "conversions_eligible": int((converted & eligible).sum()),
        "as_of": datetime.fromtimestamp(as_of, UTC).isoformat(),
        "days_since_newest_billing_customer": round(lull_days, 2),
        "users": n_u,
        "free_mail_users": int(u_free.sum()),
        "users_in_crm_people": int(u_in_crm.sum()),
        "unresolvable_events": unresolvable,
        "unresolvable_events_are": "events after $identify of company-mail users in no crm_people row",
        "planted": [
            {
                "event": PLANTED_EVENT,
                "threshold": PLANTED_THRESHOLD,
                "window_days": PLANTED_WINDOW_DAYS,
                "odds_ratio": PLANTED_ODDS_RATIO,
                "holders": int(holder.sum()),
            }
        ],
        "no_effect_events": [HEAVY_EVENT, *ORDINARY_EVENTS],
    }
    truth_path = out / "TRUTH.json"
    truth_path.write_text(json.dumps(truth, indent=2, ensure_ascii=False) + "\n")
    return MinimalSummary(out, n, rows["events"], rows, truth_path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the minimal export shape (see the module docstring).")
    parser.add_argument("--out", required=True, type=Path, help="the source directory to write")
    parser.add_argument("--accounts", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    summary = generate_minimal(args.out, args.accounts, args.seed)
    print(f"wrote {summary.n_events:,} events for {summary.n_accounts:,} accounts to {summary.out_dir}")
    print(f"planted truth (never read by the pipeline): {summary.truth_path}")


if __name__ == "__main__":
    main()
