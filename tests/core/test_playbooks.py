"""Playbook core: configuration errors, rule evaluation against a brute-force reference, holdout
assignment (deterministic, uniform, reproducible in SQL), idempotency keys, templates, planning."""

import json
import re
from datetime import date, datetime, timedelta, timezone
from urllib.parse import quote

import duckdb
import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beton_pipeline.core.playbooks import (
    AccountMatchedEvent,
    AttioRecordUpdate,
    DestinationSettings,
    HealthChangedEvent,
    PlaybookConfigError,
    PlaybookWhen,
    SlackAccountMessage,
    SlackHealthMessage,
    WebhookURLError,
    account_values,
    check_url,
    health_changes,
    holdout_draw,
    idempotency_key,
    is_held_out,
    is_stale,
    match_accounts,
    matched_account,
    parse_playbook_config,
    plan_account_actions,
    plan_health_actions,
    render,
    score_entries,
    with_signal_ids,
)
from beton_pipeline.store.scoring import SCORE_ENTRY
from tests.store.score_entries import as_old_frame

SLACK = {"type": "slack", "channel": "#revenue"}
DAY = date(2026, 3, 2)


def playbook(**over) -> dict:
    base = {"name": "hot-accounts", "when": {"min_score": 0.5}, "then": [SLACK]}
    base.update(over)
    return base


HEALTH_OF_ENTRY = (None, "healthy", "insufficient_data", "degrading", "broken")
"""An entry's health that day (None: a row written before scores were weighted by health, without the key)."""


def scores_frame(n: int = 400, seed: int = 1, with_health: bool = False, as_json: bool = False) -> pl.DataFrame:
    """`n` scored accounts, each with up to three signals fired, as `beton.account_scores` holds them: the
    entries as lists of structs, or (`as_json`) the JSON text an older beton wrote."""
    rng = np.random.default_rng(seed)
    signals = [f"sig_{i}" for i in range(6)]
    fired = []
    for _ in range(n):
        chosen = rng.choice(signals, size=rng.integers(0, 4), replace=False)
        entries = [
            {
                "signal_id": str(s),
                "definition": f"def of {s}",
                "fired_at": datetime(2026, 3, 1, 8, 15, 30, 500),
                "contribution": 0.1,
                "health": None,
                "weight_factor": None,
                "weight_note": None,
            }
            for s in chosen
        ]
        if with_health:
            for entry in entries:
                entry["health"] = HEALTH_OF_ENTRY[rng.integers(0, len(HEALTH_OF_ENTRY))]
        fired.append(entries)
    score = rng.random(n)
    score[rng.random(n) < 0.05] = np.nan
    entries = pl.List(SCORE_ENTRY)
    frame = pl.DataFrame(
        {
            "account_id": [f"rec_{i:05d}" for i in range(n)],
            "score": score,
            "signals_fired": fired,
            "top_contributions": fired,
            "domain": [f"acct{i}.io" for i in range(n)],
            "company_name": [f"Company {i}" for i in range(n)],
            "is_crm_company": (np.arange(n) % 3 != 0).tolist(),
        },
        schema_overrides={"signals_fired": entries, "top_contributions": entries},
    ).with_columns(pl.col("score").fill_nan(None))
    frame = frame.with_columns(pl.col("score").rank("ordinal", descending=True).cast(pl.Int64).alias("score_rank"))
    return as_old_frame(frame) if as_json else frame


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------
def test_a_valid_config_parses_with_defaults():
    cfg = parse_playbook_config(
        [playbook(), {"name": "health", "when": {"health_changed_to": ["broken"]}, "then": [SLACK]}],
        [
            {
                "name": "onboarding",
                "flag": "new-onboarding",
                "goal_event": "api_key_created",
                "variants": ["control", "test"],
            }
        ],
        {"webhook_allowed_hosts": ["hooks.example.com"]},
    )
    pb = cfg.playbook("hot-accounts")
    assert pb.kind == "account" and pb.effective_holdout_fraction == 0.1 and pb.max_attempts == 6
    assert cfg.playbook("health").effective_holdout_fraction == 0.0
    assert [p.name for p in cfg.account_playbooks] == ["hot-accounts"] and [p.name for p in cfg.health_playbooks] == [
        "health"
    ]
    assert cfg.destinations.max_action_age_days == 3
    with pytest.raises(KeyError, match="no playbook named"):
        cfg.playbook("nope")


@pytest.mark.parametrize(
    "raw, message",
    [
        (playbook(when={}), "give at least one condition"),
        (playbook(when={"min_score": 0.5, "health_changed_to": ["broken"]}), "not both"),
        (playbook(when={"min_score": 1.5}), "min_score"),
        (playbook(then=[]), "then"),
        (playbook(then=[{"type": "webhook", "name": "x", "url": "ftp://example.com/hook"}]), "http"),
        (playbook(then=[{"type": "slack", "channel": "#a", "template": "hi $nope"}]), "unknown placeholder"),
        (
            playbook(then=[{"type": "slack", "channel": "#a", "template": "${account_id.__class__}"}]),
            "invalid template",
        ),
        (playbook(then=[SLACK, SLACK]), "share a destination"),
        (playbook(then=[{"type": "pagerduty"}]), "then"),
        (playbook(name="Hot Accounts"), "name"),
        (
            {"name": "h", "when": {"health_changed_to": ["broken"]}, "then": [{"type": "attio", "attribute": "x"}]},
            "account playbook",
        ),
        (
            {"name": "h", "when": {"health_changed_to": ["broken"]}, "then": [SLACK], "holdout_fraction": 0.2},
            "account playbooks only",
        ),
        (playbook(holdout_fraction=1.0), "holdout_fraction"),
        (playbook(extra_key=1), "extra_key"),
    ],
)
def test_bad_playbooks_name_the_field(raw, message):
    with pytest.raises(PlaybookConfigError, match=message) as exc:
        parse_playbook_config([raw])
    assert "playbooks[0]" in str(exc.value)


def test_duplicates_allowlist_and_experiment_errors():
    with pytest.raises(PlaybookConfigError, match="duplicate playbook name"):
        parse_playbook_config([playbook(), playbook()])
    hook = {"type": "webhook", "name": "crm", "url": "https://evil.example.net/x"}
    with pytest.raises(PlaybookConfigError, match="not in destinations.webhook_allowed_hosts"):
        parse_playbook_config([playbook(then=[hook])], destinations={"webhook_allowed_hosts": ["hooks.example.com"]})
    with pytest.raises(PlaybookConfigError, match=r"experiments\[0\].*control"):
        parse_playbook_config(experiments=[{"name": "e", "flag": "f", "goal_event": "g", "variants": ["a", "b"]}])
    with pytest.raises(PlaybookConfigError, match="weights"):
        parse_playbook_config(
            experiments=[{"name": "e", "flag": "f", "goal_event": "g", "variants": ["control", "b"], "weights": [1]}]
        )
    with pytest.raises(PlaybookConfigError, match="crm_record_url"):
        parse_playbook_config(destinations={"crm_record_url": "https://crm/$nope"})


def test_config_reads_settings_without_experiments_field():
    from beton_pipeline.settings import Settings

    cfg = Settings(playbooks=(playbook(),)).playbook_config()
    assert cfg.experiments == () and cfg.playbooks[0].name == "hot-accounts"


# ------------------------------------------------------------------------------------------------
# rules
# ------------------------------------------------------------------------------------------------
def _reference(frame: pl.DataFrame, when: PlaybookWhen) -> set[str]:
    """The rule, one row at a time in plain Python (an independent implementation)."""
    out = set()
    for row in frame.iter_rows(named=True):
        fired = row["signals_fired"]
        entries = json.loads(fired) if isinstance(fired, str) else fired
        ids = {s["signal_id"] for s in entries if s.get("health") != "broken"}
        ok = True
        if when.min_score is not None:
            ok &= row["score"] is not None and row["score"] >= when.min_score
        if when.top_n is not None:
            ok &= row["score_rank"] is not None and row["score_rank"] <= when.top_n
        if when.any_signals:
            ok &= bool(ids & set(when.any_signals))
        if when.all_signals:
            ok &= set(when.all_signals) <= ids
        if ok:
            out.add(row["account_id"])
    return out


@pytest.mark.parametrize(
    "when",
    [
        {"min_score": 0.7},
        {"top_n": 25},
        {"any_signals": ["sig_1", "sig_4"]},
        {"all_signals": ["sig_2", "sig_3"]},
        {"any_signals": ["sig_0"], "min_score": 0.3},
        {"all_signals": ["sig_5"], "top_n": 100, "min_score": 0.2},
        {"any_signals": ["sig_missing"]},
    ],
)
@pytest.mark.parametrize("with_health", [False, True])
@pytest.mark.parametrize("as_json", [False, True])
def test_match_accounts_equals_brute_force(when, with_health, as_json):
    """With health in the entries, an account never qualifies through a signal broken that day; the entries
    read the same as lists and as an older beton's JSON text."""
    frame = scores_frame(with_health=with_health, as_json=as_json)
    rule = PlaybookWhen(**when)
    matched = match_accounts(frame, rule)
    assert set(matched["account_id"].to_list()) == _reference(frame, rule)
    ranks = matched["score_rank"].drop_nulls().to_list()
    assert ranks == sorted(ranks) and matched["score_rank"].null_count() == 0 or matched["score_rank"][-1] is None


@pytest.mark.parametrize("dtype", [pl.String, pl.List(SCORE_ENTRY)])
def test_match_accounts_on_empty_and_null_signals(dtype):
    frame = scores_frame(5).with_columns(pl.lit(None, dtype=dtype).alias("signals_fired"))
    assert match_accounts(frame, PlaybookWhen(any_signals=("sig_1",))).is_empty()
    assert match_accounts(frame.head(0), PlaybookWhen(min_score=0.1)).is_empty()
    empty = scores_frame(5).with_columns(pl.lit([], dtype=pl.List(SCORE_ENTRY)).alias("signals_fired"))
    assert with_signal_ids(empty)["signal_ids"].to_list() == [[]] * 5
    assert match_accounts(empty, PlaybookWhen(any_signals=("sig_1",))).is_empty()


@pytest.mark.parametrize("as_json", [False, True])
def test_a_broken_signal_is_not_shown_as_a_reason(as_json):
    fired = [
        {
            "signal_id": "sig_b",
            "definition": "b",
            "contribution": 0.0,
            "health": "broken",
            "weight_note": "weight zero",
        },
        {"signal_id": "sig_d", "definition": "d", "contribution": 0.2, "health": "degrading"},
        {"signal_id": "sig_old", "definition": "old", "contribution": 0.1},
    ]
    row = {"account_id": "a1", "score": 0.4, "score_rank": 1, "signals_fired": json.dumps(fired) if as_json else fired}
    account = matched_account({**row, "top_contributions": "[]" if as_json else []}, None)
    assert [s["signal_id"] for s in account.top_signals] == ["sig_d", "sig_old"]
    assert account_values(row, "p", DAY, None)["signal_ids"] == "sig_d, sig_old"


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_FLOAT = st.floats(allow_nan=False, allow_infinity=False, width=64)
_ENTRY = st.fixed_dictionaries(
    {
        "signal_id": _TEXT,
        "definition": st.none() | _TEXT,
        "fired_at": st.none() | st.datetimes(datetime(1971, 1, 1), datetime(2200, 12, 31)),
        "contribution": _FLOAT.map(lambda x: round(x, 4)),
        "health": st.none() | st.sampled_from(HEALTH_OF_ENTRY[1:]),
        "weight_factor": st.none() | _FLOAT,
        "weight_note": st.none() | _TEXT,
    }
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.none() | st.lists(_ENTRY, max_size=4), min_size=1, max_size=5))
def test_score_entries_of_typed_lists_are_the_json_an_older_beton_wrote(cells):
    """Invariant: an explanation cell read as a typed list gives the very JSON (same keys, values, order;
    same bytes once dumped) as the text an older beton stored for it, and null reads as no entries."""
    typed = pl.DataFrame({"signals_fired": cells}, schema={"signals_fired": pl.List(SCORE_ENTRY)})
    text = as_old_frame(typed)
    for (lst,), (txt,) in zip(typed.iter_rows(), text.iter_rows(), strict=True):
        got = score_entries(lst)
        assert got == score_entries(txt) == (json.loads(txt) if txt is not None else [])
        assert json.dumps(got, sort_keys=True, ensure_ascii=False) == json.dumps(
            score_entries(txt), sort_keys=True, ensure_ascii=False
        )


def test_score_entries_edge_cases():
    utc_noon = datetime(2026, 3, 1, 12, 0, 0, 999_999, tzinfo=timezone(timedelta(hours=2)))
    assert score_entries([{"signal_id": "a", "fired_at": utc_noon}]) == [
        {"signal_id": "a", "fired_at": "2026-03-01T10:00:00Z"}
    ]
    for nothing in (None, "", "not json", '{"signal_id": "a"}', "[1, null]", []):
        assert score_entries(nothing) == []


def test_health_changes():
    health = pl.DataFrame(
        {
            "day": [date(2026, 1, d) for d in (1, 2, 3, 4)] * 2,
            "signal_id": ["a"] * 4 + ["b"] * 4,
            "health": ["healthy", "degrading", "degrading", "broken", "broken", "broken", "healthy", "broken"],
        }
    )
    changes = health_changes(health, ("degrading", "broken"))
    got = sorted(
        (r["signal_id"], r["day"].day, r["previous_health"], r["health"]) for r in changes.iter_rows(named=True)
    )
    # b's first day is broken but has no previous day: not a change; a's 3rd day repeats: not a change
    assert got == [("a", 2, "healthy", "degrading"), ("a", 4, "degrading", "broken"), ("b", 4, "healthy", "broken")]
    assert health_changes(health, ("broken",), signals=("a",)).height == 1


# ------------------------------------------------------------------------------------------------
# holdout and keys
# ------------------------------------------------------------------------------------------------
def test_holdout_is_deterministic_uniform_and_per_playbook():
    ids = [f"acct_{i}" for i in range(100_000)]
    u = holdout_draw("p", ids)
    assert np.array_equal(u, holdout_draw("p", ids)) and u.min() >= 0 and u.max() < 1
    held = is_held_out("p", ids, 0.1)
    # Binomial(100000, 0.1): sd ~ 95, so 6 sd is ~ 570
    assert abs(held.sum() - 10_000) < 570
    # deciles are uniform (chi-square, 9 dof: 99.99th percentile is ~ 33.7)
    counts = np.histogram(u, bins=10, range=(0, 1))[0]
    assert ((counts - 10_000) ** 2 / 10_000).sum() < 33.7
    other = is_held_out("q", ids, 0.1)
    assert abs((held & other).sum() - 1_000) < 200  # independent across playbooks
    assert not is_held_out("p", ids[:10], 0.0).any()


def test_holdout_formula_matches_duckdb_sha256():
    ids = ["rec_a", "acme.io", "ünïcode.de", "x" * 100]
    sql = duckdb.sql(
        "select ('0x' || left(sha256('hot' || chr(31) || id), 16))::ubigint as h from unnest(?) as t(id)", params=[ids]
    ).fetchall()
    expected = np.array([float(r[0]) for r in sql]) / 2.0**64
    np.testing.assert_allclose(holdout_draw("hot", ids), expected, rtol=0, atol=1e-15)


def test_idempotency_key_changes_with_every_part():
    k = idempotency_key("p", "a", date(2026, 1, 1), "slack:#x")
    assert k == idempotency_key("p", "a", "2026-01-01", "slack:#x") and len(k) == 32
    others = {
        idempotency_key(*parts)
        for parts in [
            ("q", "a", "2026-01-01", "slack:#x"),
            ("p", "b", "2026-01-01", "slack:#x"),
            ("p", "a", "2026-01-02", "slack:#x"),
            ("p", "a", "2026-01-01", "slack:#y"),
        ]
    }
    assert k not in others and len(others) == 4


def test_render_substitutes_only():
    assert render("$a and ${b}$$", {"a": "<x>", "b": 1}) == "<x> and 1$"
    assert render("$a", {"a": "${b}"}) == "${b}"  # a value is never re-expanded


def test_is_stale():
    assert not is_stale(date(2026, 1, 7), date(2026, 1, 10), 3)
    assert is_stale(date(2026, 1, 6), date(2026, 1, 10), 3)
    assert not is_stale(date(2020, 1, 1), date(2026, 1, 10), None)


# ------------------------------------------------------------------------------------------------
# planning
# ------------------------------------------------------------------------------------------------
def test_plan_account_actions_rows_holdout_values_and_crm_only_attio():
    cfg = parse_playbook_config(
        [
            playbook(
                when={"top_n": 200},
                holdout_fraction=0.25,
                then=[
                    SLACK,
                    {"type": "attio", "attribute": "beton_score"},
                    {"type": "webhook", "name": "crm", "url": "https://hooks.example.com/b"},
                ],
            )
        ],
        destinations={"crm_record_url": "https://app.attio.com/acme/company/$record_id/overview"},
    )
    pb = cfg.playbooks[0]
    frame = scores_frame().with_columns(
        pl.when(pl.col("score_rank") == 1)
        .then(pl.lit("<!channel> & co"))
        .otherwise(pl.col("company_name"))
        .alias("company_name")
    )
    matched = match_accounts(frame, pb.when)
    plan = plan_account_actions(pb, matched, DAY, cfg.destinations)
    crm = matched.filter(pl.col("is_crm_company")).height
    assert len(plan) == 2 * matched.height + crm  # slack + webhook for all, attio for CRM companies
    assert len({a.idempotency_key for a in plan}) == len(plan)
    held = [a for a in plan if a.held_out]
    assert {a.status for a in held} == {"held_out"} and {a.status for a in plan if not a.held_out} == {"pending"}
    held_accounts = {a.account_id for a in held}
    expected_held = {
        a
        for a, h in zip(matched["account_id"], is_held_out(pb.name, matched["account_id"].to_list(), 0.25), strict=True)
        if h
    }
    assert held_accounts == expected_held and 20 < len(held_accounts) < 80

    top = next(a for a in plan if a.destination_type == "slack" and a.account_id == matched["account_id"][0])
    assert isinstance(top.message, SlackAccountMessage) and top.destination == "slack:#revenue"
    assert top.message.values["company"] == "<!channel> & co"  # raw: the Slack renderer escapes
    assert top.message.account.company == "<!channel> & co" and top.message.account.score_rank == 1
    assert top.message.account.crm_url.startswith("https://app.attio.com/acme/company/rec_")
    assert top.message.headline_template.startswith("*$company* matched")
    attio = [a.message for a in plan if a.destination_type == "attio"]
    assert all(isinstance(m, AttioRecordUpdate) and m.attribute == "beton_score" for m in attio)
    first = next(a for a in plan if a.destination_type == "attio")
    assert isinstance(first.message.value, float) and first.message.record_id == first.account_id
    hooks = [a for a in plan if a.destination_type == "webhook"]
    assert all(
        isinstance(a.message, AccountMatchedEvent) and a.message.idempotency_key == a.idempotency_key for a in hooks
    )

    assert top.message.values["signals"] == "; ".join(s["definition"] for s in top.message.account.top_signals)
    names = {f"sig_{i}": f"Did thing {i} 3+ times" for i in range(6)}
    named = plan_account_actions(pb, matched, DAY, cfg.destinations, signal_names=names)[0].message
    shown = named.account.top_signals
    assert shown and all(s["name"] == names[s["signal_id"]] for s in shown)  # plain names, for Slack and $signals
    assert named.values["signals"] == "; ".join(names[s["signal_id"]] for s in shown)
    assert named.account.top_contributions == top.message.account.top_contributions  # stored values untouched

    dry = plan_account_actions(pb, matched, DAY, cfg.destinations, dry_run=True)
    assert {a.status for a in dry} == {"dry_run"} and sum(a.held_out for a in dry) == len(held)
    assert plan_account_actions(pb, matched.head(0), DAY, cfg.destinations) == []


def test_attio_value_that_is_not_a_number_names_the_playbook():
    cfg = parse_playbook_config(
        [playbook(holdout_fraction=0, then=[{"type": "attio", "attribute": "beton_tier", "value": "$company"}])]
    )
    matched = match_accounts(scores_frame(), cfg.playbooks[0].when).filter(pl.col("is_crm_company"))
    with pytest.raises(PlaybookConfigError, match="hot-accounts: attio value"):
        plan_account_actions(cfg.playbooks[0], matched, DAY, cfg.destinations)


def test_plan_health_actions():
    hook = {"type": "webhook", "name": "alerts", "url": "https://hooks.example.com/h"}
    cfg = parse_playbook_config([{"name": "health", "when": {"health_changed_to": ["broken"]}, "then": [SLACK, hook]}])
    health = pl.DataFrame(
        {
            "day": [date(2026, 1, 1), DAY],
            "signal_id": ["sig_1", "sig_1"],
            "definition": ["<x>", "<x>"],
            "health": ["healthy", "broken"],
            "lift": [2.0, 0.9],
            "lift_ci_low": [1.5, float("inf")],
            "lift_ci_high": [2.5, None],
            "backtest_lift": [2.4, 2.4],
        }
    )
    changes = health_changes(health, ("broken",))
    plan = plan_health_actions(cfg.playbooks[0], changes, DAY, DestinationSettings())
    assert [(a.signal_id, a.account_id, a.destination_type, a.status) for a in plan] == [
        ("sig_1", None, "slack", "pending"),
        ("sig_1", None, "webhook", "pending"),
    ]
    slack, event = plan[0].message, plan[1].message
    assert isinstance(slack, SlackHealthMessage) and isinstance(event, HealthChangedEvent)
    assert slack.values["previous_health"] == "healthy" and slack.values["definition"] == "<x>"
    assert (slack.values["lift"], slack.values["lift_ci_low"], slack.values["lift_ci_high"]) == ("0.90", "—", "—")
    assert event.change.previous_health == "healthy" and event.change.lift_ci_low == float("inf")
    assert plan_health_actions(cfg.playbooks[0], changes, date(2026, 1, 1), DestinationSettings()) == []
    assert slack.values["signal_name"] == "<x>"  # no name given: the definition
    named = plan_health_actions(
        cfg.playbooks[0], changes, DAY, DestinationSettings(), signal_names={"sig_1": "Invites"}
    )
    assert named[0].message.values["signal_name"] == "Invites"


def test_selected_playbooks():
    cfg = parse_playbook_config([playbook(), playbook(name="off", enabled=False)])
    assert [p.name for p in cfg.selected()] == ["hot-accounts"]
    assert [p.name for p in cfg.selected(["off", "hot-accounts"])] == ["hot-accounts"]
    with pytest.raises(PlaybookConfigError, match="unknown playbook"):
        cfg.selected(["nope"])


def test_url_rules():
    assert check_url("https://hooks.example.com/x") == "https://hooks.example.com/x"
    for url in (
        "ftp://example.com/x",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "example.com/x",
        "https://user:pw@example.com/",
    ):
        with pytest.raises(WebhookURLError):
            check_url(url)
    allow = ("hooks.example.com", "*.internal.example")
    check_url("https://hooks.example.com/a", allow)
    check_url("http://a.b.internal.example/a", allow)
    for url in ("https://evil.com/a", "https://internal.example/a", "https://hooks.example.com.evil.com/a"):
        with pytest.raises(WebhookURLError):
            check_url(url, allow)


def test_with_the_apps_address_messages_link_each_accounts_and_signals_page():
    base = "https://beton.example.com/app"
    template = {**SLACK, "template": "$company: $app_url"}
    cfg = parse_playbook_config([playbook(when={"top_n": 3}, then=[template])], app_base_url=base)
    frame = scores_frame().with_columns(
        pl.when(pl.col("score_rank") == 1).then(pl.lit("rec/1 x")).otherwise(pl.col("account_id")).alias("account_id")
    )
    matched = match_accounts(frame, cfg.playbooks[0].when)
    plan = plan_account_actions(cfg.playbooks[0], matched, DAY, cfg.destinations, app_base_url=cfg.app_base_url)
    urls = [a.message.account.app_url for a in plan]
    assert urls[0] == f"{base}/accounts/rec%2F1%20x"  # the id stays one path segment
    assert urls == [f"{base}/accounts/{quote(a, safe='')}" for a in matched["account_id"]]
    assert [a.message.values["app_url"] for a in plan] == urls
    unlinked = plan_account_actions(cfg.playbooks[0], matched, DAY, cfg.destinations)
    assert {a.message.account.app_url for a in unlinked} == {None} and unlinked[0].message.values["app_url"] == ""

    health = parse_playbook_config([{"name": "health", "when": {"health_changed_to": ["broken"]}, "then": [SLACK]}])
    changes = health_changes(
        pl.DataFrame(
            {
                "day": [date(2026, 1, 1), DAY],
                "signal_id": ["sig_1", "sig_1"],
                "definition": ["x", "x"],
                "health": ["healthy", "broken"],
                "lift": [2.0, 0.9],
                "lift_ci_low": [1.5, 0.5],
                "lift_ci_high": [2.5, 1.2],
                "backtest_lift": [2.4, 2.4],
            }
        ),
        ("broken",),
    )
    (action,) = plan_health_actions(health.playbooks[0], changes, DAY, DestinationSettings(), app_base_url=base)
    assert action.message.change.app_url == action.message.values["app_url"] == f"{base}/signals/sig_1"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("beton.example.com", "http(s)://host"),
        ("https://u:p@beton.example.com", "plain address"),
        ("https://b/?x=1", "plain"),
    ],
)
def test_the_apps_address_is_a_plain_http_url(url, says):
    from beton_pipeline.settings import Settings

    assert Settings(app={"base_url": "https://beton.example.com/"}).playbook_config().app_base_url == (
        "https://beton.example.com"
    )
    with pytest.raises(ValueError, match=re.escape(says)):
        Settings(app={"base_url": url})
