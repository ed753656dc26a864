"""The backtest page and `POST /api/signals/backtest`: the same numbers as `beton backtest`, the sandbox's and the
definition's reasons when a signal cannot run, and the builder's YAML; then the page in Chromium."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from beton_pipeline.app.builder import builder_rows, condition_yaml
from beton_pipeline.core.conditions import parse_signal
from tests.app.conftest import backtest_from_builder
from tests.app.test_browser import drawn

SQL = (
    "select account_id, first_occurred_at as fired_at from marts.account_event_features "
    "where event_name = 'invited_teammate' and n_first_14d >= 3"
)


def backtest(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/api/signals/backtest",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=180) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def cli_backtest(pipeline_run, *args: str) -> dict:
    env = {
        **os.environ,
        "BETON_WAREHOUSE": str(pipeline_run.warehouse),
        "BETON_SOURCE_DIR": str(pipeline_run.source_dir),
    }
    done = subprocess.run(
        [str(Path(sys.executable).parent / "beton"), "backtest", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=True,
    )
    return json.loads(done.stdout)


def _comparable(row: dict) -> dict:
    return {
        k: row[k]
        for k in (
            "signal_id",
            "n_with",
            "lift",
            "lift_ci_low",
            "lift_ci_high",
            "p_value",
            "q_value",
            "recommendation",
            "projected_arr",
        )
    }


def test_a_sql_signal_backtests_as_beton_backtest_does(app_url, pipeline_run):
    status, answer = backtest(app_url, {"sql": SQL})
    assert status == 200, answer
    expected = cli_backtest(pipeline_run, "--sql", SQL)
    assert _comparable(answer["signal"]) == pytest.approx(_comparable(expected["signal"]), rel=1e-12)
    assert (answer["verdict"], answer["verdict_reason"]) == (expected["verdict"], expected["verdict_reason"])
    assert [p["cohort_month"] for p in answer["periods"]] == [p["cohort_month"] for p in expected["periods"]]
    assert [p["fired"] for p in answer["periods"]] == [p["fired"] for p in expected["periods"]]
    assert answer["signal"]["recommendation"] == "enable"  # the demo plants this behaviour


def test_a_signal_that_cannot_run_is_a_400_with_its_reason(app_url):
    status, answer = backtest(
        app_url, {"sql": "select account_id from marts.account_outcomes; copy marts.account_outcomes to 'x.csv'"}
    )
    assert status == 400 and answer["error"] == "2 statements (SELECT, COPY); exactly one SELECT is allowed"
    status, answer = backtest(app_url, {"yaml": "name: x\nwhen: {event: invited_teamate, count: '>= 3'}"})
    assert status == 400 and "did you mean `invited_teammate`?" in answer["error"]
    assert backtest(app_url, {"sql": SQL, "yaml": "x"})[0] == 400
    assert backtest(app_url, {"sql": "  "})[0] == 400


def test_only_json_from_this_site_runs_a_backtest(app_url):
    """A page of another site can send a plain-text POST without asking; it must not run SQL here."""
    for headers, status in (
        ({"Content-Type": "text/plain"}, 415),
        ({"Content-Type": "application/json", "Origin": "http://evil.example"}, 403),
        ({"Content-Type": "application/json", "Host": "evil.example"}, 400),  # DNS rebinding
    ):
        request = urllib.request.Request(
            f"{app_url}/api/signals/backtest", data=json.dumps({"sql": SQL}).encode(), headers=headers, method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        assert refused.value.code == status, headers
    big = urllib.request.Request(
        f"{app_url}/api/signals/backtest",
        data=json.dumps({"sql": "select 1 " + " " * 70_000}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(big, timeout=60)
    assert refused.value.code == 413
    assert backtest(app_url, {"sql": 5}) == (400, {"error": "the SQL must be a string"})


def test_the_builder_writes_the_condition_language():
    form = {
        "event_1": "invited_teammate",
        "count_1": "3",
        "days_1": "14",
        "event_2": "",
        "attribute_1": "industry",
        "value_1": "Fintech",
    }
    leaves = builder_rows(form)
    assert leaves == [
        {"event": "invited_teammate", "count": ">= 3", "within_days": 14},
        {"attribute": "industry", "equals": "Fintech"},
    ]
    text = condition_yaml("Invites at fintechs", "all", leaves)
    definition = parse_signal(text, "builder")
    assert definition.name == "Invites at fintechs"
    assert "all:" in text and condition_yaml("x", "any", leaves).count("any:") == 1
    assert "all" not in condition_yaml("x", "all", leaves[:1])  # one leaf alone
    assert builder_rows({"event_1": "e", "days_1": "²"}) == [{"event": "e", "count": ">= 1", "within_days": "²"}]


def test_the_page_backtests_from_the_builder_and_shows_the_sandbox_reason(page, app_url, pipeline_run):
    backtest_from_builder(page, app_url, "Invites early", "invited_teammate", 3, 14)
    page.wait_for_selector("#result")
    drawn(page, "backtest")
    definition = page.locator("#definition").inner_text()
    expected = backtest(app_url, {"yaml": definition})[1]
    assert page.locator("#recommendation").inner_text() == expected["signal"]["recommendation"]
    assert page.locator("#lift").inner_text().startswith(f"{expected['signal']['lift']:.2f}")

    page.fill("#sql-editor textarea[name='sql']", "select account_id from marts.account_outcomes; drop table x")
    page.click("#sql-editor button[type='submit']")
    page.wait_for_selector("#error")
    assert "exactly one SELECT is allowed" in page.locator("#error").inner_text()
