"""The JSON API answers the warehouse's numbers: every row and value compared with beton's tables read directly."""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import duckdb
import pytest

from beton_pipeline.app.charts import forest_plot
from beton_pipeline.sources.contract import INGESTED_TABLES
from tests.app.conftest import get, get_json, serving
from tests.test_warehouse_lock import hold_lock

NUMBERS = (
    "lift",
    "lift_ci_low",
    "lift_ci_high",
    "q_value",
    "p_value",
    "adjusted_lift",
    "projected_arr",
    "holdout_lift",
)


def _same(api: object, stored: object) -> bool:
    """A JSON value equals the stored one: exactly, with NaN and infinities answered as null."""
    if isinstance(stored, float) and not math.isfinite(stored):
        return api is None
    return api == stored


def _rows(warehouse, sql: str, params=()) -> list[dict]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rel = con.execute(sql, list(params))
        names = [d[0] for d in rel.description]
        return [dict(zip(names, r, strict=True)) for r in rel.fetchall()]


def test_the_list_is_beton_signals_row_for_row(app_url, pipeline_run):
    api = get_json(f"{app_url}/api/signals/list")
    stored = {
        r["signal_id"]: r
        for r in _rows(pipeline_run.warehouse, "select * from beton.signals where is_family_best or source = 'custom'")
    }
    assert len(api) == len(stored) > 0
    for row in api:
        expected = stored[row["signal_id"]]
        assert row["name"]
        for column in NUMBERS + ("n_with", "conversions_with", "recommendation", "definition"):
            assert _same(row[column], expected[column]), (row["signal_id"], column, row[column], expected[column])
    every = get_json(f"{app_url}/api/signals/list?all=true")
    assert len(every) == _rows(pipeline_run.warehouse, "select count(*) as n from beton.signals")[0]["n"]


def test_filters_and_sorting_keep_the_rows_they_name(app_url, pipeline_run):
    enabled = get_json(f"{app_url}/api/signals/list?recommendation=enable")
    expected = _rows(
        pipeline_run.warehouse,
        "select count(*) as n from beton.signals where (is_family_best or source = 'custom') and recommendation = 'enable'",
    )[0]["n"]
    assert len(enabled) == expected > 0
    assert {r["recommendation"] for r in enabled} == {"enable"}

    by_lift = get_json(f"{app_url}/api/signals/list?sort=lift&order=asc")
    lifts = [r["lift"] for r in by_lift if r["lift"] is not None]
    assert lifts == sorted(lifts) and len(lifts) > 1
    assert all(r["lift"] is None for r in by_lift[len(lifts) :]), "missing lifts sort last"

    word = re.findall(r"[a-z]{4,}", enabled[0]["definition"].lower())[0]
    found = get_json(f"{app_url}/api/signals/list?q={urllib.parse.quote(word.upper())}")
    assert found and all(word in (r["name"] + r["definition"] + r["signal_id"]).lower() for r in found)

    status, _, body = get(f"{app_url}/api/signals/list?sort=not_a_column")
    assert status == 422 and b"sort" in body


def test_one_signal_carries_its_backtest_health_and_decisions(app_url, pipeline_run):
    signal_id = get_json(f"{app_url}/api/signals/list?recommendation=enable")[0]["signal_id"]
    detail = get_json(f"{app_url}/api/signals/{signal_id}")
    backtest = _rows(
        pipeline_run.warehouse,
        "select * from beton.signal_backtests where signal_id = ? order by cohort_month",
        [signal_id],
    )
    assert [b["cohort_month"] for b in detail["backtest"]] == [b["cohort_month"] for b in backtest]
    for answered, stored in zip(detail["backtest"], backtest, strict=True):
        for column in ("fired", "converted", "precision", "lift", "lift_ci_low", "lift_ci_high", "projected_arr"):
            assert _same(answered[column], stored[column]), (column, answered[column], stored[column])
    health_days = _rows(
        pipeline_run.warehouse, "select count(*) as n from beton.signal_health where signal_id = ?", [signal_id]
    )[0]["n"]
    assert len(detail["health"]) == min(health_days, 14) > 0
    assert detail["signal"]["signal_id"] == signal_id
    assert not isinstance(detail["signal"]["alternatives"], str), "JSON-text columns are answered as arrays"


def test_an_unknown_signal_is_a_404_with_the_nearest_ids(app_url):
    known = get_json(f"{app_url}/api/signals/list")[0]["signal_id"]
    status, _, body = get(f"{app_url}/api/signals/{known[:-1]}x")
    assert status == 404
    assert known in json.loads(body)["error"]
    status, _, page = get(f"{app_url}/signals/{known[:-1]}x")
    assert status == 404 and known.encode() in page


def test_the_forest_plot_draws_the_listed_signals_lifts(app_url):
    status, headers, page = get(f"{app_url}/signals?recommendation=enable")
    assert status == 200 and "default-src 'self'" in headers["content-security-policy"]
    figure = json.loads(re.search(rb'<script type="application/json" id="forest-figure">(.*?)</script>', page, re.S)[1])
    rows = get_json(f"{app_url}/api/signals/list?recommendation=enable")
    lift = next(t for t in figure["data"] if t["name"] == "lift")
    assert lift["x"] == [r["lift"] for r in rows]
    assert lift["error_x"]["array"] == pytest.approx([r["lift_ci_high"] - r["lift"] for r in rows], rel=1e-12)
    assert lift["y"] == [f"{r['name']} ({r['signal_id']})" for r in rows]


def test_a_chart_leaves_out_values_a_log_axis_cannot_draw():
    figure = forest_plot(
        [
            {"lift": float("inf"), "lift_ci_low": 1.0, "lift_ci_high": None},
            {"lift": 2.0, "lift_ci_low": 1.5, "lift_ci_high": 3.0},
        ],
        ["a", "b"],
    )
    (trace,) = figure["data"]
    assert trace["x"] == [None, 2.0]
    assert trace["error_x"]["array"] == [None, 1.0] and trace["error_x"]["arrayminus"] == [None, 0.5]
    assert forest_plot([], [])["layout"]["title"]["text"].startswith("No signal")


def test_a_run_writing_the_warehouse_gets_503_and_is_never_blocked(tmp_path, pipeline_run):
    copy = tmp_path / "warehouse.duckdb"
    shutil.copy(pipeline_run.warehouse, copy)
    with serving(copy, lock_wait_seconds=0.5) as url:
        assert get(f"{url}/api/signals/list")[0] == 200
        # The app keeps no connection between requests: a writer opens the file at once.
        writer = subprocess.run(
            [sys.executable, "-c", "import duckdb, sys; duckdb.connect(sys.argv[1]).execute('select 1')", str(copy)],
            timeout=60,
            capture_output=True,
        )
        assert writer.returncode == 0, writer.stderr
        holder = hold_lock(copy, 60)
        try:
            status, headers, body = get(f"{url}/api/signals/list")
            assert status == 503 and headers["retry-after"] == "5"
            assert "run is writing" in json.loads(body)["error"]
            status, _, page = get(f"{url}/signals")
            assert status == 503 and b"run is writing" in page
        finally:
            holder.kill()
            holder.wait(timeout=10)
        assert get(f"{url}/api/signals/list")[0] == 200


def test_no_warehouse_yet_says_what_to_run(tmp_path):
    with serving(tmp_path / "warehouse.duckdb") as url:
        status, _, body = get(f"{url}/api/signals/list")
    assert status == 503 and "beton run" in json.loads(body)["error"]
    duckdb.connect(str(tmp_path / "warehouse.duckdb")).close()  # a file with no table yet
    with serving(tmp_path / "warehouse.duckdb") as url:
        for path in ("/", "/signals", "/sources", "/playbooks", "/backtest", "/api/posthog/events"):
            status, _, body = get(url + path)
            assert status in (200, 503) and b"Traceback" not in body, path
        status, _, body = get(f"{url}/backtest")
        assert status == 503 and b"run `beton run` first" in body


def test_a_bad_parameter_on_a_page_is_a_page(app_url):
    status, headers, page = get(f"{app_url}/signals?sort=bogus")
    assert status == 422 and headers["content-type"].startswith("text/html") and b"sort" in page
    status, headers, body = get(f"{app_url}/api/signals/list?sort=bogus")
    assert status == 422 and headers["content-type"].startswith("application/json")


def test_text_from_the_data_cannot_break_out_of_a_chart():
    from beton_pipeline.app.web import figure_json as _figure_json

    text = _figure_json(forest_plot([{"lift": 2.0}], ["<!--<script></script>&"]))
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text)["data"][0]["y"] == ["&lt;!--&lt;script&gt;&lt;/script&gt;&amp;"]


def test_the_api_is_described_and_plotly_is_served_locally(app_url):
    spec = get_json(f"{app_url}/api/openapi.json")
    assert {"/api/signals/list", "/api/signals/{signal_id}"} <= set(spec["paths"])
    status, headers, body = get(f"{app_url}/static/plotly.min.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript") and len(body) > 1_000_000


def test_the_dashboard_is_the_latest_revenue_metrics_and_scores(app_url, pipeline_run):
    answer = get_json(f"{app_url}/api/signals/dashboard/metrics")
    (latest,) = _rows(pipeline_run.warehouse, "select * from beton.revenue_metrics order by day desc limit 1")
    assert answer["latest"] == {k: (v.isoformat() if k == "day" else v) for k, v in latest.items()}
    assert len(answer["trend"]) == min(
        180, _rows(pipeline_run.warehouse, "select count(*) as n from beton.revenue_metrics")[0]["n"]
    )
    assert answer["trend"][-1] == answer["latest"]
    day = answer["day"]
    stored = _rows(
        pipeline_run.warehouse,
        "select account_id, score from beton.account_scores where day = ? order by score_rank, account_id limit 20",
        [day],
    )
    assert [(a["account_id"], a["score"]) for a in answer["recent_leads"]] == [
        (r["account_id"], r["score"]) for r in stored
    ]
    assert all(c["name"] for a in answer["recent_leads"] for c in a["top_contributions"])
    scored = _rows(
        pipeline_run.warehouse,
        "select count(*) as n, count(*) filter (where score >= 0.5) as upper from beton.account_scores "
        "where day = ? and score is not null",
        [day],
    )[0]
    bins = answer["score_distribution"]
    assert len(bins) == 20 and sum(b["accounts"] for b in bins) == scored["n"] > 0
    assert sum(b["accounts"] for b in bins if b["low"] >= 0.5) == scored["upper"]


def test_the_score_distribution_counts_every_score_once_at_the_edges(tmp_path):
    from beton_pipeline.store.dashboard import score_distribution

    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        con.execute("create schema beton")
        con.execute("create table beton.account_scores (day date, score double)")
        con.execute(
            "insert into beton.account_scores values ('2025-01-02', 0.0), ('2025-01-02', 0.05), "
            "('2025-01-02', 0.0999), ('2025-01-02', 1.0), ('2025-01-02', null), ('2025-01-01', 0.5)"
        )
        bins = score_distribution(con, datetime.date(2025, 1, 2), bins=10).to_dicts()
    assert [b["accounts"] for b in bins] == [3, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert bins[0]["low"] == 0.0 and bins[-1]["high"] == 1.0


def test_beton_serve_without_a_warehouse_says_what_to_run(tmp_path):
    beton = str(Path(sys.executable).parent / "beton")
    env = {**os.environ, "BETON_WAREHOUSE": str(tmp_path / "warehouse.duckdb")}
    done = subprocess.run([beton, "serve", "--port", "1"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "no warehouse yet; run `beton run`" in done.stderr


def test_sources_status_reconciles_every_table_with_the_warehouse(app_url, pipeline_run):
    status = {t["table"]: t for t in get_json(f"{app_url}/api/sources/status")}
    assert set(status) == {spec.name for spec in INGESTED_TABLES}
    quarantined = dict(
        (r["source_table"], r["n"])
        for r in _rows(pipeline_run.warehouse, "select source_table, count(*) as n from beton.quarantine group by 1")
    )
    for spec in INGESTED_TABLES:
        t = status[spec.name]
        if t["loaded"] is None:
            continue
        loaded = _rows(pipeline_run.warehouse, f"select count(*) as n from {spec.raw_table}")[0]["n"]
        origin = "beton serve" if spec.name == "tracked_events" else "files"
        assert (t["loaded"], t["quarantined"], t["origin"]) == (loaded, quarantined.get(spec.name, 0), origin)
        assert t["rows_read"] == t["loaded"] + t["duplicates"] + t["quarantined"], spec.name
        assert sum(n for _, n in t["quarantine_reasons"]) <= t["quarantined"]
    assert status["events"]["loaded"] > 0 and status["events"]["fresh"] is True


def test_playbooks_list_their_rule_actions_and_readout(app_url, pipeline_run):
    playbooks = {p["name"]: p for p in get_json(f"{app_url}/api/playbooks/list")}
    actions = _rows(
        pipeline_run.warehouse, "select playbook, status, count(*) as n from beton.playbook_actions group by 1, 2"
    )
    assert actions, "the demo run plans the demo playbook's actions"
    for row in actions:
        assert playbooks[row["playbook"]]["actions"][row["status"]] == row["n"]
    demo = playbooks["hot-accounts"]
    assert demo["configured"] and demo["kind"] == "account" and demo["then"]
    (readout,) = _rows(pipeline_run.warehouse, "select * from beton.playbook_readouts where playbook = 'hot-accounts'")
    assert (
        demo["readout"]["n_treated"] == readout["n_treated"] and demo["readout"]["n_held_out"] == readout["n_held_out"]
    )


def test_an_account_is_its_score_rows_by_day_and_its_outcome(app_url, pipeline_run):
    longest = _rows(
        pipeline_run.warehouse,
        "select account_id from beton.account_scores group by 1 order by count(*) desc, account_id limit 1",
    )[0]["account_id"]
    answer = get_json(f"{app_url}/api/accounts/{urllib.parse.quote(longest)}")
    stored = _rows(
        pipeline_run.warehouse, "select * from beton.account_scores where account_id = ? order by day", [longest]
    )
    assert len(answer["history"]) == len(stored) > 1
    for day, row in zip(answer["history"], stored, strict=True):
        assert (day["day"], day["score"], day["score_rank"], day["n_signals_fired"]) == (
            row["day"].isoformat(),
            row["score"],
            row["score_rank"],
            row["n_signals_fired"],
        )
    latest = answer["account"]
    assert latest["day"] == stored[-1]["day"].isoformat() and latest["score"] == stored[-1]["score"]
    assert [e["signal_id"] for e in latest["top_contributions"]] == [
        e["signal_id"] for e in stored[-1]["top_contributions"]
    ]
    assert [e["contribution"] for e in latest["top_contributions"]] == [
        e["contribution"] for e in stored[-1]["top_contributions"]
    ]
    assert all(e["name"] for e in latest["signals_fired"])
    outcome = _rows(pipeline_run.warehouse, "select * from marts.account_outcomes where account_id = ?", [longest])[0]
    assert answer["outcome"]["converted"] == outcome["converted"]
    assert answer["outcome"]["arr"] == outcome["arr"]
    status, _, body = get(f"{app_url}/api/accounts/no-such-account")
    assert status == 404 and b"No scored day" in body


def test_the_account_search_is_the_latest_days_matching_accounts_by_rank(app_url, pipeline_run):
    answer = get_json(f"{app_url}/api/accounts?q=CO&limit=5")
    day = _rows(pipeline_run.warehouse, "select max(day) as day from beton.account_scores")[0]["day"]
    stored = _rows(
        pipeline_run.warehouse,
        "select account_id from beton.account_scores where day = ? and (lower(company_name) like '%co%' or "
        "lower(domain) like '%co%' or lower(account_id) like '%co%') order by score_rank, account_id limit 5",
        [day],
    )
    assert answer["day"] == day.isoformat()
    assert [a["account_id"] for a in answer["accounts"]] == [r["account_id"] for r in stored]
    assert len(stored) == 5


def test_an_account_id_with_a_slash_opens_its_page(tmp_path, pipeline_run):
    copy = tmp_path / "warehouse.duckdb"
    shutil.copy(pipeline_run.warehouse, copy)
    with duckdb.connect(str(copy)) as con:
        (account,) = con.sql(
            "select account_id from beton.account_scores order by day desc, score_rank limit 1"
        ).fetchall()[0]
        con.execute("update beton.account_scores set account_id = 'org/42 x' where account_id = ?", [account])
    with serving(copy) as url:
        quoted = urllib.parse.quote("org/42 x", safe="")
        assert get_json(f"{url}/api/accounts/{quoted}")["account"]["account_id"] == "org/42 x"
        status, _, page = get(f"{url}/accounts/{quoted}")
        assert status == 200 and b"org/42 x" in page
