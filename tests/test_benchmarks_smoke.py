"""A tiny run of `make bench` (benchmarks/run.py) on a 500-account, 6-month dataset, so the script cannot rot.

No timing is asserted: the machine is shared. What is checked is that every code path runs and
writes its report, and that the comparators see the same data as beton (the analyst's pandas
counts equal beton's per-cohort counts; the peer's odds ratios follow PostHog's formula).
"""

import json

import numpy as np
import polars as pl
import pytest

from benchmarks import methods, run
from benchmarks.datasets import DatasetSpec, ensure_dataset
from beton_pipeline.settings import load_settings
from beton_pipeline.sources import demo
from beton_pipeline.warehouse import connect

pytestmark = pytest.mark.slow(seconds=80)

TRUTH = {
    "planted": [
        {"name": "invited_teammate", "kind": "event_count", "event": "invited_teammate"},
        {
            "name": "integrations_page",
            "kind": "event_property",
            "event": "$pageview",
            "property": "$current_url",
            "value": "/settings/integrations",
        },
        {"name": "fintech", "kind": "crm_attribute", "attribute": "industry", "value": "Fintech"},
        {"name": "funding_round", "kind": "intent", "signal_type": "funding_round"},
    ],
    "drifting": [{"event": "report_exported"}],
    "leaks": [{"event": "checkout_completed"}],
    "proxies": [
        {"name": "dark_mode_toggled", "kind": "event_count", "event": "dark_mode_toggled"},
        {"name": "home", "kind": "event_property", "event": "$pageview", "property": "$current_url", "value": "/home"},
    ],
    "activity_events": ["dark_mode_toggled", "$pageview", "tooltip_opened"],
}


def test_family_classification():
    assert methods.classify_family("event:invited_teammate", TRUTH) == "planted"
    assert methods.classify_family("property:$pageview:$current_url=/settings/integrations", TRUTH) == "planted"
    assert methods.classify_family("attribute:industry=Fintech", TRUTH) == "planted"
    assert methods.classify_family("intent:funding_round", TRUTH) == "planted"
    assert methods.classify_family("event:report_exported", TRUTH) == "drifting"
    assert methods.classify_family("event:checkout_completed", TRUTH) == "leak"
    assert methods.classify_family("event:tooltip_opened", TRUTH) == "noise"
    assert methods.classify_family("attribute:industry=Retail", TRUTH) == "noise"
    assert methods.classify_family("pair:event:invited_teammate&intent:funding_round", TRUTH) == "planted pair"
    assert methods.classify_family("pair:event:invited_teammate&event:tooltip_opened", TRUTH) == "noise"
    assert methods.is_activity_proxy("event:dark_mode_toggled", TRUTH)
    assert methods.is_activity_proxy("event:tooltip_opened", TRUTH)
    assert methods.is_activity_proxy("property:$pageview:$current_url=/home", TRUTH)
    assert methods.is_activity_proxy("property:$pageview:$current_url=/docs", TRUTH)  # any ordinary page
    assert not methods.is_activity_proxy("property:$pageview:$current_url=/settings/integrations", TRUTH)
    assert not methods.is_activity_proxy("event:invited_teammate", TRUTH)
    assert not methods.is_activity_proxy("attribute:industry=Retail", TRUTH)
    assert methods.is_activity_proxy("pair:event:invited_teammate&event:dark_mode_toggled", TRUTH)
    assert not methods.is_activity_proxy("pair:event:invited_teammate&intent:funding_round", TRUTH)
    assert not methods.is_activity_proxy("event:dark_mode_toggled", {"planted": []})  # an older truth file
    assert methods.analyst_family("event:invited_teammate:first_14d:>=3") == "event:invited_teammate"
    assert (
        methods.analyst_family("property:$pageview:$current_url=/a:b:first_7d:>=1")
        == "property:$pageview:$current_url=/a:b"
    )
    assert methods.analyst_family("attribute:industry=Fintech") == "attribute:industry=Fintech"


def test_scaling_exponent():
    assert run.scaling_exponent(1.0, 10.0, 1_000, 10_000) == pytest.approx(1.0)
    assert run.scaling_exponent(1.0, 100.0, 1_000, 10_000) == pytest.approx(2.0)
    assert np.isnan(run.scaling_exponent(0.0, 1.0, 1, 10))


def test_dataset_is_reused_while_parameters_match(tmp_path):
    spec = DatasetSpec("tiny", n_accounts=60)
    first, generated = ensure_dataset(spec, tmp_path, log=lambda _: None)
    assert generated and (first / "TRUTH.json").exists()
    again, generated_again = ensure_dataset(spec, tmp_path, log=lambda _: None)
    assert again == first and not generated_again
    other, generated_other = ensure_dataset(DatasetSpec("tiny", n_accounts=60, seed=8), tmp_path, log=lambda _: None)
    assert generated_other and other != first


SMOKE_MONTHS = 6
"""Half the default year: five cohort months with closed outcomes still give the comparators candidates,
counts and planted signals to compare, at about half the daily health/score work of a full year."""


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """`make bench --sizes smoke` end to end (dataset, `beton run` in a worker, every comparator, the report)."""
    root = tmp_path_factory.mktemp("bench")
    smoke = DatasetSpec("smoke", n_accounts=run.SIZES["smoke"].n_accounts, months=SMOKE_MONTHS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(run.SIZES, "smoke", smoke)
        assert run.main(["--sizes", "smoke", "--repetitions", "1", "--root", str(root)]) == 0
    return root


def test_bench_writes_its_report(smoke_run):
    results = sorted((smoke_run / "results").glob("*.json"))
    assert len(results) == 1
    data = json.loads(results[0].read_text())
    assert data["machine"]["nproc"] >= 1 and len(data["machine"]["load_average_start"]) == 3
    (size,) = data["sizes"]
    assert size["label"] == "smoke" and size["repetitions"] == 1
    (pipeline,) = size["pipeline_runs"]
    assert pipeline["step_seconds"]["beton_dbt_models"] > 0 and pipeline["step_seconds"]["signals"] > 0
    assert "ingest + dbt" in pipeline["stage_seconds"] and "cohort counts" in pipeline["stage_seconds"]
    assert pipeline["peak_rss_bytes"] > 0 and pipeline["dbt"]["model_seconds"]["int_events_resolved"] >= 0
    assert size["floor_result"]["events_in_window"] > 0 and size["floor_result"]["account_events"] > 0
    assert size["core_candidates"] > 0 and size["pandas_candidates"] > 0
    assert set(size["quality"]) == {"beton", "peer", "pandas"}
    assert size["quality"]["beton"]["planted_total"] == len(demo.PLANTED)
    assert size["quality"]["peer"]["proxies_in_top10"] >= 0 and size["quality"]["beton"]["proxies_enabled"] >= 0
    markdown = results[0].with_suffix(".md").read_text()
    for heading in ("## Machine", "## Timings", "## Ratios", "## Discovery quality", "## Targets"):
        assert heading in markdown


def test_peer_odds_ratio_follows_posthog(smoke_run):
    settings = load_settings(smoke_run / "runs" / "smoke" / "beton.yaml")
    with connect(smoke_run / "runs" / "smoke" / "warehouse.duckdb", read_only=True) as con:
        top = methods.peer(con, settings.discovery.excluded_events)
        success_total, failure_total = con.sql(
            "select count(*) filter (where converted), count(*) filter (where not converted) "
            "from marts.account_outcomes where is_eligible and has_events"
        ).fetchall()[0]
    assert 0 < top.height <= methods.PEER_TOP
    a = top.get_column("success_count").to_numpy().astype(float)
    c = top.get_column("failure_count").to_numpy().astype(float)
    b, d = success_total - a, failure_total - c
    expected = ((a + 1) / (b + 1)) / ((c + 1) / (d + 1))
    np.testing.assert_allclose(top.get_column("odds_ratio").to_numpy(), expected, rtol=1e-12)
    assert (np.diff(top.get_column("odds_ratio").to_numpy()) <= 0).all()
    assert ((a + c) >= min(methods.PEER_MIN_COUNT, methods.PEER_MIN_SHARE * (success_total + failure_total))).all()


def test_analyst_counts_equal_betons(smoke_run):
    """The pandas features are an independent implementation of beton's: same accounts with each candidate."""
    settings = load_settings(smoke_run / "runs" / "smoke" / "beton.yaml")
    with connect(smoke_run / "runs" / "smoke" / "warehouse.duckdb", read_only=True) as con:
        analyst = methods.analyst_pandas(
            con, settings.feature_windows, settings.discovery.count_thresholds, settings.discovery.excluded_events
        )
        beton = con.sql(
            "select key, sum(n_with) as n_with, sum(conversions_with) as conversions_with "
            "from beton.signal_cohort_counts group by key"
        ).pl()
    mine = pl.from_pandas(analyst.tests[["key", "n_with", "conversions_with"]])
    joined = mine.join(beton, on="key", how="inner", suffix="_beton")
    assert joined.height >= 0.9 * mine.height  # every analyst candidate is one of beton's (attributes spelled alike)
    assert joined.filter(pl.col("key").str.starts_with("event:")).height > 0
    assert joined.filter(pl.col("key").str.starts_with("property:")).height > 0
    assert (joined.get_column("n_with") == joined.get_column("n_with_beton")).all()
    assert (joined.get_column("conversions_with") == joined.get_column("conversions_with_beton")).all()
