"""End to end: the whole graph materialised in-process on generated demo data (conftest.pipeline_run)."""

import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest

from beton_pipeline.settings import load_settings

CHECKER = Path(__file__).resolve().parents[3] / "shared" / "tools" / "check_signals_table.py"


@pytest.fixture
def con(pipeline_run):
    """A read-only connection per test: an in-process writer (a re-materialisation) cannot coexist with it."""
    c = duckdb.connect(str(pipeline_run.warehouse), read_only=True)
    yield c
    c.close()


def test_raw_staging_and_mart_tables_exist(con):
    tables = {
        f"{s}.{t}" for s, t in con.sql("select table_schema, table_name from information_schema.tables").fetchall()
    }
    for expected in (
        "raw.raw_events",
        "raw.raw_crm_companies",
        "raw.raw_billing_invoices",
        "staging.stg_posthog__events",
        "intermediate.int_events_resolved",
        "marts.account_features",
        "marts.account_outcomes",
        "marts.account_event_features",
        "beton.quarantine",
        "beton.signal_cohort_counts",
        "beton.signals",
    ):
        assert expected in tables, expected
    assert con.sql("select count(*) from marts.account_outcomes").fetchall()[0][0] > 0


def test_planted_bad_rows_are_quarantined_or_dropped(con, pipeline_run):
    bad = pipeline_run.truth["bad_rows"]["events"]
    reasons = dict(
        con.sql("select reason, count(*) from beton.quarantine where source_table = 'events' group by 1").fetchall()
    )
    assert reasons.get("timestamp is empty", 0) == bad["null_timestamp"]
    assert reasons.get("properties: malformed JSON", 0) == bad["malformed_properties"]
    assert (
        reasons.get("duplicate uuid: an earlier row with the same key was kept (first wins)", 0)
        == bad["duplicate_uuid"]
    )
    file_rows = con.sql(f"select count(*) from read_parquet('{pipeline_run.source_dir}/events/*.parquet')").fetchall()[
        0
    ][0]
    loaded = con.sql("select count(*) from raw.raw_events").fetchall()[0][0]
    assert (
        file_rows - loaded - sum(reasons.values()) == bad["exact_duplicates"]
    )  # read = loaded + quarantined + duplicates
    negative = con.sql(
        "select count(*) from beton.quarantine where source_table = 'billing_invoices' and reason like 'amount_paid: below 0%'"
    ).fetchall()[0][0]
    assert negative == pipeline_run.truth["bad_rows"]["billing_invoices"]["negative_amount"]


def test_leaking_event_never_reaches_features_or_signals(con, pipeline_run):
    for leak in pipeline_run.truth["leaks"]:
        event = leak["event"]
        assert con.sql("select count(*) from raw.raw_events where event = ?", params=[event]).fetchall()[0][0] > 0
        assert (
            con.sql(
                "select count(*) from marts.account_event_features where event_name = ?", params=[event]
            ).fetchall()[0][0]
            == 0
        )
        assert (
            con.sql("select count(*) from beton.signals where definition like ?", params=[f"%`{event}`%"]).fetchall()[
                0
            ][0]
            == 0
        )


def test_identity_resolution_uses_every_rule_and_counts_the_unresolved(pipeline_run):
    identity = pipeline_run.summary.identity
    assert set(identity) == {"group", "email_domain", "crm_person", "unresolved"}
    assert (
        identity["group"] > identity["email_domain"] > 0 and identity["crm_person"] > 0 and identity["unresolved"] > 0
    )


def _neighbours(thresholds: tuple[int, ...], planted: int) -> set[int]:
    ordered = sorted(thresholds)
    i = ordered.index(planted)
    return set(ordered[max(0, i - 1) : i + 2])


SHORT_OF_HOLDOUT_POWER = "replicated in the holdout, but not among equally active accounts"


def _planted_family(planted: dict) -> str:
    kind = planted["kind"]
    if kind == "event_count":
        return f"event:{planted['event']}"
    if kind == "event_property":
        return f"property:{planted['event']}:{planted['property']}={planted['value']}"
    if kind == "crm_attribute":
        return f"attribute:{planted['attribute']}={planted['value']}"
    return f"intent:{planted['signal_type']}"


def test_every_planted_signal_is_enabled_at_its_threshold(con, pipeline_run):
    """With `count_thresholds: auto` (the default) every integer up to 10 is a candidate, so a planted count
    effect is enabled at exactly its threshold; with an explicit list, at it or a neighbouring list entry.

    The behaviour that matters only beyond activity (`sso_configured`, overall lift ~1.1) is enabled on its
    adjusted result. One planted behaviour may fall short of the holdout's power among equally active
    accounts (seed 7: 2,029 holdout accounts; Fintech, adjusted lift 1.69 on the discovery cohorts, holdout
    adjusted CI 1.00-2.11, has about 79 % power for the holdout's adjusted CI low > 1 — README "Demo data"):
    it must then be its family's `review` with that reason, never rejected or enabled in another form."""
    thresholds = load_settings().discovery.count_thresholds
    signals = con.sql("select * from beton.signals where kind <> 'pair'").pl()
    enabled = signals.filter(pl.col("enabled"))
    short = []
    for planted in pipeline_run.truth["planted"]:
        family = _planted_family(planted)
        rows = enabled.filter(pl.col("family") == family)
        if rows.height == 0:
            best = signals.filter((pl.col("family") == family) & pl.col("is_family_best"))
            assert best.height == 1 and best["recommendation"][0] == "review", planted
            assert best["recommendation_reason"][0].startswith(SHORT_OF_HOLDOUT_POWER), best["recommendation_reason"][0]
            short.append(planted["name"])
            continue
        assert rows.height == 1, planted
        if planted["kind"] == "event_count":
            expected = {planted["threshold"]} if thresholds == "auto" else _neighbours(thresholds, planted["threshold"])
            assert rows["threshold"][0] in expected, (planted, rows["definition"][0])
        elif planted["kind"] == "event_property":
            assert rows["threshold"][0] in _neighbours((1, 2, 3), planted["threshold"])
    assert len(short) <= 1, short
    beyond = [p["name"] for p in pipeline_run.truth["planted"] if p.get("beyond_activity")]
    assert beyond and not set(beyond) & set(short), (beyond, short)


def test_no_activity_proxy_noise_or_leak_is_enabled(con, pipeline_run):
    """No enabled signal (single or a part of a pair) is an activity proxy of TRUTH.json, an event whose counts
    are pure activity or noise (`event:E`), a page view of any page but the planted one, or the leak."""
    truth = pipeline_run.truth
    planted = {_planted_family(p) for p in truth["planted"]}
    decoys = set(truth["activity_events"]) | set(truth["noise_events"]) | {leak["event"] for leak in truth["leaks"]}
    enabled = con.sql("select family, definition from beton.signals where enabled").fetchall()
    for family, definition in enabled:
        parts = family.removeprefix("pair:").split("&") if family.startswith("pair:") else [family]
        for part in parts:
            kind, _, rest = part.partition(":")
            if part in planted or kind not in ("event", "property"):
                continue
            assert rest.split(":")[0] not in decoys, definition


def test_signals_table_passes_the_independent_checker(pipeline_run):
    """The shared checker lives beside the project (`../shared`), which a user's clone does not have; the
    in-project recomputation of every row is tests/e2e/test_signals_recomputed.py."""
    if not CHECKER.exists():
        pytest.skip(f"the shared checker {CHECKER} is absent (a user's clone); test_signals_recomputed.py covers it")
    done = subprocess.run(
        [sys.executable, str(CHECKER), str(pipeline_run.warehouse)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_contract_columns_of_beton_signals(con):
    cols = {r[0] for r in con.sql("describe beton.signals").fetchall()}
    contract = {
        "signal_id",
        "definition",
        "source",
        "n_with",
        "conversions_with",
        "n_without",
        "conversions_without",
        "rate_with",
        "rate_without",
        "lift",
        "lift_ci_low",
        "lift_ci_high",
        "p_value",
        "q_value",
        "holdout_lift",
        "projected_arr",
        "recommendation",
        "enabled",
        "method",
    }
    assert contract <= cols
    recs = {r[0] for r in con.sql("select distinct recommendation from beton.signals").fetchall()}
    assert recs <= {"enable", "review", "reject"}
    assert (
        con.sql("select count(*) from beton.signals where method is null or definition is null").fetchall()[0][0] == 0
    )


def test_shuffled_demo_outcomes_enable_almost_nothing(con):
    """Null data: the demo's outcomes permuted across eligible accounts, 20 seeds. Runs with any `enable`
    must stay near fdr_alpha or below (the holdout replication makes them rarer still)."""
    import numpy as np

    from beton_pipeline.core.candidates import candidate_matrix
    from beton_pipeline.core.discovery import (
        cohort_counts_from_matrix,
        cohort_labels,
        discover_from_cohort_counts,
        matrix_pair_source,
    )
    from beton_pipeline.store.tables import read_feature_frames

    cfg = load_settings()
    frames = read_feature_frames(con, cfg.feature_windows)
    matrix = candidate_matrix(frames, cfg.feature_spec())
    months = cohort_labels(frames)
    y0 = frames.accounts["converted"].to_numpy()
    config = cfg.discovery_config()
    runs_with_enable = 0
    for seed in range(20):
        y = np.random.default_rng(seed).permutation(y0)
        arr = np.where(y, 12_000.0, 0.0)
        run = discover_from_cohort_counts(
            cohort_counts_from_matrix(matrix, months, y, arr),
            matrix_pair_source(matrix, months, y, arr),
            config,
            cfg.windows.holdout_fraction,
        )
        runs_with_enable += run.signals.filter(pl.col("recommendation") == "enable").height > 0
    assert runs_with_enable <= 2, runs_with_enable
