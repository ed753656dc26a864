"""A deterministic, vectorised generator of a realistic B2B SaaS demo *source directory*.

`generate_demo(out_dir, n_accounts, seed, ...)` writes the same files a customer would drop into a
source directory (PostHog events, Attio-like CRM, Stripe-like billing, intent signals), in the shape of
the data contract, plus `TRUTH.json`: the signals that were planted, which the pipeline never reads
and which the tests and the demo use to check that discovery finds them.

The world
---------
* Accounts sign up (first product event = start) uniformly over ``[start_date, start_date + months)``,
  on weekdays and in business hours (local time zone of the account) mostly. The data ends at
  ``start_date + months``: no event, invoice or signal is later than that.
* Every account has a unique domain (``nimbusforge.io``; ``nimbusforge2.io`` once the word
  combinations run out, beyond ~38k accounts), 1-10 users (skewed), an activity level (lognormal, mean 1,
  log-SD 0.8; z below is its standardised log), an industry (Fintech 15 % on average, more often among
  active accounts) and an employee count (lognormal, 5-5000).
* ~70 % are CRM companies (``crm_companies``, ``record_id = rec_<16 hex>``, created mostly weeks
  *before* the first product event). The rest are product sign-ups sales has not met: no CRM row, so
  no industry and no employee count anywhere.
* Users: ``distinct_id = u_<16 hex>``, e-mail ``first.last@<domain>``; ~10 % use free mail
  (``first.last<digits>@gmail.com`` / outlook.com / yahoo.com, unique). Every user's first event is
  ``$identify`` with ``person_properties = {"email", "name"}`` and ``properties.$groups.company``.
  Free-mail users of CRM companies are always in ``crm_people``; half the company-mail users too.
* Identity on the other events (the pipeline resolves $groups, else the e-mail domain of
  person_properties.email, else crm_people by the e-mail the distinct_id carried earlier):
  ~80 % carry ``$groups.company`` (the domain, or for CRM companies the CRM ``record_id`` on ~20 % of
  those events), ~12 % carry only ``person_properties.email`` at the company domain, ~5 % carry neither
  (free-mail users of CRM companies, resolvable through their earlier ``$identify`` + crm_people),
  ~3 % are anonymous marketing-site visitors (``$pageview`` of ``https://beton-demo.io/...``,
  uuid-like distinct_id, never identified) that resolve to no account.
* Event volume: constant intensity during the first 14 days (identical for converters and
  non-converters), then steady for (latent) converters and exponentially decaying for the others;
  weekends ~35 % of weekday volume. Event mix: ``$pageview`` (``$current_url`` =
  ``https://app.beton-demo.io/<path>``, ~10 % with a query string such as ``?ref=nav``),
  ``$feature_flag_called`` (``new-onboarding``: control/test, ``ai-assistant``:
  control/variant-a/variant-b, fixed per user), 8 neutral product events, 30 noise events with
  Zipf-like frequencies and the activity proxy ``dark_mode_toggled`` (~1 in the first 14 days at activity
  1). All these counts are Poisson in activity: they are pure activity (TRUTH.json ``activity_events``).
* Conversion (latent) is a logistic model of activity and the planted behaviours (base rate ~8 %): active
  accounts do more of everything *and* convert more, as in real product data. 85 % pay
  at trial end (14 days after the billing customer is created + a few hours..days, so 14-40 days after
  start), 15 % upgrade during the trial (day 3-13). Conversion time = ``paid_at`` of the first invoice
  with ``amount_paid > 0``. A latent converter whose payment would fall after the data end is not a
  converter in the data (right-censored: trialing, or past_due with an open invoice).
* Billing: 85 % of accounts start a trial, independently of everything planted (so having a
  subscription does not predict conversion); converters who skipped it buy directly, their customer
  and subscription created at the moment they pay. Customer e-mail = the
  first user's; ``metadata = {"company_domain": ...}`` for ~85 %, ``{}`` otherwise (then the e-mail
  is at the company domain). Trials get a $0 paid invoice at start (not a conversion). Non-converters
  end ``canceled`` (or ``incomplete``, with no trial and an open $0 invoice); converters are
  ``active`` (some ``past_due``/``unpaid``) with the paid conversion invoice and monthly renewals.
* CRM deals: ~20 % of CRM converters get a deal created after the payment and ``won`` a few days
  after it (value = annual contract value in dollars); ~12 % of CRM companies, independently of
  conversion, have an ``open``/``lost`` deal. Stage changes qualified → demo → proposal →
  negotiation → won/lost, some with an AE reason.
* Intent: random signals of the five types for ~40 % of domains (plus unknown prospect domains), and
  the planted funding rounds.

The planted truth (odds ratios on the conversion logit, conditional on activity)
--------------------------------------------------------------------------------
``logit P(convert) = intercept + log(2.2)·z + Σ log(OR_b)·[holds b]``: activity has an odds ratio of 2.2
per SD of log activity, and every planted odds ratio below is the behaviour's effect *given* activity.
The intercept is solved (by enumeration over z and the behaviours) for a latent base rate of 8 %.
Behaviours are drawn independently of each other *given* activity: account i holds b with probability
``expit(alpha_b + log(AOR_b)·z_i)``, alpha_b solved so that b's prevalence is the stated share, AOR_b
the odds ratio of holding it per SD of log activity. With AOR > 1 active accounts hold b more often,
so b's marginal lift (what a test that ignores activity measures; TRUTH.json
``marginal_lift_expected``) is larger than its effect beyond activity. Holders do the qualifying
events strictly before their conversion time (at least 2 s before) and inside the window from start;
non-holders do the event fewer times than the threshold in the window (and/or later). Every account
has a would-be conversion time (drawn whether or not it converts) and places these events before it,
so how early in the window they happen does not depend on conversion.

1. ``invited_teammate`` >= 3 in the first 14 days (25 %, OR 4, AOR 1.8; marginal lift ~4.3)
2. ``api_key_created`` >= 1 in the first 7 days (30 %, OR 2.5, AOR 1.8, ~3.1; non-holders only after day 10)
3. ``dashboard_shared`` >= 2 in the first 14 days (20 %, OR 2.2, AOR 1.8, ~2.8)
4. ``$pageview`` with ``$current_url`` path ``/settings/integrations`` >= 1 in the first 14 days
   (20 %, OR 2.5, AOR 1.8, ~3.0; nobody else visits it in the first 14 days)
5. CRM ``industry == "Fintech"`` (OR 2.2, AOR 1.3 on the industry draw, ~2.1; CRM companies only)
6. a ``funding_round`` intent signal in the 90 days before start (12 %, OR 2.5, AOR 1.3, ~2.3; no other
   account has a funding round between 90 days before and 15 days after its start)
7. beyond activity: ``sso_configured`` >= 1 in the first 14 days (20 %, OR 2.5, AOR 0.6: set up by
   admins preparing a rollout, who use the product less than average). Its marginal lift is ~1.2, below
   ``min_lift``: only an activity-adjusted test finds it (TRUTH.json ``beyond_activity: true``).
8. drift: ``report_exported`` >= 2 in the first 14 days (25 %, independent of activity, so its effect
   vanishes marginally too): OR 3.5 for accounts starting before the middle of the range (``drift_at``),
   no effect after.
9. leak: ``checkout_completed`` fires for every converter at exactly its conversion second, never
   otherwise.
10. activity proxies (TRUTH.json ``proxies``): ``dark_mode_toggled`` and page views of ``/home``, like
    every other activity event (noise and neutral events, other paths, flags), have no effect beyond
    activity but a large marginal lift (active accounts convert more): discovery must not enable them.
    Employee count has no effect at all.

Bad rows (exact counts in TRUTH.json): events ~0.2 % exact duplicates, ~0.1 % rows reusing an earlier
uuid with different content (another noise event a little later), ~0.05 % null timestamps, ~0.05 %
truncated ``properties`` JSON; billing_invoices: a few negative ``amount_paid`` rows.

Everything is generated per chunk of ``CHUNK_ACCOUNTS`` accounts from generators seeded with
``(seed, chunk, stream)``, so the output depends only on the arguments, memory stays bounded and one
``events/part-NNNN.parquet`` is written per chunk.
"""

from __future__ import annotations

import calendar
import gzip
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from beton_pipeline.sources.demo_config import GENERATOR as DEMO_GENERATOR
from beton_pipeline.sources.demo_config import TRUTH_FILE as DEMO_TRUTH_FILE

__all__ = ["DemoSummary", "generate_demo", "CHUNK_ACCOUNTS"]

CHUNK_ACCOUNTS = 10_000
"""Accounts per generation chunk (and per events part file)."""

DAY = 86_400
HOUR = 3_600
OBSERVATION_DAYS = 14
TRIAL_DAYS = 14

# --------------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------------

_PREFIXES = [
    "acme",
    "nimbus",
    "quanta",
    "vertex",
    "lumen",
    "orbit",
    "atlas",
    "nova",
    "pixel",
    "cobalt",
    "zenith",
    "ember",
    "aurora",
    "vector",
    "summit",
    "harbor",
    "cedar",
    "falcon",
    "granite",
    "helix",
    "indigo",
    "juniper",
    "kestrel",
    "lattice",
    "meridian",
    "nebula",
    "onyx",
    "prism",
    "quartz",
    "radiant",
    "sierra",
    "tandem",
    "umbra",
    "vivid",
    "willow",
    "xenon",
    "yonder",
    "zephyr",
    "amber",
    "beacon",
    "cinder",
    "delta",
    "echo",
    "fathom",
    "glacier",
    "horizon",
    "jade",
    "kinetic",
    "lunar",
    "magnet",
    "north",
    "oak",
    "pulse",
    "quill",
    "river",
    "solar",
    "tidal",
    "unity",
    "velvet",
    "wren",
    "apex",
    "bright",
    "clear",
    "drift",
    "epic",
    "flint",
    "grove",
    "hollow",
    "iris",
    "keystone",
    "lark",
    "maple",
    "noble",
    "opal",
    "pine",
    "rapid",
    "sage",
    "terra",
]
_ROOTS = [
    "labs",
    "works",
    "forge",
    "stack",
    "hub",
    "base",
    "flow",
    "grid",
    "sync",
    "loop",
    "cloud",
    "data",
    "metrics",
    "ops",
    "logic",
    "path",
    "point",
    "scale",
    "shift",
    "signal",
    "soft",
    "source",
    "space",
    "sphere",
    "systems",
    "tech",
    "ware",
    "wave",
    "wise",
    "yard",
    "bridge",
    "cast",
    "core",
    "craft",
    "desk",
    "dock",
    "field",
    "frame",
    "gate",
    "glow",
    "kit",
    "lane",
    "leaf",
    "line",
    "link",
    "mind",
    "mint",
    "nest",
    "node",
    "pad",
    "peak",
    "pilot",
    "port",
    "quest",
    "rail",
    "ridge",
    "root",
    "route",
    "sail",
    "scope",
    "seed",
    "sense",
    "spark",
    "spring",
    "stream",
    "street",
    "studio",
    "tide",
    "track",
    "trail",
    "tree",
    "vault",
    "view",
    "vista",
    "volt",
    "ward",
    "well",
    "wing",
    "yield",
    "zone",
]
_TLDS = ("io", "com", "ai", "co", "app", "dev")
_N_NAMES = len(_PREFIXES) * len(_ROOTS) * len(_TLDS)
_NAME_STEP = 7919  # prime, coprime with _N_NAMES: g -> (g * step) % n is a permutation

_FIRST = [
    "james",
    "mary",
    "john",
    "patricia",
    "robert",
    "jennifer",
    "michael",
    "linda",
    "william",
    "elizabeth",
    "david",
    "barbara",
    "richard",
    "susan",
    "joseph",
    "jessica",
    "thomas",
    "sarah",
    "charles",
    "karen",
    "daniel",
    "nancy",
    "matthew",
    "lisa",
    "anthony",
    "betty",
    "mark",
    "sandra",
    "steven",
    "ashley",
    "paul",
    "emily",
    "andrew",
    "donna",
    "joshua",
    "michelle",
    "kevin",
    "carol",
    "brian",
    "amanda",
    "george",
    "melissa",
    "timothy",
    "deborah",
    "ryan",
    "stephanie",
    "jacob",
    "rebecca",
    "gary",
    "sharon",
    "nicholas",
    "laura",
    "eric",
    "cynthia",
    "jonathan",
    "amy",
    "priya",
    "wei",
]
_LAST = [
    "smith",
    "johnson",
    "williams",
    "brown",
    "jones",
    "garcia",
    "miller",
    "davis",
    "rodriguez",
    "martinez",
    "hernandez",
    "lopez",
    "gonzalez",
    "wilson",
    "anderson",
    "thomas",
    "taylor",
    "moore",
    "jackson",
    "martin",
    "lee",
    "perez",
    "thompson",
    "white",
    "harris",
    "sanchez",
    "clark",
    "ramirez",
    "lewis",
    "robinson",
    "walker",
    "young",
    "allen",
    "king",
    "wright",
    "scott",
    "torres",
    "nguyen",
    "hill",
    "flores",
    "green",
    "adams",
    "nelson",
    "baker",
    "hall",
    "rivera",
    "campbell",
    "mitchell",
    "carter",
    "roberts",
    "chen",
    "patel",
    "kim",
    "schmidt",
    "muller",
    "rossi",
    "dubois",
    "tanaka",
    "okafor",
]
_NAME_COMBOS = len(_FIRST) * len(_LAST)
_USER_STEP = 1237  # coprime with _NAME_COMBOS: distinct names within an account

_FREE_MAIL = ("gmail.com", "outlook.com", "yahoo.com")
_FREE_MAIL_P = (0.80, 0.12, 0.08)

INDUSTRIES = ("Fintech", "Software", "Healthcare", "Retail", "Manufacturing", "Education", "Media", "Logistics")
_INDUSTRY_P = (0.15, 0.25, 0.12, 0.12, 0.10, 0.09, 0.09, 0.08)

_TZ_HOURS = np.array([-8.0, -7.0, -6.0, -5.0, 0.0, 1.0, 2.0, 5.5, 8.0, 10.0])
_TZ_P = np.array([0.14, 0.05, 0.08, 0.18, 0.12, 0.18, 0.08, 0.07, 0.06, 0.04])

_BROWSERS = ("Chrome", "Safari", "Firefox", "Microsoft Edge")
_BROWSER_P = (0.62, 0.20, 0.10, 0.08)
_OSES = ("Mac OS X", "Windows", "Linux")
_OS_P = (0.50, 0.42, 0.08)

# Weekday (Mon..Sun) and local hour-of-day acceptance weights (max 1).
_WD_W = np.array([1.0, 1.0, 1.0, 1.0, 0.95, 0.35, 0.35])
_HOUR_W = np.array(
    [
        0.03,
        0.02,
        0.02,
        0.02,
        0.03,
        0.05,
        0.12,
        0.30,
        0.65,
        0.95,
        1.0,
        1.0,
        0.85,
        0.95,
        1.0,
        1.0,
        0.90,
        0.70,
        0.45,
        0.30,
        0.22,
        0.15,
        0.09,
        0.05,
    ]
)

APP_URL = "https://app.beton-demo.io"
SITE_URL = "https://beton-demo.io"
INTEGRATIONS_PATH = "/settings/integrations"
_PATHS = (
    "/home",
    "/dashboards",
    "/reports",
    "/projects",
    "/queries",
    "/docs",
    "/settings/profile",
    "/pricing",
    "/settings/billing",
    "/settings/team",
    "/notebooks",
    "/alerts",
    INTEGRATIONS_PATH,
)
_PATH_P = np.array([0.22, 0.20, 0.14, 0.10, 0.08, 0.07, 0.05, 0.04, 0.03, 0.04, 0.02, 0.01, 0.0])
_PATH_INTEGRATIONS = len(_PATHS) - 1
_QUERIES = ("", "?ref=nav", "?tab=overview")
_QUERY_P = (0.90, 0.05, 0.05)
_SITE_PATHS = ("/", "/pricing", "/blog/signal-discovery", "/docs", "/customers", "/about")
_SITE_P = (0.35, 0.25, 0.12, 0.12, 0.09, 0.07)

FLAGS = {"new-onboarding": ("control", "test"), "ai-assistant": ("control", "variant-a", "variant-b")}

NEUTRAL_EVENTS = (
    "dashboard_viewed",
    "query_run",
    "search_performed",
    "chart_created",
    "project_created",
    "file_uploaded",
    "comment_added",
    "settings_updated",
)
_NEUTRAL_P = np.array([0.25, 0.22, 0.14, 0.10, 0.06, 0.08, 0.09, 0.06])

NOISE_EVENTS = (
    "tooltip_opened",
    "notification_dismissed",
    "sidebar_collapsed",
    "filter_applied",
    "modal_closed",
    "help_center_visited",
    "keyboard_shortcut_used",
    "table_sorted",
    "date_range_changed",
    "theme_changed",
    "column_resized",
    "copy_link_clicked",
    "onboarding_checklist_viewed",
    "changelog_viewed",
    "bookmark_added",
    "widget_moved",
    "emoji_reacted",
    "tour_skipped",
    "zoom_changed",
    "template_previewed",
    "error_banner_shown",
    "session_refreshed",
    "feedback_submitted",
    "language_changed",
    "avatar_uploaded",
    "timezone_changed",
    "print_clicked",
    "panel_pinned",
    "password_changed",
    "keyboard_layout_changed",
)
_NOISE_P = 1.0 / np.arange(1, len(NOISE_EVENTS) + 1) ** 1.15

PLANTED_EVENTS = ("invited_teammate", "api_key_created", "dashboard_shared", "report_exported", "sso_configured")
LEAK_EVENT = "checkout_completed"
PROXY_EVENT = "dark_mode_toggled"
"""The planted activity proxy: a settings toggle done in proportion to activity and to nothing else."""

# Event-name codes: one table for every event name written.
EVENT_NAMES = (
    ("$identify", "$pageview", "$feature_flag_called")
    + NEUTRAL_EVENTS
    + PLANTED_EVENTS
    + (LEAK_EVENT, PROXY_EVENT)
    + NOISE_EVENTS
)
_EV = {name: i for i, name in enumerate(EVENT_NAMES)}
_EV_NEUTRAL0 = _EV[NEUTRAL_EVENTS[0]]
_EV_NOISE0 = _EV[NOISE_EVENTS[0]]

# Base (activity-driven) event mix: pageview, flag, neutral, noise, the proxy. The proxy's share makes it
# about 1 toggle in the first 14 days at activity 1 (Poisson(activity) there): ~half the accounts do it.
_PROXY_SHARE = 1.0 / 46.2
_BASE_KIND_P = np.array([0.36, 0.05, 0.37, 0.22, 0.0]) * (1.0 - _PROXY_SHARE) + np.array([0, 0, 0, 0, _PROXY_SHARE])

# Event volume: events/day in the first 14 days, events/day after, decay time (days) of non-converters.
_RATE_ONBOARDING = 3.3
_RATE_LATER = 1.1
_DECAY_DAYS = 20.0

PLANS = {4900: "starter", 19900: "growth", 49900: "scale"}
_PLAN_AMOUNTS = np.array(list(PLANS))
_PLAN_P = (0.50, 0.35, 0.15)

_AE_OWNERS = ("Maya Chen", "Luis Ortega", "Priya Raman", "Tom Becker", "Aisha Bello", "Jonas Weber")
DEAL_STAGES = ("qualified", "demo", "proposal", "negotiation")
_REASONS = {
    "qualified": ("Inbound demo request", "Came in through a product sign-up", "Referred by an existing customer"),
    "demo": (
        "Demo went well, champion identified",
        "Needs SSO before a wider rollout",
        "Asked for a second demo with the data team",
    ),
    "proposal": ("Sent annual proposal", "Asked for a volume discount", "Proposal shared with finance"),
    "negotiation": (
        "Legal review in progress",
        "Procurement asked for net-60 terms",
        "Security questionnaire returned",
    ),
    "won": ("Signed annual contract", "Closed after the trial upgrade", "Champion pushed it through procurement"),
    "lost": (
        "Went with a competitor",
        "No budget this quarter",
        "Champion left the company",
        "Built it in-house instead",
    ),
}

SIGNAL_TYPES = ("funding_round", "executive_change", "job_posting", "technology_adoption", "expansion")

# --------------------------------------------------------------------------------------------------
# Planted truth
# --------------------------------------------------------------------------------------------------

ACTIVITY_LOG_SD = 0.8
"""Standard deviation of an account's log activity (activity is lognormal with mean 1)."""
ACTIVITY_CONVERSION_OR = 2.2
"""Odds ratio of conversion per SD of log activity, with the planted behaviours held fixed."""

# Every odds ratio below is *conditional on activity* (a coefficient of the conversion logit, next to
# the activity term); `prevalence` is the share of all accounts holding the behaviour and
# `activity_odds_ratio` the odds ratio of holding it per SD of log activity (> 1: active accounts hold it
# more often, so its marginal lift exceeds its effect beyond activity; < 1: the reverse).
PLANTED = (
    {
        "name": "invited_teammate",
        "kind": "event_count",
        "event": "invited_teammate",
        "threshold": 3,
        "window_days": 14,
        "odds_ratio": 4.0,
        "prevalence": 0.25,
        "activity_odds_ratio": 1.8,
        "beyond_activity": False,
    },
    {
        "name": "api_key_created",
        "kind": "event_count",
        "event": "api_key_created",
        "threshold": 1,
        "window_days": 7,
        "odds_ratio": 2.5,
        "prevalence": 0.30,
        "activity_odds_ratio": 1.8,
        "beyond_activity": False,
    },
    {
        "name": "dashboard_shared",
        "kind": "event_count",
        "event": "dashboard_shared",
        "threshold": 2,
        "window_days": 14,
        "odds_ratio": 2.2,
        "prevalence": 0.20,
        "activity_odds_ratio": 1.8,
        "beyond_activity": False,
    },
    {
        "name": "integrations_page",
        "kind": "event_property",
        "event": "$pageview",
        "property": "$current_url",
        "value": INTEGRATIONS_PATH,
        "threshold": 1,
        "window_days": 14,
        "odds_ratio": 2.5,
        "prevalence": 0.20,
        "activity_odds_ratio": 1.8,
        "beyond_activity": False,
    },
    {
        "name": "fintech",
        "kind": "crm_attribute",
        "attribute": "industry",
        "value": "Fintech",
        "odds_ratio": 2.2,
        "prevalence": round(0.70 * 0.15, 6),  # CRM companies x Fintech among them
        "activity_odds_ratio": 1.3,
        "beyond_activity": False,
    },
    {
        "name": "funding_round",
        "kind": "intent",
        "signal_type": "funding_round",
        "days_before_start": 90,
        "odds_ratio": 2.5,
        "prevalence": 0.12,
        "activity_odds_ratio": 1.3,
        "beyond_activity": False,
    },
    {
        "name": "sso_configured",
        "kind": "event_count",
        "event": "sso_configured",
        "threshold": 1,
        "window_days": 14,
        "odds_ratio": 2.5,
        "prevalence": 0.20,
        "activity_odds_ratio": 0.6,
        "beyond_activity": True,
    },
)
"""The planted behaviours. `beyond_activity`: held more often by *less* active accounts, so its marginal
lift is modest (below min_lift) although it matters given activity: only an activity-adjusted test finds it."""
DRIFTING = {
    "name": "report_exported",
    "kind": "event_count",
    "event": "report_exported",
    "threshold": 2,
    "window_days": 14,
    "odds_ratio_before": 3.5,
    "odds_ratio_after": 1.0,
    "prevalence": 0.25,
    "activity_odds_ratio": 1.0,  # independent of activity: after drift_at its marginal lift is 1 too
}
ACTIVITY_EVENTS = frozenset(NOISE_EVENTS + NEUTRAL_EVENTS + ("$pageview", "$feature_flag_called", PROXY_EVENT))
"""Events whose counts are pure activity (every $pageview path but /settings/integrations, which is planted):
any condition on them is an activity proxy."""
PROXIES = (
    {
        "name": "dark_mode_toggled",
        "kind": "event_count",
        "event": PROXY_EVENT,
        "driven_by": "activity only: Poisson(activity) toggles in the first 14 days, no effect beyond activity",
    },
    {
        "name": "home_page_views",
        "kind": "event_property",
        "event": "$pageview",
        "property": "$current_url",
        "value": "/home",
        "driven_by": "activity only: the most viewed ordinary page (22 % of page views)",
    },
)
"""Activity proxies: conditions whose only link to conversion is activity (large marginal lift, none given
activity). Discovery must not enable them (nor any other condition on the pure-activity events)."""

_CRM_SHARE = 0.70
_FINTECH = 0
_BASE_RATE = 0.08
_EARLY_SHARE = 0.15
_FUNDING_DAYS = 90
_QUADRATURE_NODES = 48


def _expit(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def _standard_normal_quadrature(n: int = _QUADRATURE_NODES) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Hermite nodes and weights (probabilists' form) for E[f(z)], z ~ N(0, 1): Σ w f(x)."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return x, w / w.sum()


def _bisect(f: Callable[[float], float], target: float, lo: float, hi: float) -> float:
    """The x in [lo, hi] with f(x) = target, for an increasing f (100 halvings: exact to float precision)."""
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
    return (lo + hi) / 2


def _prevalence_intercept(prevalence: float, activity_or: float) -> float:
    """alpha with E[expit(alpha + log(activity_or)·z)] = prevalence over z ~ N(0, 1) (z = standardised log activity)."""
    x, w = _standard_normal_quadrature()
    slope = math.log(activity_or)
    return _bisect(lambda a: float(np.sum(w * _expit(a + slope * x))), prevalence, -30.0, 30.0)


_HOLDING = {p["name"]: p for p in PLANTED if p["name"] != "fintech"} | {DRIFTING["name"]: DRIFTING}
_DRAWN = ("invited_teammate", "api_key_created", "dashboard_shared", "integrations_page", "funding_round")
_DRAWN += ("report_exported", "sso_configured")
"""The behaviours drawn per account (fintech comes from the industry draw), in draw order."""
_HOLD_ALPHA = {
    name: _prevalence_intercept(_HOLDING[name]["prevalence"], _HOLDING[name]["activity_odds_ratio"]) for name in _DRAWN
}
_FINTECH_ALPHA = _prevalence_intercept(_INDUSTRY_P[_FINTECH], PLANTED[4]["activity_odds_ratio"])


def _logit_terms() -> list[tuple[str, Callable[[np.ndarray], np.ndarray], float]]:
    """(name, P(term = 1 | z), log odds ratio) of every binary term of the conversion logit."""
    terms = []
    for p in PLANTED:
        if p["name"] == "fintech":
            slope = math.log(p["activity_odds_ratio"])
            terms.append(
                (p["name"], lambda z, s=slope: _CRM_SHARE * _expit(_FINTECH_ALPHA + s * z), math.log(p["odds_ratio"]))
            )
        else:
            a, s = _HOLD_ALPHA[p["name"]], math.log(p["activity_odds_ratio"])
            terms.append((p["name"], lambda z, a=a, s=s: _expit(a + s * z), math.log(p["odds_ratio"])))
    # The drifting behaviour acts for accounts starting before drift_at (half of them), independently of z.
    d = DRIFTING
    terms.append((d["name"], lambda z: np.full_like(z, d["prevalence"] * 0.5), math.log(d["odds_ratio_before"])))
    return terms


def _latent_world() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Enumeration of the conversion model: (probability of each (z node, state), the logit without its
    intercept there, states).

    States are the 2^k combinations of the logit's binary terms; z runs over the quadrature nodes. Exact up
    to the quadrature (48 nodes integrate the smooth logistic terms to ~1e-12).
    """
    x, w = _standard_normal_quadrature()
    terms = _logit_terms()
    k = len(terms)
    states = ((np.arange(2**k)[:, None] >> np.arange(k)[None, :]) & 1).astype(bool)  # (2^k, k)
    p_term = np.stack([f(x) for _, f, _ in terms], axis=1)  # (nodes, k)
    beta = np.array([b for _, _, b in terms])
    prob = w[:, None] * np.prod(np.where(states[None], p_term[:, None, :], 1.0 - p_term[:, None, :]), axis=2)
    eta = math.log(ACTIVITY_CONVERSION_OR) * x[:, None] + (states.astype(float) @ beta)[None, :]
    return prob, eta, states


def _solve_intercept(target: float = _BASE_RATE) -> float:
    """The logit intercept for which the expected (latent) conversion rate is `target`."""
    prob, eta, _ = _latent_world()
    return _bisect(lambda c: float(np.sum(prob * _expit(c + eta))), target, -15.0, 5.0)


_INTERCEPT = _solve_intercept()


def expected_marginal_lifts(intercept: float = _INTERCEPT) -> dict[str, float]:
    """Each planted behaviour's expected marginal lift (latent conversion rate with / without it), by
    enumeration over the model: what a test that ignores activity estimates."""
    prob, eta, states = _latent_world()
    rate = _expit(intercept + eta)
    out = {}
    for i, (name, _, _) in enumerate(_logit_terms()):
        if name == DRIFTING["name"]:
            continue
        has = states[None, :, i]
        with_ = np.sum(prob * rate * has) / np.sum(prob * has)
        without = np.sum(prob * rate * ~has) / np.sum(prob * ~has)
        out[name] = float(with_ / without)
    return out


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoSummary:
    out_dir: Path
    n_accounts: int
    n_events: int  # event rows written (bad rows included)
    rows: dict[str, int]  # rows written per table name
    truth_path: Path


TABLE_FILES = {
    "events": "events/part-*.parquet",
    "crm_companies": "crm_companies.csv",
    "crm_people": "crm_people.csv",
    "crm_deals": "crm_deals.jsonl.gz",
    "crm_deal_stage_changes": "crm_deal_stage_changes.csv",
    "billing_customers": "billing_customers.jsonl",
    "billing_subscriptions": "billing_subscriptions.csv.gz",
    "billing_invoices": "billing_invoices.parquet",
    "intent_signals": "intent_signals.jsonl",
}


def generate_demo(
    out_dir: Path | str,
    n_accounts: int = 3000,
    seed: int = 7,
    start_date: str = "2025-01-01",
    months: int = 12,
    progress: Callable[[int, int], None] | None = None,
) -> DemoSummary:
    """Write a demo source directory with planted signals to `out_dir` and its truth to TRUTH.json.

    Deterministic: the same arguments give byte-identical files. Existing table files in `out_dir`
    (and every ``events/part-*.parquet``) are replaced. progress(done_accounts, total_accounts) is
    called after each chunk of `CHUNK_ACCOUNTS` accounts.
    """
    if n_accounts < 1:
        raise ValueError("n_accounts must be >= 1")
    if months < 1:
        raise ValueError("months must be >= 1")
    world = _World.make(seed, start_date, months)
    out = Path(out_dir)
    events_dir = out / "events"
    events_dir.mkdir(parents=True, exist_ok=True)
    for old in events_dir.glob("part-*.parquet"):
        old.unlink()

    rows = dict.fromkeys(TABLE_FILES, 0)
    bad = {"exact_duplicates": 0, "duplicate_uuid": 0, "null_timestamp": 0, "malformed_properties": 0}
    n_negative = 0
    n_crm = 0
    n_converted = 0
    sinks = {
        "crm_companies": _TextSink(out / "crm_companies.csv"),
        "crm_people": _TextSink(out / "crm_people.csv"),
        "crm_deals": _TextSink(out / "crm_deals.jsonl.gz", gz=True),
        "crm_deal_stage_changes": _TextSink(out / "crm_deal_stage_changes.csv"),
        "billing_customers": _TextSink(out / "billing_customers.jsonl"),
        "billing_subscriptions": _TextSink(out / "billing_subscriptions.csv.gz", gz=True),
        "intent_signals": _TextSink(out / "intent_signals.jsonl"),
    }
    invoices = pq.ParquetWriter(out / "billing_invoices.parquet", _INVOICE_SCHEMA, compression="zstd")
    try:
        n_chunks = -(-n_accounts // CHUNK_ACCOUNTS)
        for c in range(n_chunks):
            g0 = c * CHUNK_ACCOUNTS
            n = min(CHUNK_ACCOUNTS, n_accounts - g0)
            acc = _accounts_chunk(world, c, g0, n)
            users = _users_chunk(world, c, acc)
            n_crm += int(acc["crm"].sum())
            n_converted += int(acc["converted"].sum())

            events, chunk_bad = _events_chunk(world, c, acc, users)
            events.write_parquet(events_dir / f"part-{c + 1:04d}.parquet", compression="zstd", statistics=True)
            rows["events"] += events.height
            for k, v in chunk_bad.items():
                bad[k] += v
            del events

            tables = _crm_chunk(world, c, acc, users)
            billing, inv, neg = _billing_chunk(world, c, acc, users)
            tables.update(billing)
            tables["intent_signals"] = _intent_chunk(world, c, acc)
            for name, frame in tables.items():
                sink = sinks[name]
                if name.endswith(("deals", "customers", "signals")):
                    sink.write_lines(frame)
                else:
                    sink.write_csv(frame)
                rows[name] += frame.height
            invoices.write_table(inv)
            rows["billing_invoices"] += inv.num_rows
            n_negative += neg
            if progress is not None:
                progress(g0 + n, n_accounts)
    finally:
        invoices.close()
        for sink in sinks.values():
            sink.close()

    marginal = expected_marginal_lifts()
    truth = {
        "generator": DEMO_GENERATOR,  # marks a demo export: the demo's own settings apply to it (demo_config)
        "seed": seed,
        "n_accounts": n_accounts,
        "start_date": world.start_date.isoformat(),
        "end_date": world.end_date.isoformat(),
        "observation_days": OBSERVATION_DAYS,
        "activity": {
            "distribution": f"lognormal, mean 1, log-SD {ACTIVITY_LOG_SD}",
            "conversion_odds_ratio_per_sd": ACTIVITY_CONVERSION_OR,
            "drives": "conversion, the count of every event in activity_events, and each planted behaviour's"
            " prevalence (activity_odds_ratio per SD of log activity)",
            "odds_ratios": "every planted odds_ratio is conditional on activity (a coefficient of the conversion"
            " logit next to the activity term)",
        },
        "planted": [dict(p, marginal_lift_expected=round(marginal[p["name"]], 3)) for p in PLANTED],
        "drifting": [dict(DRIFTING, drift_at=world.drift_date.isoformat())],
        "leaks": [{"event": LEAK_EVENT, "at": "conversion"}],
        "proxies": [dict(p) for p in PROXIES],
        "activity_events": sorted(ACTIVITY_EVENTS),
        "noise_events": list(NOISE_EVENTS),
        "neutral_events": list(NEUTRAL_EVENTS) + ["$feature_flag_called"],
        "bad_rows": {"events": bad, "billing_invoices": {"negative_amount": n_negative}},
        "accounts": {"total": n_accounts, "crm": n_crm, "converted": n_converted},
        "conventions": {
            "conversion": "paid_at of the first billing invoice with amount_paid > 0 (won deals close later)",
            "groups_company": "the account domain, or for CRM companies the CRM record_id on ~20% of events",
            "start": "the account's first product event: its first user's $identify",
            "intercept": round(_INTERCEPT, 6),
        },
    }
    truth_path = out / DEMO_TRUTH_FILE
    truth_path.write_text(json.dumps(truth, indent=2) + "\n")
    return DemoSummary(out_dir=out, n_accounts=n_accounts, n_events=rows["events"], rows=rows, truth_path=truth_path)


# --------------------------------------------------------------------------------------------------
# The world: time range and per-chunk random streams
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _World:
    seed: int
    start_date: date
    end_date: date
    drift_date: date
    S: int  # data start, epoch seconds
    E: int  # data end (exclusive), epoch seconds
    drift_at: int

    @staticmethod
    def make(seed: int, start_date: str, months: int) -> _World:
        d0 = date.fromisoformat(start_date)
        y, m = divmod(d0.month - 1 + months, 12)
        y, m = d0.year + y, m + 1
        d1 = date(y, m, min(d0.day, calendar.monthrange(y, m)[1]))
        s = _epoch(d0)
        e = _epoch(d1)
        drift = (datetime.fromtimestamp(s + (e - s) // 2, tz=UTC)).date()
        return _World(seed, d0, d1, drift, s, e, _epoch(drift))

    def rng(self, chunk: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, chunk, stream])


def _epoch(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp())


# --------------------------------------------------------------------------------------------------
# Vectorised helpers
# --------------------------------------------------------------------------------------------------

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_B62 = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", dtype=np.uint8)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijection on uint64 (distinct keys give distinct ids)."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _ascii(codes: np.ndarray) -> pl.Series:
    """(n, k) uint8 ASCII codes -> a polars String Series of n strings of length k."""
    n, k = codes.shape
    buf = pa.py_buffer(np.ascontiguousarray(codes, dtype=np.uint8))
    arr = pa.FixedSizeBinaryArray.from_buffers(pa.binary(k), n, [None, buf])
    return pl.from_arrow(arr.cast(pa.binary()).cast(pa.string()))


def _hex_ids(prefix: str, keys: np.ndarray, salt: int, nchars: int = 16) -> pl.Series:
    """prefix + nchars hex digits of a bijective hash of (keys ^ salt): unique for unique keys."""
    z = _mix64(keys.astype(np.uint64) ^ np.uint64(salt))
    shifts = np.arange(nchars - 1, -1, -1, dtype=np.uint64) * np.uint64(4)
    digits = ((z[:, None] >> shifts) & np.uint64(15)).astype(np.intp)
    return (prefix + _ascii(_HEX[digits])) if prefix else _ascii(_HEX[digits])


def _b62_ids(rng: np.random.Generator, prefix: str, n: int, nchars: int) -> pl.Series:
    """Stripe-like random ids: prefix + nchars base-62 characters."""
    b = rng.integers(0, 62, size=(n, nchars), dtype=np.uint8)
    return prefix + _ascii(_B62[b])


def _uuid_bytes(rng: np.random.Generator, n: int) -> np.ndarray:
    b = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    b[:, 6] = (b[:, 6] & 0x0F) | 0x40
    b[:, 8] = (b[:, 8] & 0x3F) | 0x80
    return b


def _uuid_strings(b: np.ndarray) -> pl.Series:
    """(n, 16) bytes -> uuid4 text (8-4-4-4-12 lowercase hex)."""
    n = b.shape[0]
    h = np.empty((n, 32), dtype=np.uint8)
    h[:, 0::2] = _HEX[b >> 4]
    h[:, 1::2] = _HEX[b & 15]
    out = np.full((n, 36), ord("-"), dtype=np.uint8)
    for dst, src in ((0, 0), (9, 8), (14, 12), (19, 16), (24, 20)):
        width = {0: 8, 8: 4, 12: 4, 16: 4, 20: 12}[src]
        out[:, dst : dst + width] = h[:, src : src + width]
    return _ascii(out)


def _lookup(values: tuple[str, ...] | list[str], codes: np.ndarray) -> pl.Series:
    return pl.Series(values=list(values), dtype=pl.String).gather(np.asarray(codes, dtype=np.int64))


def _accept(rng: np.random.Generator, t: np.ndarray, tz: np.ndarray) -> np.ndarray:
    """Weekday x business-hour acceptance of absolute times t (seconds) in time-zone offsets tz."""
    local = t + tz
    day = np.floor(local / DAY)
    weekday = ((day + 3) % 7).astype(np.intp)  # 1970-01-01 was a Thursday; Monday = 0
    hour = ((local - day * DAY) // HOUR).astype(np.intp).clip(0, 23)
    return rng.random(t.shape[0]) < _WD_W[weekday] * _HOUR_W[hour]


def _sample_times(
    rng: np.random.Generator,
    base: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    tz: np.ndarray,
    scale: np.ndarray | None = None,
    rounds: int = 8,
) -> np.ndarray:
    """Offsets lo + x in [lo, hi) seconds from `base`, shaped by the weekday/business-hour profile.

    x is uniform, or where scale > 0 exponential with that scale truncated to [lo, hi); rejection
    sampling against the profile, vectorised over all events (a loop over rounds only). Events still
    rejected after `rounds` keep their last draw, so every event lands inside its interval.
    """
    n = base.shape[0]
    out = np.empty(n)
    todo = np.arange(n)
    width = np.maximum(hi - lo, 0.0)
    expo = scale is not None
    for r in range(rounds):
        u = rng.random(todo.shape[0])
        w = width[todo]
        if expo:
            s = scale[todo]
            is_exp = s > 0
            s_safe = np.where(is_exp, s, 1.0)
            x_exp = -s_safe * np.log1p(-u * -np.expm1(-w / s_safe))
            x = np.where(is_exp, np.minimum(x_exp, w * (1 - 1e-12)), u * w)
        else:
            x = u * w
        x = lo[todo] + x
        out[todo] = x
        if r == rounds - 1:
            break
        todo = todo[~_accept(rng, base[todo] + x, tz[todo])]
        if todo.shape[0] == 0:
            break
    return out


def _fmt_iso_s(sec: pl.Expr, suffix: str = "Z") -> pl.Expr:
    """Epoch seconds -> ISO-8601 text (UTC) with `suffix` ('Z' or '+00:00')."""
    return pl.from_epoch(sec, time_unit="s").dt.strftime("%Y-%m-%dT%H:%M:%S" + suffix)


def _iso_s(sec: np.ndarray, suffix: str = "Z") -> pl.Series:
    s = pl.Series(values=np.asarray(sec, dtype=np.int64))
    return pl.from_epoch(s, time_unit="s").dt.strftime("%Y-%m-%dT%H:%M:%S" + suffix)


# --------------------------------------------------------------------------------------------------
# Accounts and users
# --------------------------------------------------------------------------------------------------


def _accounts_chunk(w: _World, c: int, g0: int, n: int) -> dict[str, np.ndarray | pl.Series]:
    """Per-account attributes, behaviours and outcome for accounts g0..g0+n-1 (stream 0 of chunk c)."""
    rng = w.rng(c, 0)
    g = np.arange(g0, g0 + n, dtype=np.int64)
    tz = (rng.choice(_TZ_HOURS, size=n, p=_TZ_P) * HOUR).astype(np.int64)
    span = float(w.E - w.S - HOUR)
    start = w.S + np.floor(
        _sample_times(rng, np.full(n, float(w.S)), np.zeros(n), np.full(n, span), tz.astype(float))
    ).astype(np.int64)
    n_users = np.minimum(rng.geometric(0.45, n), 10).astype(np.int64)
    # z: standardised log activity; activity = exp(mu + sd·z) is lognormal with mean 1.
    activity_z = rng.standard_normal(n)
    activity = np.exp(-0.5 * ACTIVITY_LOG_SD**2 + ACTIVITY_LOG_SD * activity_z)
    # Industry: Fintech with probability expit(alpha + log(activity OR)·z) (15 % on average), else the others
    # in their proportions.
    fintech_slope = math.log(PLANTED[4]["activity_odds_ratio"])
    is_fintech = rng.random(n) < _expit(_FINTECH_ALPHA + fintech_slope * activity_z)
    other_p = np.asarray(_INDUSTRY_P[1:]) / (1.0 - _INDUSTRY_P[_FINTECH])
    industry = np.where(is_fintech, _FINTECH, 1 + rng.choice(len(INDUSTRIES) - 1, size=n, p=other_p))
    employees = np.clip(np.round(np.exp(rng.normal(np.log(45), 1.3, n))), 5, 5000).astype(np.int64)
    crm = rng.random(n) < _CRM_SHARE
    beh = {
        name: rng.random(n) < _expit(_HOLD_ALPHA[name] + math.log(_HOLDING[name]["activity_odds_ratio"]) * activity_z)
        for name in _DRAWN
    }
    fintech = crm & (industry == _FINTECH)
    first_half = start < w.drift_at

    # The conversion logit: activity, then every planted behaviour (its odds ratio is conditional on activity).
    logit = _INTERCEPT + math.log(ACTIVITY_CONVERSION_OR) * activity_z
    for p in PLANTED:
        logit += math.log(p["odds_ratio"]) * (fintech if p["name"] == "fintech" else beh[p["name"]])
    drift_or = np.where(first_half, DRIFTING["odds_ratio_before"], DRIFTING["odds_ratio_after"])
    logit += np.log(drift_or) * beh["report_exported"]
    latent = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))

    early = rng.random(n) < _EARLY_SHARE
    cust_off = rng.integers(60, HOUR, n)
    early_off = rng.integers(3 * DAY, 13 * DAY, n)
    delay = np.minimum(2 * HOUR + rng.exponential(2 * DAY, n), 25 * DAY).astype(np.int64)
    trial_end = start + cust_off + TRIAL_DAYS * DAY
    conv = np.where(early, start + early_off, trial_end + delay)
    converted = latent & (conv < w.E)
    # Whether an account starts a trial is independent of everything planted: otherwise "has a
    # subscription" (and so plan_interval) would predict conversion. Converters who skipped the trial
    # buy directly: their customer and subscription appear at the moment they pay.
    trialist = rng.random(n) < 0.85
    has_customer = trialist | converted
    direct_offset = rng.integers(60, HOUR, n)
    plan = rng.choice(3, size=n, p=_PLAN_P)
    yearly = rng.random(n) < 0.40
    eur = rng.random(n) < 0.15
    crm_created = np.where(
        rng.random(n) < 0.75,
        start - rng.exponential(30 * DAY, n) - HOUR,
        start + rng.uniform(0, 45 * DAY, n),
    )
    crm_created = np.minimum(crm_created, w.E - 60).astype(np.int64)
    name_seed = rng.integers(0, _NAME_COMBOS, n)

    idx = (g * _NAME_STEP) % _N_NAMES
    suffix = g // _N_NAMES
    pre = idx // (len(_ROOTS) * len(_TLDS))
    root = (idx // len(_TLDS)) % len(_ROOTS)
    tld = idx % len(_TLDS)
    num = pl.Series(values=np.where(suffix > 0, (suffix + 1).astype(str), ""))
    domain = pl.select(
        pl.concat_str(
            [
                pl.lit(_lookup(_PREFIXES, pre)),
                pl.lit(_lookup(_ROOTS, root)),
                pl.lit(num),
                pl.lit("."),
                pl.lit(_lookup(_TLDS, tld)),
            ]
        )
    ).to_series()
    name = pl.select(
        pl.concat_str(
            [
                pl.lit(_lookup(_PREFIXES, pre)).str.to_titlecase(),
                pl.lit(" "),
                pl.lit(_lookup(_ROOTS, root)).str.to_titlecase(),
            ]
        )
    ).to_series()
    record_id = _hex_ids("rec_", g, 0xC0C0A)
    return {
        "g": g,
        "tz": tz,
        "start": start,
        "D": w.E - start,
        "n_users": n_users,
        "activity": activity,
        "activity_z": activity_z,
        "industry": industry,
        "employees": employees,
        "crm": crm,
        "fintech": fintech,
        "first_half": first_half,
        **{f"b_{k}": v for k, v in beh.items()},
        "latent": latent,
        "early": early,
        "trialist": trialist,
        "cust_created": np.where(trialist, start + cust_off, conv - direct_offset),
        "trial_end": trial_end,
        "conv": conv,
        "converted": converted,
        "has_customer": has_customer,
        "plan": plan,
        "yearly": yearly,
        "eur": eur,
        "crm_created": crm_created,
        "name_seed": name_seed,
        "domain": domain,
        "name": name,
        "record_id": record_id,
    }


def _users_chunk(w: _World, c: int, acc: dict) -> dict[str, np.ndarray | pl.Series]:
    """Users of the chunk's accounts, sorted by (account, join time); user 0 joins at start."""
    rng = w.rng(c, 1)
    nu = acc["n_users"]
    n_acc = nu.shape[0]
    ua = np.repeat(np.arange(n_acc), nu)
    off = np.concatenate([[0], np.cumsum(nu)[:-1]])
    k0 = np.arange(ua.shape[0]) - off[ua]
    room = (acc["D"][ua] - 60).astype(float)
    join = rng.exponential(12 * DAY, ua.shape[0])
    join = np.where(join < room, join, rng.uniform(0, 1, ua.shape[0]) * room)
    join = np.where(k0 == 0, 0, np.maximum(join, 1)).astype(np.int64)
    order = np.lexsort((join, ua))
    k0, join = k0[order], join[order]
    U = ua.shape[0]

    combo = (acc["name_seed"][ua] + k0 * _USER_STEP) % _NAME_COMBOS
    first = _lookup(_FIRST, combo // len(_LAST))
    last = _lookup(_LAST, combo % len(_LAST))
    free = rng.random(U) < 0.10
    fm = rng.choice(len(_FREE_MAIL), size=U, p=_FREE_MAIL_P)
    g = acc["g"][ua]
    crm_u = acc["crm"][ua]
    dom = acc["domain"].gather(ua)
    email = pl.select(
        pl.when(pl.lit(pl.Series(values=free)))
        .then(
            pl.concat_str(
                [
                    pl.lit(first),
                    pl.lit("."),
                    pl.lit(last),
                    pl.lit(pl.Series(values=g * 10 + k0 + 10)).cast(pl.String),
                    pl.lit("@"),
                    pl.lit(_lookup(_FREE_MAIL, fm)),
                ]
            )
        )
        .otherwise(pl.concat_str([pl.lit(first), pl.lit("."), pl.lit(last), pl.lit("@"), pl.lit(dom)]))
    ).to_series()
    full_name = pl.select(
        pl.concat_str([pl.lit(first).str.to_titlecase(), pl.lit(" "), pl.lit(last).str.to_titlecase()])
    ).to_series()
    did = _hex_ids("u_", g * 16 + k0, 0x05E125)
    # 0: company e-mail, 1: free mail at a CRM company, 2: free mail, no CRM company
    utype = np.where(~free, 0, np.where(crm_u, 1, 2))
    in_people = crm_u & (free | (rng.random(U) < 0.5))
    people_created = (acc["start"][ua] + join - rng.uniform(0, 10 * DAY, U)).astype(np.int64)
    return {
        "ua": ua,
        "off": off,
        "k0": k0,
        "join": join,
        "utype": utype,
        "free": free,
        "browser": rng.choice(len(_BROWSERS), size=U, p=_BROWSER_P),
        "os": rng.choice(len(_OSES), size=U, p=_OS_P),
        "flag_onboarding": rng.integers(0, 2, U),
        "flag_ai": rng.integers(0, 3, U),
        "email": email,
        "full_name": full_name,
        "distinct_id": did,
        "in_people": in_people,
        "people_created": people_created,
        "person_id": _hex_ids("rec_", g * 16 + k0, 0x9E09E),
    }


# --------------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------------

# Identity modes of an event
_M_GROUP, _M_EMAIL, _M_NONE = 0, 1, 2
_P_GROUP = {0: 0.862, 1: 0.26, 2: 1.0}  # P($groups) by user type; else e-mail only (0) or nothing (1)

_EXTRA = ("", ', "role": "member"', ', "role": "admin"', ', "format": "pdf"', ', "format": "csv"') + tuple(
    f', "plan": "{p}", "interval": "{i}"' for p in PLANS.values() for i in ("month", "year")
)
_X_ROLE, _X_FORMAT, _X_PLAN = 1, 3, 5

# Leading JSON members: "$current_url" (app pages x query strings, then marketing-site pages) and flags
_SPEC = (
    [""]
    + [f'"$current_url": "{APP_URL}{p}{q}", ' for p in _PATHS for q in _QUERIES]
    + [f'"$current_url": "{SITE_URL}{p}", ' for p in _SITE_PATHS]
    + [f'"$feature_flag": "{f}", "$feature_flag_response": "{v}", ' for f, vs in FLAGS.items() for v in vs]
)
_SPEC_PV0 = 1
_SPEC_SITE0 = 1 + len(_PATHS) * len(_QUERIES)
_SPEC_FLAG0 = _SPEC_SITE0 + len(_SITE_PATHS)
_MALFORMED_CHARS = len('{"$current_url": "https://app')


class _Ev:
    """Columnar accumulator of integer-coded events (account-relative times in ms)."""

    def __init__(self) -> None:
        self.parts: list[dict[str, np.ndarray]] = []

    def add(
        self,
        acc: np.ndarray,
        t_ms: np.ndarray,
        ev: int | np.ndarray,
        spec: int | np.ndarray = 0,
        extra: int | np.ndarray = 0,
    ) -> None:
        n = acc.shape[0]
        self.parts.append(
            {
                "acc": acc.astype(np.int64),
                "t": t_ms.astype(np.int64),
                "ev": np.broadcast_to(np.asarray(ev, dtype=np.int64), (n,)).copy(),
                "spec": np.broadcast_to(np.asarray(spec, dtype=np.int64), (n,)).copy(),
                "extra": np.broadcast_to(np.asarray(extra, dtype=np.int64), (n,)).copy(),
            }
        )

    def concat(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate([p[k] for p in self.parts]) for k in self.parts[0]}


def _events_chunk(w: _World, c: int, acc: dict, users: dict) -> tuple[pl.DataFrame, dict[str, int]]:
    """All events of a chunk's accounts (+ anonymous visitors and bad rows), in time order."""
    rng = w.rng(c, 2)
    n = acc["start"].shape[0]
    start = acc["start"]
    D = acc["D"].astype(float)
    tzf = acc["tz"].astype(float)
    latent = acc["latent"]
    ev = _Ev()

    def place(
        a: np.ndarray, lo: np.ndarray, hi: np.ndarray, scale: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Account-relative times (ms) for events of accounts `a` in [lo, hi) s; drops empty intervals."""
        keep = hi > lo
        a, lo, hi = a[keep], lo[keep], hi[keep]
        sc = None if scale is None else scale[keep]
        t = _sample_times(rng, start[a].astype(float), lo, hi, tzf[a], sc)
        return a, np.floor(t * 1000).astype(np.int64)

    # ---- activity-driven events -------------------------------------------------------------------
    len_a = np.minimum(OBSERVATION_DAYS * DAY, D - 1) / DAY
    len_b = np.maximum(D / DAY - OBSERVATION_DAYS, 0)
    exp_a = _RATE_ONBOARDING * len_a
    exp_b = np.where(latent, _RATE_LATER * len_b, _RATE_LATER * _DECAY_DAYS * -np.expm1(-len_b / _DECAY_DAYS))
    nb = rng.poisson(acc["activity"] * (exp_a + exp_b))
    a = np.repeat(np.arange(n), nb)
    in_a = rng.random(a.shape[0]) < (exp_a / (exp_a + exp_b))[a]
    lo = np.where(in_a, 1.5, OBSERVATION_DAYS * DAY + 1.0)
    hi = np.where(in_a, np.minimum(OBSERVATION_DAYS * DAY, D - 1)[a], (D - 1)[a])
    scale = np.where(in_a | latent[a], 0.0, _DECAY_DAYS * DAY)
    a, t = place(a, lo, hi, scale)
    m = a.shape[0]
    kind = rng.choice(5, size=m, p=_BASE_KIND_P)
    neutral = rng.choice(len(NEUTRAL_EVENTS), size=m, p=_NEUTRAL_P)
    noise = rng.choice(len(NOISE_EVENTS), size=m, p=_NOISE_P / _NOISE_P.sum())
    path = rng.choice(len(_PATHS), size=m, p=_PATH_P)
    query = rng.choice(len(_QUERIES), size=m, p=_QUERY_P)
    code = np.select(
        [kind == 0, kind == 1, kind == 2, kind == 3],
        [_EV["$pageview"], _EV["$feature_flag_called"], _EV_NEUTRAL0 + neutral, _EV_NOISE0 + noise],
        _EV[PROXY_EVENT],
    )
    spec = np.where(kind == 0, _SPEC_PV0 + path * len(_QUERIES) + query, np.where(kind == 1, -1, 0))
    ev.add(a, t, code, spec)
    n_base = m

    # ---- planted behaviours -----------------------------------------------------------------------
    # Every account has a would-be conversion time (`conv`, drawn independently of whether it converts).
    # Qualifying events are placed before it for converters and non-converters alike: placing them before
    # the conversion of converters only would squeeze early converters' events into the first days, so
    # "more events in the first days" would predict conversion even for a behaviour without effect.
    conv_rel = (acc["conv"] - start).astype(float) - 2.0
    ids = np.arange(n)

    def behaviour(
        holder: np.ndarray,
        window_days: int,
        n_hold: np.ndarray,
        n_sub: np.ndarray,
        n_late: np.ndarray,
        late_from_days: np.ndarray,
        code: int,
        spec: int = 0,
        extra: int = 0,
        extra_p: float = 0.0,
    ) -> None:
        """Holders: n_hold events in [1.5 s, window); others n_sub (< threshold); both before the would-be
        conversion time; everyone n_late events after `late_from_days`."""
        w_hi = np.minimum(window_days * DAY - 1.0, D - 1)
        # the qualifying events, inside the window and strictly before the (would-be) conversion
        k = np.where(holder, n_hold, n_sub)
        hi_in = np.minimum(w_hi, conv_rel)
        a = np.repeat(ids, k)
        a, t = place(a, np.full(a.shape[0], 1.5), hi_in[a])
        ev.add(a, t, code, spec, extra + (rng.random(a.shape[0]) < extra_p) if extra else 0)
        a = np.repeat(ids, n_late)
        a, t = place(a, late_from_days[a] * DAY + 1.0, D[a] - 1)
        ev.add(a, t, code, spec, extra + (rng.random(a.shape[0]) < extra_p) if extra else 0)

    def choice(values: list[int], p: list[float]) -> np.ndarray:
        return rng.choice(np.asarray(values), size=n, p=p)

    full = np.full(n, float(OBSERVATION_DAYS))
    b = acc
    behaviour(
        b["b_invited_teammate"],
        14,
        3 + rng.poisson(0.8, n),
        choice([0, 1, 2], [0.5, 0.3, 0.2]),
        rng.poisson(0.6, n),
        full,
        _EV["invited_teammate"],
        extra=_X_ROLE,
        extra_p=0.15,
    )
    api_h = b["b_api_key_created"]
    behaviour(
        api_h,
        7,
        1 + (rng.random(n) < 0.3),
        np.zeros(n, np.int64),
        rng.poisson(0.4, n),
        np.where(api_h, 7.0, 10.0),
        _EV["api_key_created"],
    )
    behaviour(
        b["b_dashboard_shared"],
        14,
        2 + rng.poisson(0.7, n),
        choice([0, 1], [0.6, 0.4]),
        rng.poisson(0.8, n),
        full,
        _EV["dashboard_shared"],
    )
    behaviour(
        b["b_report_exported"],
        14,
        2 + rng.poisson(1.0, n),
        choice([0, 1], [0.55, 0.45]),
        rng.poisson(1.0, n),
        full,
        _EV["report_exported"],
        extra=_X_FORMAT,
        extra_p=0.4,
    )
    behaviour(
        b["b_sso_configured"],
        14,
        1 + (rng.random(n) < 0.2),
        np.zeros(n, np.int64),
        rng.poisson(0.2, n),
        full,
        _EV["sso_configured"],
    )
    integ_spec = _SPEC_PV0 + _PATH_INTEGRATIONS * len(_QUERIES)
    behaviour(
        b["b_integrations_page"],
        14,
        1 + rng.poisson(0.5, n),
        np.zeros(n, np.int64),
        rng.poisson(0.4, n),
        full,
        _EV["$pageview"],
        spec=integ_spec,
    )

    # ---- leak: checkout at the conversion second ----------------------------------------------------
    conv_acc = np.flatnonzero(acc["converted"])
    plan_extra = _X_PLAN + acc["plan"][conv_acc] * 2 + acc["yearly"][conv_acc]
    ev.add(conv_acc, (acc["conv"][conv_acc] - start[conv_acc]) * 1000, _EV[LEAK_EVENT], 0, plan_extra)

    e = ev.concat()
    # integrations page views: ~10% carry a query string too
    integ = (e["ev"] == _EV["$pageview"]) & (e["spec"] == integ_spec)
    e["spec"] = np.where(integ, integ_spec + rng.choice(len(_QUERIES), size=e["spec"].shape[0], p=_QUERY_P), e["spec"])

    # ---- who did it: a user of the account who joined at least 1 s before ------------------------------
    ua, uoff, ujoin = users["ua"], users["off"], users["join"]
    key_u = (ua.astype(np.int64) << 42) | (ujoin * 1000 + 1000)
    key_e = (e["acc"] << 42) | e["t"]
    pos = np.searchsorted(key_u, key_e, side="right")
    n_joined = pos - uoff[e["acc"]]
    e["user"] = uoff[e["acc"]] + np.floor(rng.random(n_joined.shape[0]) * n_joined).astype(np.int64)
    # feature flag responses are fixed per user
    is_flag = e["spec"] == -1
    which = rng.random(is_flag.shape[0]) < 0.6
    flag_spec = np.where(
        which, _SPEC_FLAG0 + users["flag_onboarding"][e["user"]], _SPEC_FLAG0 + 2 + users["flag_ai"][e["user"]]
    )
    e["spec"] = np.where(is_flag, flag_spec, e["spec"])
    # query_run duration
    e["num"] = np.where(e["ev"] == _EV["query_run"], np.round(rng.lognormal(6.0, 1.0, e["ev"].shape[0])), -1).astype(
        np.int64
    )

    # ---- $identify: every user's first event, at its join second -------------------------------------
    U = ua.shape[0]
    ident = {
        "acc": ua.astype(np.int64),
        "t": ujoin * 1000,
        "ev": np.full(U, _EV["$identify"]),
        "spec": np.zeros(U, np.int64),
        "extra": np.zeros(U, np.int64),
        "user": np.arange(U),
        "num": np.full(U, -1),
    }
    e = {k: np.concatenate([ident[k], e[k]]) for k in e}
    n_acc_events = e["acc"].shape[0]
    utype = users["utype"][e["user"]]
    p_group = np.select([utype == 0, utype == 1], [_P_GROUP[0], _P_GROUP[1]], _P_GROUP[2])
    r = rng.random(n_acc_events)
    mode = np.where(r < p_group, _M_GROUP, np.where(utype == 0, _M_EMAIL, _M_NONE))
    mode[:U] = _M_GROUP
    e["mode"] = mode
    e["rec"] = (acc["crm"][e["acc"]] & (rng.random(n_acc_events) < 0.2)).astype(np.int64)
    e["ident"] = np.zeros(n_acc_events, bool)
    e["ident"][:U] = True
    e["t"] = e["t"] + start[e["acc"]] * 1000  # absolute ms from here on

    # ---- anonymous marketing-site visitors ------------------------------------------------------------
    n_anon = int(round(0.031 * n_acc_events))
    n_vis = max(1, n_anon // 3)
    vis = rng.integers(0, n_vis, n_anon)
    t_anon = w.S * 1000 + np.floor(
        _sample_times(
            rng, np.full(n_anon, float(w.S)), np.zeros(n_anon), np.full(n_anon, float(w.E - w.S - 1)), np.zeros(n_anon)
        )
        * 1000
    ).astype(np.int64)
    anon = {
        "acc": np.full(n_anon, -1),
        "t": t_anon,
        "ev": np.full(n_anon, _EV["$pageview"]),
        "spec": _SPEC_SITE0 + rng.choice(len(_SITE_PATHS), size=n_anon, p=_SITE_P),
        "extra": np.zeros(n_anon, np.int64),
        "user": vis,
        "num": np.full(n_anon, -1),
        "mode": np.full(n_anon, _M_NONE),
        "rec": np.zeros(n_anon, np.int64),
        "ident": np.zeros(n_anon, bool),
    }
    e = {k: np.concatenate([e[k], anon[k]]) for k in e}
    N = e["acc"].shape[0]

    # ---- bad rows: extra rows (reused uuid, null timestamp, truncated JSON), then exact duplicates -------
    counts = {
        "exact_duplicates": int(round(0.002 * N)),
        "duplicate_uuid": int(round(0.001 * N)),
        "null_timestamp": int(round(0.0005 * N)),
        "malformed_properties": int(round(0.0005 * N)),
    }
    base_rows = np.arange(U, U + n_base)  # activity-driven account events
    noisy = base_rows[e["ev"][base_rows] >= _EV_NEUTRAL0]
    noisy = noisy[(e["ev"][noisy] < _EV[PLANTED_EVENTS[0]]) | (e["ev"][noisy] >= _EV_NOISE0)]
    pageviews = base_rows[e["ev"][base_rows] == _EV["$pageview"]]
    counts["duplicate_uuid"] = min(counts["duplicate_uuid"], noisy.shape[0])
    counts["null_timestamp"] = min(counts["null_timestamp"], noisy.shape[0])
    counts["malformed_properties"] = min(counts["malformed_properties"], pageviews.shape[0])
    src_u = np.sort(rng.choice(noisy, counts["duplicate_uuid"], replace=False))
    src_n = rng.choice(noisy, counts["null_timestamp"], replace=False)
    src_m = rng.choice(pageviews, counts["malformed_properties"], replace=False)
    src = np.concatenate([src_u, src_n, src_m])
    extra_rows = {k: v[src] for k, v in e.items()}
    nu_, nn_ = src_u.shape[0], src_n.shape[0]
    # reused uuid: another noise event, up to 10 minutes later (never past the data end)
    other = (e["ev"][src_u] - _EV_NOISE0 + 1 + rng.integers(0, len(NOISE_EVENTS) - 1, nu_)) % len(NOISE_EVENTS)
    extra_rows["ev"][:nu_] = _EV_NOISE0 + other
    extra_rows["spec"][:nu_] = 0
    extra_rows["num"][:nu_] = -1
    extra_rows["t"][:nu_] = np.minimum(e["t"][src_u] + rng.integers(1000, 600_000, nu_), w.E * 1000 - 1)
    e = {k: np.concatenate([e[k], extra_rows[k]]) for k in e}
    N2 = e["acc"].shape[0]
    uuid_b = _uuid_bytes(rng, N2)
    uuid_b[N : N + nu_] = uuid_b[src_u]
    null_ts = np.zeros(N2, bool)
    null_ts[N + nu_ : N + nu_ + nn_] = True
    malformed = np.zeros(N2, bool)
    malformed[N + nu_ + nn_ :] = True
    no_zone = rng.random(N2) < 0.10
    # exact duplicates of clean rows (every string is a function of these arrays); then time order
    dup = rng.choice(N, counts["exact_duplicates"], replace=False)  # clean rows only
    order = np.concatenate([np.arange(N2), dup])
    order = order[np.argsort(e["t"][order], kind="stable")]
    e = {k: v[order] for k, v in e.items()}
    uuid_b, null_ts, malformed, no_zone = uuid_b[order], null_ts[order], malformed[order], no_zone[order]

    # ---- strings ----------------------------------------------------------------------------------------
    is_anon = e["acc"] < 0
    user = np.where(is_anon, 0, e["user"])
    acc_i = np.where(is_anon, 0, e["acc"])
    anon_ids = _uuid_strings(_uuid_bytes(rng, n_vis))
    group_keys = pl.select(pl.concat_list([pl.lit(acc["domain"]), pl.lit(acc["record_id"])]).explode()).to_series()
    df = pl.DataFrame(
        {
            "ms": e["t"],
            "ev": e["ev"],
            "spec": e["spec"],
            "extra": e["extra"],
            "num": e["num"],
            "mode": e["mode"],
            "ident": e["ident"],
            "anon": is_anon,
            "null_ts": null_ts,
            "malformed": malformed,
            "no_zone": no_zone,
            "uuid": _uuid_strings(uuid_b),
            "did": users["distinct_id"].gather(user),
            "anon_id": anon_ids.gather(np.where(is_anon, e["user"], 0)),
            "email": users["email"].gather(user),
            "pname": users["full_name"].gather(user),
            "browser": _lookup(_BROWSERS, users["browser"][user]),
            "os": _lookup(_OSES, users["os"][user]),
            "gkey": group_keys.gather(acc_i * 2 + e["rec"]),
            "spec_s": _lookup(_SPEC, np.maximum(e["spec"], 0)),
            "extra_s": _lookup(_EXTRA, e["extra"]),
        }
    )
    ts = pl.from_epoch(pl.col("ms"), time_unit="ms")
    props = pl.concat_str(
        [
            pl.lit("{"),
            pl.col("spec_s"),
            pl.lit('"$browser": "'),
            pl.col("browser"),
            pl.lit('", "$os": "'),
            pl.col("os"),
            pl.lit('"'),
            pl.when(pl.col("mode") == _M_GROUP)
            .then(pl.concat_str([pl.lit(', "$groups": {"company": "'), pl.col("gkey"), pl.lit('"}')]))
            .otherwise(pl.lit("")),
            pl.col("extra_s"),
            pl.when(pl.col("num") >= 0)
            .then(pl.concat_str([pl.lit(', "duration_ms": '), pl.col("num").cast(pl.String)]))
            .otherwise(pl.lit("")),
            pl.lit("}"),
        ]
    )
    out = df.select(
        pl.col("uuid"),
        pl.lit(pl.Series(values=list(EVENT_NAMES), dtype=pl.String)).gather(pl.col("ev")).alias("event"),
        pl.when(pl.col("null_ts"))
        .then(pl.lit(None, dtype=pl.String))
        .when(pl.col("no_zone"))
        .then(ts.dt.strftime("%Y-%m-%d %H:%M:%S"))
        .otherwise(ts.dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"))
        .alias("timestamp"),
        pl.when(pl.col("anon")).then(pl.col("anon_id")).otherwise(pl.col("did")).alias("distinct_id"),
        pl.when(pl.col("malformed")).then(props.str.slice(0, _MALFORMED_CHARS)).otherwise(props).alias("properties"),
        pl.when(pl.col("ident"))
        .then(
            pl.concat_str(
                [pl.lit('{"email": "'), pl.col("email"), pl.lit('", "name": "'), pl.col("pname"), pl.lit('"}')]
            )
        )
        .when(pl.col("mode") == _M_EMAIL)
        .then(pl.concat_str([pl.lit('{"email": "'), pl.col("email"), pl.lit('"}')]))
        .otherwise(pl.lit(None, dtype=pl.String))
        .alias("person_properties"),
    )
    return out, counts


# --------------------------------------------------------------------------------------------------
# CRM, billing, intent
# --------------------------------------------------------------------------------------------------


def _crm_chunk(w: _World, c: int, acc: dict, users: dict) -> dict[str, pl.DataFrame]:
    rng = w.rng(c, 3)
    crm = np.flatnonzero(acc["crm"])
    companies = pl.DataFrame(
        {
            "record_id": acc["record_id"].gather(crm),
            "name": acc["name"].gather(crm),
            "domain": acc["domain"].gather(crm),
            "employee_count": acc["employees"][crm],
            "industry": _lookup(INDUSTRIES, acc["industry"][crm]),
            "created_at": _iso_s(acc["crm_created"][crm]),
        }
    )
    pi = np.flatnonzero(users["in_people"])
    people = pl.DataFrame(
        {
            "record_id": users["person_id"].gather(pi),
            "email": users["email"].gather(pi),
            "company_record_id": acc["record_id"].gather(users["ua"][pi]),
            "created_at": _iso_s(np.minimum(users["people_created"][pi], w.E - 1)),
        }
    )

    # deals: won deals for ~20% of CRM converters (after the payment), open/lost for ~12% of CRM companies
    n = acc["start"].shape[0]
    won = acc["crm"] & acc["converted"] & (rng.random(n) < 0.20)
    other = acc["crm"] & ~won & (rng.random(n) < 0.12)
    d_acc = np.flatnonzero(won | other)
    d_won = won[d_acc]
    nd = d_acc.shape[0]
    start = acc["start"][d_acc]
    created = np.where(
        d_won,
        acc["conv"][d_acc] + rng.integers(HOUR, 2 * DAY, nd),
        start + rng.integers(-20 * DAY, 30 * DAY, nd),
    )
    created = np.minimum(created, w.E - HOUR)
    # stage times: qualified at creation, then gaps; won deals move fast (hours), others slowly (days)
    gaps = np.where(d_won[:, None], rng.uniform(2 * HOUR, 1.2 * DAY, (nd, 5)), rng.exponential(8 * DAY, (nd, 5)))
    gaps[:, 0] = 0
    times = (created[:, None] + np.cumsum(gaps, axis=1)).astype(np.int64)
    reached = np.where(d_won, 4, rng.integers(1, 5, nd))  # stages reached among qualified..negotiation
    lost = ~d_won & (rng.random(nd) < 0.45)
    n_steps = reached + (d_won | lost)  # + the terminal won/lost step
    step = np.arange(5)[None, :]
    valid = (step < n_steps[:, None]) & (times < w.E)
    valid &= np.cumprod(valid, axis=1).astype(bool)
    kept = valid.sum(axis=1)
    terminal_kept = (d_won & (kept == 5)) | (lost & (kept == n_steps))
    stage_names = DEAL_STAGES + ("won", "lost")
    stage_code = np.where(step < reached[:, None], step, np.where(d_won[:, None], 4, 5))
    stage_code = np.broadcast_to(stage_code, valid.shape)
    last_idx = np.maximum(kept - 1, 0)
    cur_stage = stage_code[np.arange(nd), last_idx]
    status = np.where(terminal_kept, np.where(d_won, 1, 2), 0)
    closed = np.where(terminal_kept, times[np.arange(nd), last_idx], -1)
    monthly_amount = _PLAN_AMOUNTS[acc["plan"][d_acc]]
    acv_won = np.where(acc["yearly"][d_acc], monthly_amount * 10, monthly_amount * 12) // 100
    acv_other = (_PLAN_AMOUNTS[rng.choice(3, size=nd, p=_PLAN_P)] * 12 // 100) * rng.integers(1, 6, nd)
    value = np.where(d_won, acv_won, acv_other)
    plan_name = _lookup([p.title() for p in PLANS.values()], acc["plan"][d_acc])
    deal_ids = _hex_ids("rec_", acc["g"][d_acc], 0xDEA1)
    deals = pl.DataFrame(
        {
            "record_id": deal_ids,
            "company_record_id": acc["record_id"].gather(d_acc),
            "name": acc["name"].gather(d_acc)
            + " - "
            + plan_name
            + pl.Series(values=np.where(acc["yearly"][d_acc] | ~d_won, " annual", " monthly")),
            "stage": _lookup(stage_names, cur_stage),
            "value": value,
            "currency": _lookup(("USD", "EUR"), acc["eur"][d_acc].astype(np.int64)),
            "owner": _lookup(_AE_OWNERS, rng.integers(0, len(_AE_OWNERS), nd)),
            "created_at": _iso_s(created),
            "closed_at": pl.Series(values=np.where(closed >= 0, closed, 0)),
            "closed": closed >= 0,
            "status": _lookup(("open", "won", "lost"), status),
        }
    )
    deal_lines = deals.select(
        pl.concat_str(
            [
                pl.lit('{"record_id": "'),
                pl.col("record_id"),
                pl.lit('", "company_record_id": "'),
                pl.col("company_record_id"),
                pl.lit('", "name": "'),
                pl.col("name"),
                pl.lit('", "stage": "'),
                pl.col("stage"),
                pl.lit('", "value": '),
                pl.col("value").cast(pl.String),
                pl.lit(', "currency": "'),
                pl.col("currency"),
                pl.lit('", "owner": "'),
                pl.col("owner"),
                pl.lit('", "created_at": "'),
                pl.col("created_at"),
                pl.lit('", "closed_at": '),
                pl.when(pl.col("closed"))
                .then(pl.concat_str([pl.lit('"'), _fmt_iso_s(pl.col("closed_at")), pl.lit('"')]))
                .otherwise(pl.lit("null")),
                pl.lit(', "status": "'),
                pl.col("status"),
                pl.lit('"}'),
            ]
        ).alias("line")
    )
    # stage changes, one row per kept step
    di, si = np.nonzero(valid)
    sc_stage = stage_code[di, si]
    reason_k = rng.integers(0, 4, di.shape[0])
    reason_lists = [_REASONS[s] for s in stage_names]
    reason_flat = [r for rs in reason_lists for r in rs]
    reason_off = np.cumsum([0] + [len(rs) for rs in reason_lists])[:-1]
    reason_len = np.array([len(rs) for rs in reason_lists])
    has_reason = rng.random(di.shape[0]) < np.where(sc_stage >= 4, 0.8, 0.35)
    reason_code = reason_off[sc_stage] + reason_k % reason_len[sc_stage]
    changes = pl.DataFrame(
        {
            "deal_record_id": deal_ids.gather(di),
            "stage": _lookup(stage_names, sc_stage),
            "changed_at": _iso_s(times[di, si]),
            "reason": _lookup(reason_flat, reason_code),
            "has": has_reason,
        }
    ).select("deal_record_id", "stage", "changed_at", pl.when(pl.col("has")).then(pl.col("reason")).alias("reason"))
    return {
        "crm_companies": companies,
        "crm_people": people,
        "crm_deals": deal_lines,
        "crm_deal_stage_changes": changes,
    }


_INVOICE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("customer", pa.string()),
        ("subscription", pa.string()),
        ("status", pa.string()),
        ("amount_paid", pa.int64()),
        ("currency", pa.string()),
        ("created", pa.int64()),
        ("paid_at", pa.int64()),
    ]
)


def _billing_chunk(w: _World, c: int, acc: dict, users: dict) -> tuple[dict[str, pl.DataFrame], pa.Table, int]:
    rng = w.rng(c, 4)
    cust = np.flatnonzero(acc["has_customer"])
    nc = cust.shape[0]
    ids = _b62_ids(rng, "cus_", nc, 14)
    sub_ids = _b62_ids(rng, "sub_", nc, 24)
    first_user = users["off"][cust]
    email = users["email"].gather(first_user)
    with_meta = users["free"][first_user] | (rng.random(nc) < 0.85)
    created = acc["cust_created"][cust]
    domain = acc["domain"].gather(cust)
    customers = pl.DataFrame(
        {"id": ids, "email": email, "created": created, "domain": domain, "meta": with_meta}
    ).select(
        pl.concat_str(
            [
                pl.lit('{"id": "'),
                pl.col("id"),
                pl.lit('", "email": "'),
                pl.col("email"),
                pl.lit('", "created": '),
                pl.col("created").cast(pl.String),
                pl.lit(', "metadata": '),
                pl.when(pl.col("meta"))
                .then(pl.concat_str([pl.lit('{"company_domain": "'), pl.col("domain"), pl.lit('"}')]))
                .otherwise(pl.lit("{}")),
                pl.lit("}"),
            ]
        ).alias("line")
    )

    E = w.E
    conv = acc["converted"][cust]
    latent = acc["latent"][cust]
    conv_t = acc["conv"][cust]
    direct = ~acc["trialist"][cust]  # bought without a trial (converters only)
    trial_end = np.where(acc["early"][cust] & conv, conv_t, acc["trial_end"][cust])
    yearly = acc["yearly"][cust]
    amount = _PLAN_AMOUNTS[acc["plan"][cust]] * np.where(yearly, 10, 1)
    currency = np.where(acc["eur"][cust], 1, 0)
    trial_over = acc["trial_end"][cust] < E
    # non-converters: incomplete (no trial) for ~15%, else trialing until the trial ends, then canceled
    incomplete = ~latent & (rng.random(nc) < 0.15)
    censored_due = latent & ~conv & trial_over & ~direct  # payment pending at the data end
    r = rng.random(nc)
    period = np.where(yearly, 365 * DAY, 30 * DAY)
    n_renew = np.where(conv, (E - 1 - conv_t) // period, 0)
    conv_status = np.where((r < 0.08) & (n_renew >= 1), 2, np.where((r < 0.12) & (n_renew >= 1), 4, 1))
    status = np.select(
        [conv, incomplete, censored_due, ~trial_over],
        [conv_status, 5, 2, 0],
        3,
    )  # 0 trialing 1 active 2 past_due 3 canceled 4 unpaid 5 incomplete
    canceled_at = np.where(status == 3, np.minimum(acc["trial_end"][cust] + rng.integers(0, 2 * DAY, nc), E - 1), -1)
    trial_col = np.where(incomplete | direct, -1, trial_end)
    subs = pl.DataFrame(
        {
            "id": sub_ids,
            "customer": ids,
            "status": _lookup(("trialing", "active", "past_due", "canceled", "unpaid", "incomplete"), status),
            "created": created,
            "trial_end": pl.Series(values=trial_col).set(pl.Series(values=trial_col < 0), None),
            "canceled_at": pl.Series(values=canceled_at).set(pl.Series(values=canceled_at < 0), None),
            "plan_amount": amount,
            "plan_interval": _lookup(("month", "year"), yearly.astype(np.int64)),
            "currency": _lookup(("usd", "eur"), currency),
        }
    )

    # invoices (per customer index `ci`)
    parts = []  # (ci, status, amount_paid, created, paid_at)
    trial = np.flatnonzero(~incomplete & ~direct)
    parts.append((trial, np.zeros_like(trial), np.zeros_like(trial), created[trial], created[trial]))
    inc = np.flatnonzero(incomplete)
    parts.append((inc, np.ones_like(inc), np.zeros_like(inc), created[inc], np.full(inc.shape[0], -1)))
    cv = np.flatnonzero(conv)
    parts.append((cv, np.zeros_like(cv), amount[cv], conv_t[cv] - rng.integers(0, HOUR, cv.shape[0]), conv_t[cv]))
    due = np.flatnonzero(censored_due)
    parts.append((due, np.ones_like(due), np.zeros_like(due), trial_end[due], np.full(due.shape[0], -1)))
    ri = np.repeat(cv, n_renew[cv])
    k = np.arange(ri.shape[0]) - np.repeat(np.cumsum(n_renew[cv]) - n_renew[cv], n_renew[cv]) + 1
    r_created = conv_t[ri] + k * period[ri] + rng.integers(0, HOUR, ri.shape[0])
    r_paid = r_created + rng.integers(60, 3 * HOUR, ri.shape[0])
    last = k == n_renew[ri]
    unpaid = last & np.isin(status[ri], (2, 4))
    void = ~unpaid & (rng.random(ri.shape[0]) < 0.01)
    st = np.where(unpaid, 1, np.where(void, 2, 0))
    ok = (r_created < E) & ((st != 0) | (r_paid < E))
    parts.append(
        (ri[ok], st[ok], np.where(st == 0, amount[ri], 0)[ok], r_created[ok], np.where(st == 0, r_paid, -1)[ok])
    )
    # bad rows: a few negative amounts (refund-like), after a conversion
    pool = cv if cv.shape[0] else np.arange(nc)
    n_neg = min(3 + nc // 20_000, pool.shape[0])
    neg = rng.choice(pool, n_neg, replace=False) if n_neg else np.zeros(0, np.int64)
    neg_base = np.where(conv[neg], conv_t[neg], created[neg])
    neg_t = neg_base + ((E - 1 - neg_base) * rng.random(n_neg)).astype(np.int64)
    parts.append((neg, np.zeros_like(neg), -amount[neg], neg_t, neg_t))

    ci = np.concatenate([p[0] for p in parts]).astype(np.int64)
    inv = pl.DataFrame(
        {
            "ci": ci,
            "status": np.concatenate([p[1] for p in parts]).astype(np.int64),
            "amount_paid": np.concatenate([p[2] for p in parts]).astype(np.int64),
            "created": np.concatenate([p[3] for p in parts]).astype(np.int64),
            "paid_at": np.concatenate([p[4] for p in parts]).astype(np.int64),
        }
    ).sort("created", "ci", maintain_order=True)
    inv_table = (
        pl.DataFrame(
            {
                "id": _b62_ids(rng, "in_", inv.height, 24),
                "customer": ids.gather(inv["ci"]),
                "subscription": sub_ids.gather(inv["ci"]),
                "status": _lookup(("paid", "open", "void"), inv["status"].to_numpy()),
                "amount_paid": inv["amount_paid"],
                "currency": _lookup(("usd", "eur"), currency[inv["ci"].to_numpy()]),
                "created": inv["created"],
                "paid_at": inv["paid_at"].set(inv["paid_at"] < 0, None),
            }
        )
        .to_arrow()
        .cast(_INVOICE_SCHEMA)
    )
    return {"billing_customers": customers, "billing_subscriptions": subs}, inv_table, int(n_neg)


_ROUNDS = ("pre_seed", "seed", "series_a", "series_b", "series_c")
_ROUND_AMOUNTS = np.array([1_500_000, 4_000_000, 12_000_000, 30_000_000, 75_000_000])
_EXEC_TITLES = ("VP Sales", "CTO", "Head of Data", "CFO", "VP Marketing", "Chief Revenue Officer")
_JOB_TITLES = (
    ("Data Engineer", "Engineering"),
    ("Account Executive", "Sales"),
    ("Product Manager", "Product"),
    ("Analytics Engineer", "Data"),
    ("Customer Success Manager", "Customer Success"),
)
_TECH = (
    ("Snowflake", "data_warehouse"),
    ("dbt", "data_transformation"),
    ("Segment", "cdp"),
    ("HubSpot", "crm"),
    ("Salesforce", "crm"),
    ("Databricks", "data_warehouse"),
)
_REGIONS = ("EMEA", "APAC", "LATAM", "North America")


def _intent_chunk(w: _World, c: int, acc: dict) -> pl.DataFrame:
    rng = w.rng(c, 5)
    n = acc["start"].shape[0]
    start = acc["start"]
    # planted: one funding round 1..89 days before start
    fh = np.flatnonzero(acc["b_funding_round"])
    f_t = start[fh] - rng.integers(DAY, (_FUNDING_DAYS - 1) * DAY, fh.shape[0])
    # random: ~40% of the domains, 1-4 signals of any type anywhere in [S - 90 d, E)
    has = rng.random(n) < 0.40
    cnt = np.where(has, np.minimum(rng.geometric(0.55, n), 4), 0)
    ra = np.repeat(np.arange(n), cnt)
    r_type = rng.choice(len(SIGNAL_TYPES), size=ra.shape[0], p=(0.16, 0.18, 0.34, 0.2, 0.12))
    r_t = (w.S - _FUNDING_DAYS * DAY + rng.random(ra.shape[0]) * (w.E - w.S + _FUNDING_DAYS * DAY - 1)).astype(np.int64)
    # no account gets an unplanted funding round between 91 days before and 15 days after its start
    bad = (r_type == 0) & (r_t >= start[ra] - (_FUNDING_DAYS + 1) * DAY) & (r_t < start[ra] + 15 * DAY)
    r_t = np.where(bad, start[ra] - (_FUNDING_DAYS + 1) * DAY - rng.integers(DAY, 200 * DAY, ra.shape[0]), r_t)
    # unknown prospect domains (never product accounts): their signals resolve to nothing
    n_pros = max(1, n // 20)
    pg = acc["g"][:n_pros]
    p_type = rng.choice(len(SIGNAL_TYPES), size=n_pros)
    p_t = (w.S + rng.random(n_pros) * (w.E - w.S - 1)).astype(np.int64)
    pros_dom = _lookup(_ROOTS, pg % len(_ROOTS)) + _lookup(_PREFIXES, (pg // len(_ROOTS)) % len(_PREFIXES)) + ".net"

    dom = pl.concat([acc["domain"].gather(fh), acc["domain"].gather(ra), pros_dom])
    typ = np.concatenate([np.zeros(fh.shape[0], np.int64), r_type, p_type])
    t = np.concatenate([f_t, r_t, p_t])
    m = typ.shape[0]
    k1 = rng.integers(0, 6, m)
    amount = (_ROUND_AMOUNTS[np.minimum(k1, 4)] * rng.uniform(0.6, 1.6, m) // 100_000 * 100_000).astype(np.int64)
    job = rng.integers(0, len(_JOB_TITLES), m)
    tech = rng.integers(0, len(_TECH), m)
    payload = pl.select(
        pl.when(pl.lit(pl.Series(values=typ)) == 0)
        .then(
            pl.concat_str(
                [
                    pl.lit('{"round_type": "'),
                    pl.lit(_lookup(_ROUNDS, np.minimum(k1, 4))),
                    pl.lit('", "amount": '),
                    pl.lit(pl.Series(values=amount)).cast(pl.String),
                    pl.lit("}"),
                ]
            )
        )
        .when(pl.lit(pl.Series(values=typ)) == 1)
        .then(
            pl.concat_str(
                [
                    pl.lit('{"title": "'),
                    pl.lit(_lookup(_EXEC_TITLES, k1)),
                    pl.lit('", "change": "'),
                    pl.lit(_lookup(("hired", "departed"), k1 % 2)),
                    pl.lit('"}'),
                ]
            )
        )
        .when(pl.lit(pl.Series(values=typ)) == 2)
        .then(
            pl.concat_str(
                [
                    pl.lit('{"title": "'),
                    pl.lit(_lookup([j[0] for j in _JOB_TITLES], job)),
                    pl.lit('", "department": "'),
                    pl.lit(_lookup([j[1] for j in _JOB_TITLES], job)),
                    pl.lit('", "count": '),
                    pl.lit(pl.Series(values=1 + k1 % 4)).cast(pl.String),
                    pl.lit("}"),
                ]
            )
        )
        .when(pl.lit(pl.Series(values=typ)) == 3)
        .then(
            pl.concat_str(
                [
                    pl.lit('{"technology": "'),
                    pl.lit(_lookup([x[0] for x in _TECH], tech)),
                    pl.lit('", "category": "'),
                    pl.lit(_lookup([x[1] for x in _TECH], tech)),
                    pl.lit('"}'),
                ]
            )
        )
        .otherwise(
            pl.concat_str(
                [
                    pl.lit('{"region": "'),
                    pl.lit(_lookup(_REGIONS, k1 % 4)),
                    pl.lit('", "kind": "'),
                    pl.lit(_lookup(("new_office", "new_market"), k1 % 2)),
                    pl.lit('"}'),
                ]
            )
        )
    ).to_series()
    src_alt = rng.random(m) < 0.25
    source = np.select(
        [typ == 0, typ == 1, typ == 2, typ == 3],
        [np.where(src_alt, 1, 0), np.full(m, 2), np.where(src_alt, 3, 2), np.full(m, 4)],
        np.where(src_alt, 5, 0),
    )
    df = pl.DataFrame(
        {
            "t": t,
            "dom": dom,
            "type": _lookup(SIGNAL_TYPES, typ),
            "src": _lookup(("crunchbase", "pitchbook", "linkedin", "indeed", "builtwith", "news"), source),
            "payload": payload,
        }
    ).sort("t", maintain_order=True)
    return df.select(
        pl.concat_str(
            [
                pl.lit('{"company_domain": "'),
                pl.col("dom"),
                pl.lit('", "signal_type": "'),
                pl.col("type"),
                pl.lit('", "occurred_at": "'),
                _fmt_iso_s(pl.col("t"), "+00:00"),
                pl.lit('", "source": "'),
                pl.col("src"),
                pl.lit('", "payload": '),
                pl.col("payload"),
                pl.lit("}"),
            ]
        ).alias("line")
    )


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


class _TextSink:
    """A CSV or JSON-lines file written chunk by chunk (optionally gzip, deterministic: no mtime/name)."""

    def __init__(self, path: Path, gz: bool = False) -> None:
        self._raw = open(path, "wb")  # noqa: SIM115 - the sink owns the file and closes it in close()
        self._f = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0) if gz else self._raw
        self._header = True

    def write_csv(self, df: pl.DataFrame) -> None:
        df.write_csv(self._f, include_header=self._header)
        self._header = False

    def write_lines(self, df: pl.DataFrame) -> None:
        if df.height:
            df.write_csv(self._f, include_header=False, quote_style="never")

    def close(self) -> None:
        if self._f is not self._raw:
            self._f.close()
        self._raw.close()


# --------------------------------------------------------------------------------------------------
# For tests and diagnostics: the per-account world without writing anything
# --------------------------------------------------------------------------------------------------


def _simulate_accounts(
    n_accounts: int, seed: int = 7, start_date: str = "2025-01-01", months: int = 12
) -> pl.DataFrame:
    """The per-account truth `generate_demo` uses (same seed, same accounts), one row per account.

    Columns: account (global index), domain, record_id (null outside the CRM), crm, industry (null
    outside the CRM), start, conv (epoch s; null unless converted in the data), conv_planned (the would-be
    conversion time every account draws, converter or not: conv when it converts), converted,
    latent_converter, activity, activity_z (standardised log activity: the conversion logit's activity
    term is log(ACTIVITY_CONVERSION_OR)·activity_z), first_half and one boolean per planted behaviour.
    """
    world = _World.make(seed, start_date, months)
    frames = []
    for c in range(-(-n_accounts // CHUNK_ACCOUNTS)):
        g0 = c * CHUNK_ACCOUNTS
        a = _accounts_chunk(world, c, g0, min(CHUNK_ACCOUNTS, n_accounts - g0))
        frames.append(
            pl.DataFrame(
                {
                    "account": a["g"],
                    "domain": a["domain"],
                    "record_id": a["record_id"].set(pl.Series(values=~a["crm"]), None),
                    "crm": a["crm"],
                    "industry": _lookup(INDUSTRIES, a["industry"]).set(pl.Series(values=~a["crm"]), None),
                    "start": a["start"],
                    "conv": pl.Series(values=a["conv"]).set(pl.Series(values=~a["converted"]), None),
                    "conv_planned": a["conv"],
                    "converted": a["converted"],
                    "latent_converter": a["latent"],
                    "activity": a["activity"],
                    "activity_z": a["activity_z"],
                    "first_half": a["first_half"],
                    "invited_teammate": a["b_invited_teammate"],
                    "api_key_created": a["b_api_key_created"],
                    "dashboard_shared": a["b_dashboard_shared"],
                    "integrations_page": a["b_integrations_page"],
                    "fintech": a["fintech"],
                    "funding_round": a["b_funding_round"],
                    "report_exported": a["b_report_exported"],
                    "sso_configured": a["b_sso_configured"],
                }
            )
        )
    return pl.concat(frames)


def _check_vocabulary() -> None:
    names = {p + r for p in _PREFIXES for r in _ROOTS}
    assert len(names) == len(_PREFIXES) * len(_ROOTS), "prefix+root concatenations must be unique"
    assert math.gcd(_NAME_STEP, _N_NAMES) == 1 and math.gcd(_USER_STEP, _NAME_COMBOS) == 1
    assert len(NOISE_EVENTS) == len(set(NOISE_EVENTS)) == 30
    assert len(set(EVENT_NAMES)) == len(EVENT_NAMES)


_check_vocabulary()
