"""A tiny run of `make bench` (benchmarks/run.py) on a 500-account, 6-month dataset, so the script cannot rot.

No timing is asserted: the machine is shared. What is checked is that every code path runs and
writes its report, and that the comparators see the same data as beton (the analyst's pandas
counts equal beton's per-cohort counts; the peer's odds ratios follow PostHog's formula).
"""

import json

import duckdb
import numpy as np
import polars as pl
import pytest

from benchmarks import daily, methods, run
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


INTEGRATIONS_KEY = "property:$pageview:$current_url=/settings/integrations:first_14d:>=1"


def marginal_signals_frame() -> pl.DataFrame:
    """A hand-made `beton.signals` (every candidate): each row tests one part of the marginal rule."""
    figures = {
        # key: n_with, lift, lift_ci_low, q, holdout lift, its CI low, adjusted lift, its CI low, adjusted q
        # planted; the 14-day candidate has the higher CI low bound, so it is chosen and it replicates
        "event:invited_teammate:first_14d:>=3": (200, 3.0, 2.0, 1e-4, 2.5, 1.6, 2.2, 1.5, 1e-3),
        "event:invited_teammate:first_7d:>=1": (400, 2.0, 1.5, 1e-4, 3.0, 2.5, 1.6, 1.2, 1e-3),
        # drifting: the chosen 14-day candidate fails the holdout; its 7-day sibling would replicate but is not
        # chosen (the holdout never picks), so the family has no enabled signal
        "event:report_exported:first_14d:>=1": (300, 2.0, 1.6, 1e-4, 0.98, 0.8, 1.5, 1.2, 1e-3),
        "event:report_exported:first_7d:>=1": (300, 1.8, 1.4, 1e-4, 1.5, 1.2, 1.4, 1.1, 1e-3),
        # an activity proxy: clears the marginal bar everywhere, nothing among equally active accounts
        "event:dark_mode_toggled:first_14d:>=1": (500, 2.0, 1.5, 1e-6, 1.9, 1.4, 1.0, 0.8, 0.9),
        # the leak: enabled on the marginal rule
        "event:checkout_completed:first_14d:>=1": (100, 5.0, 3.0, 1e-9, 5.0, 3.0, 4.0, 2.5, 1e-6),
        # planted but fewer than min_sample (30) accounts
        "attribute:industry=Fintech": (25, 2.0, 1.4, 1e-2, 2.0, 1.5, 1.8, 1.2, 1e-2),
        # planted but lift below min_lift (1.3)
        "intent:funding_round:before_start": (300, 1.25, 1.1, 1e-3, 2.0, 1.5, 1.2, 1.1, 1e-2),
        # planted but q above fdr_alpha (0.05)
        INTEGRATIONS_KEY: (100, 2.5, 1.5, 0.06, 2.5, 1.5, 2.0, 1.2, 0.06),
        # holdout lift below min_lift although its CI excludes 1
        "event:tooltip_opened:first_14d:>=5": (300, 2.0, 1.4, 1e-3, 1.2, 1.05, 1.1, 0.9, 0.5),
        # masked by activity: only the adjusted rule enables it (adjusted lift >= min_lift, holdout too)
        "event:feature_x:first_14d:>=1": (300, 1.1, 0.9, 0.3, 1.1, 0.9, 2.0, 1.5, 1e-4),
    }
    frame = pl.DataFrame(
        [(key, *values) for key, values in figures.items()],
        schema=[
            "candidate_key",
            "n_with",
            "lift",
            "lift_ci_low",
            "q_value",
            "holdout_lift",
            "holdout_lift_ci_low",
            "adjusted_lift",
            "adjusted_lift_ci_low",
            "adjusted_q_value",
        ],
        orient="row",
    ).with_columns(
        pl.col("candidate_key").str.replace(r":(first_\d+d:>=\d+|before_start)$", "").alias("family"),
        pl.lit("discovered").alias("source"),
        pl.when(pl.col("candidate_key").str.starts_with("attribute:"))
        .then(pl.lit("attribute"))
        .when(pl.col("candidate_key").str.starts_with("intent:"))
        .then(pl.lit("intent"))
        .when(pl.col("candidate_key").str.starts_with("property:"))
        .then(pl.lit("event_property"))
        .otherwise(pl.lit("event_count"))
        .alias("kind"),
    )
    extra = pl.DataFrame(
        {
            # a pair and a custom signal that clear every bar: the marginal row leaves both out
            "family": ["pair:event:invited_teammate&event:dark_mode_toggled", "custom:sig_1"],
            "candidate_key": ["pair:event:dark_mode_toggled:first_14d:>=1&event:invited_teammate:first_14d:>=3", "c1"],
            "n_with": [200, 200],
            "lift": [4.0, 4.0],
            "lift_ci_low": [3.0, 3.0],
            "q_value": [1e-9, 1e-9],
            "holdout_lift": [4.0, 4.0],
            "holdout_lift_ci_low": [3.0, 3.0],
            "adjusted_lift": [3.0, None],
            "adjusted_lift_ci_low": [2.0, None],
            "adjusted_q_value": [1e-6, None],
            "source": ["discovered", "custom"],
            "kind": ["pair", "condition"],
        }
    )
    return pl.concat([frame, extra.select(frame.columns)], how="vertical_relaxed").with_columns(
        pl.col("candidate_key").alias("signal_id"),
        pl.col("candidate_key").alias("definition"),
        (pl.col("q_value") / 2).alias("p_value"),
        (pl.col("holdout_lift") * 2).alias("holdout_lift_ci_high"),
        (pl.col("adjusted_lift") * 2).alias("adjusted_lift_ci_high"),
        (pl.col("adjusted_q_value") / 2).alias("adjusted_p_value"),
        pl.col("adjusted_lift").alias("holdout_adjusted_lift"),
        pl.col("adjusted_lift_ci_low").alias("holdout_adjusted_lift_ci_low"),
        (pl.col("adjusted_lift") * 2).alias("holdout_adjusted_lift_ci_high"),
        pl.lit(1_000, pl.Int64).alias("holdout_n_total"),
        pl.when(pl.col("source") == "custom")
        .then(pl.lit(None, pl.String))
        .otherwise(pl.lit("Mantel-Haenszel RR"))
        .alias("adjustment_method"),
        pl.lit("stored", pl.String).alias("recommendation"),  # stored columns the function must not trust
        pl.lit(True).alias("is_family_best"),
    )


def test_beton_marginal_quality_mirrors_the_marginal_rule():
    """The marginal row: the stored rows under discovery's rule without the activity adjustment (no beton run)."""
    from beton_pipeline.core.discovery import DiscoveryConfig

    config = DiscoveryConfig(fdr_alpha=0.05, min_lift=1.3, min_sample=30)
    quality, chosen = methods.beton_marginal_quality(marginal_signals_frame(), TRUTH, config)
    enabled = set(chosen.filter(pl.col("enabled")).get_column("family").to_list())
    assert enabled == {"event:invited_teammate", "event:dark_mode_toggled", "event:checkout_completed"}
    assert quality.enabled == 3
    assert quality.planted_found == 1 and quality.planted_total == 4
    assert quality.noise_enabled == 1 and quality.proxies_enabled == 1  # the proxy; the leak is not noise
    assert quality.missed == ("fintech", "funding_round", "integrations_page")
    # one row per single family, pairs and custom signals left out; the family keeps its discovery choice
    assert chosen.height == 9 and chosen.get_column("family").n_unique() == 9
    keys = dict(zip(chosen.get_column("family"), chosen.get_column("key"), strict=True))
    assert keys["event:invited_teammate"] == "event:invited_teammate:first_14d:>=3"
    assert keys["event:report_exported"] == "event:report_exported:first_14d:>=1"
    # printed as `beton signals` does: enabled first, by q
    assert chosen.get_column("family").to_list()[:3] == [
        "event:checkout_completed",
        "event:dark_mode_toggled",
        "event:invited_teammate",
    ]
    assert quality.leak_in_top10 == 1 and quality.planted_in_top10 == 4 and quality.noise_in_top10 == 3
    assert quality.proxies_in_top10 == 2  # dark_mode_toggled, tooltip_opened (`activity_events`)
    # the same rows under the full (adjusted) rule differ exactly where the adjustment decides
    from beton_pipeline.core.discovery import recommend

    full = recommend(
        marginal_signals_frame()
        .filter(pl.col("kind") != "pair")
        .drop("recommendation", "is_family_best")
        .rename({"candidate_key": "key"}),
        config,
    )
    adjusted = set(full.filter(pl.col("recommendation") == "enable").get_column("family").to_list())
    assert adjusted - enabled == {"event:feature_x", "custom:sig_1"}  # masked by activity; custom kept there
    assert enabled - adjusted == {"event:dark_mode_toggled"}


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
    assert set(size["quality"]) == {"beton", "beton_marginal", "peer", "pandas"}
    assert size["quality"]["beton"]["planted_total"] == len(demo.PLANTED)
    assert size["quality"]["peer"]["proxies_in_top10"] >= 0 and size["quality"]["beton"]["proxies_enabled"] >= 0
    markdown = results[0].with_suffix(".md").read_text()
    for heading in ("## Machine", "## Timings", "## Ratios", "## Discovery quality", "## Targets"):
        assert heading in markdown


def test_the_report_holds_the_next_days_goal_when_it_was_measured(smoke_run):
    """`make bench` at 10M also measures the next day's run (`daily.measure`, three more runs: too long here) and
    reports its goal in the same targets table; rebuilt from the smoke run's results with a daily result beside."""
    data = json.loads(sorted((smoke_run / "results").glob("*.json"))[0].read_text())
    assert data["daily"] is None  # the smoke size alone measures no next day
    (size,) = [run.SizeResult(**s) for s in data["sizes"]]
    runs = {"stage_seconds": {"ingest + dbt": 3.0}, "step_seconds": {"raw_events": 1.0}, "peak_rss_bytes": 2**30}
    result = {
        "size": "smoke",
        "day": "2025-06-30",
        "day_events": 1234,
        "daily": {**runs, "wall_seconds": 10.0},
        "full": {**runs, "wall_seconds": 40.0},
        "ratio": 0.25,
        "differences": {"raw.events": [], "beton.signals": ["lift differs"]},
    }
    text = run.report(data["machine"], [size], 1.0, result)
    row = next(line for line in text.splitlines() if line.startswith("| the next day's run"))
    assert "25% (10.0 s vs 40.0 s); tables identical: 1 of 2 | **no** |" in row
    assert "## The next day's run, smoke (day 2025-06-30: 1,234 events)" in text
    assert "- `beton.signals`: lift differs" in text
    result = {**result, "ratio": 0.05, "differences": {"raw.events": []}}
    row = next(line for line in run.report(data["machine"], [size], 1.0, result).splitlines() if "next day" in line)
    assert row.endswith("| yes |")


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


def test_the_daily_split_sets_the_last_day_apart_and_keeps_every_event(smoke_run, tmp_path):
    """`benchmarks/daily.py`'s split of the smoke dataset: the parts without the last day plus the day's part
    hold every event once; the day's part holds that day only and sorts after every part; other tables are
    the dataset's own; a second call reuses the split."""
    source = next((smoke_run / "data").glob("demo-*"))
    day_part, day, day_events = daily.split_last_day(source, tmp_path / "split")
    parts = sorted((tmp_path / "split" / "events").glob("*.parquet"))
    assert parts and all(p.name < day_part.name for p in parts)
    con = duckdb.connect()
    con.execute("set TimeZone = 'UTC'")
    count = "select count(*), count(*) filter (where try_cast(timestamp as timestamptz)::date = ?) from read_parquet(?)"
    whole = con.execute(count, [day, [str(p) for p in (source / "events").glob("*.parquet")]]).fetchall()[0]
    before = con.execute(count, [day, [str(p) for p in parts]]).fetchall()[0]
    on_day = con.execute(count, [day, [str(day_part)]]).fetchall()[0]
    assert before[0] + on_day[0] == whole[0]
    assert on_day == (day_events, day_events) and day_events == whole[1] > 0 and before[1] == 0
    latest = con.execute(
        "select max(try_cast(timestamp as timestamptz))::date::varchar from read_parquet(?)", [str(day_part)]
    ).fetchall()[0][0]
    assert latest == day
    assert (tmp_path / "split" / "crm_companies.csv").resolve() == (source / "crm_companies.csv").resolve()
    assert daily.split_last_day(source, tmp_path / "split") == (day_part, day, day_events)


def test_the_connector_benchmark_runs(capsys):
    """`make bench-connectors` on a tiny export: every source pulled twice, the second pull with fewer calls."""
    from benchmarks import connectors

    assert connectors.main(["--accounts", "40", "--months", "2", "--page-size", "500"]) == 0
    apis, export = capsys.readouterr().out.split("PostHog from a batch export on S3")
    rows = [line.split(" | ") for line in apis.splitlines() if line.startswith(("| first", "| next"))]
    calls = {(r[0].strip("| "), r[1]): int(r[3].replace(",", "")) for r in rows}
    assert len(rows) == 6
    for source in ("posthog", "attio", "stripe"):
        assert 0 < calls[("next", source)] < calls[("first", source)], source
    first, following = (line.split(" | ") for line in export.splitlines() if line.startswith(("| first", "| next")))
    events = int(first[2].split()[0].replace(",", ""))
    assert int(first[1].replace(",", "")) > 1 and events == int(rows[0][2].split()[1].replace(",", ""))
    assert following[1] == "1" and int(following[2].split()[0].replace(",", "")) > events  # one new day


def test_the_pages_benchmark_times_every_page(capsys, pipeline_run):
    """`make bench-pages` on the demo run: one row per page and endpoint, each answered."""
    from benchmarks import pages

    assert pages.main(["--warehouse", f"demo={pipeline_run.warehouse}", "--repetitions", "1"]) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| demo")]
    assert [r[1] for r in rows] == [
        "`/`",
        "`/signals`",
        "`/signals?sort=lift&order=asc&all=true`",
        "`/signals/{id}`",
        "`/sources`",
        "`/playbooks`",
        "`/api/signals/dashboard/metrics`",
        "`/api/signals/list`",
        "`/api/signals/{id}`",
        "`/api/sources/status`",
        "`/api/playbooks/list`",
        "`/accounts/{account}`",
        "`/api/accounts/{account}`",
        "`/accounts?q=co`",
    ]
    assert all(0 < float(r[2]) <= float(r[3]) for r in rows)
