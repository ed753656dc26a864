"""Experiments in `beton serve`: the list and readouts of beton.yaml's experiments equal the warehouse's
(beton.experiment_readouts of the demo run); an experiment defined through the API or the intake form is stored in
beton.experiments, moves through its statuses with every decision in beton.experiment_decisions, is refused a move
the workflow does not allow (with the sentence), has a readout as soon as its flag's exposures are in the
warehouse, and is read out by the `experiment_readouts` asset once it runs. Writes need the app token (API) or a
signed-in page with its CSRF token. The optional AI summary is asked of a chat completions fake on 127.0.0.1 and
falls back to beton's summary, never showing or logging the key.

Tests that write serve their own copy of the demo run's warehouse."""

from __future__ import annotations

import logging
import math
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from beton_pipeline.app import experiments as experiments_app
from beton_pipeline.defs.playbooks.assets import experiment_readouts
from beton_pipeline.defs.resources import SettingsResource, WarehouseResource
from beton_pipeline.store.experiments import find_experiment
from tests.app.conftest import get, get_json, run_settings, serving
from tests.app.conftest import post_json as post
from tests.app.test_browser import drawn
from tests.conftest import env_vars
from tests.fakes.llm import FakeLLM

TOKEN = "app-token-EXPERIMENTS-91c2"
LLM_KEY = "sk-SECRET-llm-key-3b7d"
TWIN_FLAG = "pricing-v2"
"""A flag whose exposures a test copies from the demo's new-onboarding, so its readout must equal that one."""
INTAKE = {
    "name": "pricing-v2",
    "hypothesis": "A shorter pricing page gets more API keys created.",
    "goal_event": "api_key_created",
    "variants": ["control", "test"],
    "owner": "ana",
}
COMPARED = ("variant", "is_control", "exposures", "conversions", "rate", "rate_ci_low", "rate_ci_high", "lift",
            "lift_ci_low", "lift_ci_high", "p_value", "p_value_holm", "significant", "srm_pvalue", "srm_flag",
            "small_sample", "method", "expected_share", "observed_share", "rate_diff", "diff_ci_low", "diff_ci_high")  # fmt: skip


@pytest.fixture
def copy(tmp_path, pipeline_run) -> Path:
    """A copy of the demo run's warehouse in which flag `TWIN_FLAG` has new-onboarding's exposures."""
    path = tmp_path / "warehouse.duckdb"
    shutil.copy(pipeline_run.warehouse, path)
    with duckdb.connect(str(path)) as con:
        con.execute(
            "insert into intermediate.int_experiment_exposures select event_id || '-twin', distinct_id, ?, variant, "
            "exposed_at, exposure_number, is_first_exposure, saw_several_variants "
            "from intermediate.int_experiment_exposures where feature_flag = 'new-onboarding'",
            [TWIN_FLAG],
        )
    return path


def rows(warehouse: Path, sql: str, params: list | None = None) -> list[tuple]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def same(a: object, b: object) -> bool:
    """Equal, NaN (stored) and null (JSON) being the same missing number."""
    missing = lambda v: v is None or (isinstance(v, float) and math.isnan(v))  # noqa: E731
    return (missing(a) and missing(b)) or a == b


def table_rows(warehouse: Path, experiment: str) -> list[dict]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return (
            con.sql(
                "select * from beton.experiment_readouts where experiment = ? order by not is_control, variant",
                params=[experiment],
            )
            .pl()
            .to_dicts()
        )


def assert_readout_equals_table(readout: dict, stored: list[dict]) -> None:
    variants = sorted(readout["variants"], key=lambda r: (not r["is_control"], r["variant"]))
    assert len(variants) == len(stored) >= 2
    for mine, theirs in zip(variants, stored, strict=True):
        unequal = {c: (mine[c], theirs[c]) for c in COMPARED if not same(mine[c], theirs[c])}
        assert not unequal, unequal


# ------------------------------------------------------------------------------------------------
# beton.yaml's experiments, read-only over the demo run
# ------------------------------------------------------------------------------------------------
def test_beton_yaml_experiments_are_running_and_read_out_as_the_asset_did(app_url, pipeline_run):
    listed = get_json(f"{app_url}/api/experiments")
    assert [(x["name"], x["status"], x["source"]) for x in listed] == [
        ("new-onboarding", "Running", "beton.yaml"),
        ("ai-assistant", "Running", "beton.yaml"),
    ]
    for x in listed:
        [(exposed,)] = rows(
            pipeline_run.warehouse,
            "select count(distinct distinct_id) from intermediate.int_experiment_exposures where feature_flag = ?",
            [x["flag"]],
        )
        assert x["exposures"] == exposed > 100 and x["last_decision"] is None and x["hypothesis"] is None
        detail = get_json(f"{app_url}/api/experiments/{x['name']}")
        stored = table_rows(pipeline_run.warehouse, x["name"])
        assert_readout_equals_table(detail["readout"], stored)
        assert detail["readout"]["summary"] == stored[0]["summary"]
        assert detail["readout"]["warnings"] == [w for w in stored[0]["warnings"].split("; ") if w]
        assert detail["next_statuses"] == [] and detail["decisions"] == []
    # new-onboarding has no conversion window: every exposed user is counted in the readout
    onboarding = get_json(f"{app_url}/api/experiments/new-onboarding")["readout"]["variants"]
    assert sum(v["exposures"] for v in onboarding) == listed[0]["exposures"]
    status, _, body = get(f"{app_url}/api/experiments/no-such-test")
    assert status == 404 and b"no experiment named 'no-such-test'" in body


def test_the_readout_page_shows_the_numbers_the_chart_and_that_beton_yaml_sets_the_status(page, app_url):
    detail = get_json(f"{app_url}/api/experiments/ai-assistant")
    page.goto(f"{app_url}/experiments/ai-assistant")
    drawn(page, "rates")
    assert "status is not changed in the app" in page.locator("#config-note").inner_text()
    assert page.locator("#status").inner_text() == "Running"
    assert page.locator("#move").count() == 0 and page.locator("#ai-summary").count() == 0
    variants = detail["readout"]["variants"]
    assert page.locator("#variants tbody tr").count() == len(variants) == 3
    for v in variants:
        row = page.locator(f"#variants tr[data-variant='{v['variant']}']")
        assert row.locator("td[data-col='exposures']").inner_text() == f"{v['exposures']:,}"
        assert row.locator("td[data-col='p_value_holm']").inner_text() == (
            "—" if v["p_value_holm"] is None else f"{v['p_value_holm']:.4f}"
        )
    assert page.locator("#summary pre").inner_text() == detail["readout"]["summary"]
    assert page.locator("#rates .barlayer .point").count() == 3  # one rate per variant
    page.goto(f"{app_url}/experiments")
    assert page.locator("#experiments tbody tr").count() == 2
    assert page.locator("#experiments tr[data-experiment='ai-assistant'] td[data-col='status']").inner_text() == (
        "Running"
    )


# ------------------------------------------------------------------------------------------------
# An experiment defined through the API
# ------------------------------------------------------------------------------------------------
def test_an_api_experiment_moves_through_its_statuses_and_is_read_out_by_the_app_and_the_asset(copy, pipeline_run):
    with serving(copy, settings=run_settings(pipeline_run), token=TOKEN) as url:
        assert post(f"{url}/api/experiments", INTAKE)[0] == 401
        assert post(f"{url}/api/experiments", INTAKE, token="not-the-token")[0] == 401
        status, answer = post(f"{url}/api/experiments", {**INTAKE, "variants": ["control"], "owner": ""}, TOKEN)
        assert status == 400 and answer["error"] == (
            "owner: say who owns the experiment (1 to 100 characters); "
            "variants: name the control first, then at least one variant (e.g. control, test)"
        )
        status, answer = post(f"{url}/api/experiments", {**INTAKE, "flag": "new-onboarding"}, TOKEN)
        assert (status, answer["error"]) == (
            409,
            "flag: 'new-onboarding' is already the name of experiment 'new-onboarding' (beton.yaml); choose another",
        )
        assert rows(copy, "select count(*) from beton.experiments") == [(0,)]

        status, created = post(f"{url}/api/experiments", {**INTAKE, "flag": TWIN_FLAG, "by": "ben"}, TOKEN)
        assert status == 201
        assert (created["status"], created["source"], created["created_by"], created["next_statuses"]) == (
            "Draft",
            "app",
            "ben",
            ["Review", "Killed"],
        )
        assert post(f"{url}/api/experiments", {**INTAKE, "name": "other", "flag": TWIN_FLAG}, TOKEN)[0] == 409
        assert rows(
            copy, "select name, flag, goal_event, control, variants, weights, status, owner from beton.experiments"
        ) == [("pricing-v2", TWIN_FLAG, "api_key_created", "control", ["control", "test"], [], "Draft", "ana")]

        moves = f"{url}/api/experiments/pricing-v2/status"
        status, answer = post(moves, {"status": "Running", "by": "ana", "why": "ship it"}, TOKEN)
        assert (status, answer["error"]) == (
            409,
            "Draft → Running is not allowed: from Draft the next status is Review or Killed.",
        )
        assert post(moves, {"status": "Review", "by": "ana"}, TOKEN)[0] == 400  # no why
        status, answer = post(moves, {"status": "Review", "by": "ana", "why": "ready"}, TOKEN)
        assert (status, answer["status"], answer["next_statuses"]) == (200, "Review", ["Draft", "Running", "Killed"])
        status, answer = post(moves, {"status": "Review", "by": "ana", "why": "again"}, TOKEN)
        assert status == 409
        assert (
            answer["error"]
            == "Review → Review is not allowed: from Review the next status is Draft, Running or Killed."
        )

        # Draft: not read out by the asset yet, but the app reads it out already
        detail = get_json(f"{url}/api/experiments/pricing-v2")
        assert_readout_equals_table(detail["readout"], table_rows(copy, "new-onboarding"))
        assert detail["readout"]["summary"].startswith("Experiment pricing-v2 (goal: api_key_created)")

        status, answer = post(moves, {"status": "Running", "by": "cleo", "why": "approved"}, TOKEN)
        assert (status, answer["status"], answer["next_statuses"]) == (200, "Running", ["Readout", "Killed"])
        status, answer = post(
            f"{url}/api/experiments/new-onboarding/status", {"status": "Readout", "by": "a", "why": "b"}, TOKEN
        )
        assert status == 409 and "defined in beton.yaml" in answer["error"]
        assert post(f"{url}/api/experiments/nope/status", {"status": "Review", "by": "a", "why": "b"}, TOKEN)[0] == 404

        assert rows(
            copy,
            "select experiment, from_status, to_status, decided_by, why from beton.experiment_decisions order by decided_at",
        ) == [
            ("pricing-v2", None, "Draft", "ben", "created"),
            ("pricing-v2", "Draft", "Review", "ana", "ready"),
            ("pricing-v2", "Review", "Running", "cleo", "approved"),
        ]
        listed = {x["name"]: x for x in get_json(f"{url}/api/experiments")}
        assert (
            listed["pricing-v2"]["status"] == "Running"
            and listed["pricing-v2"]["exposures"] == (listed["new-onboarding"]["exposures"])
        )
        assert listed["pricing-v2"]["last_decision"]["to_status"] == "Running"

    settings = run_settings(pipeline_run)
    with duckdb.connect(str(copy), read_only=True) as con:
        entry = find_experiment(con, settings.playbook_config(), TWIN_FLAG)
        assert (entry.name, entry.flag, entry.variants, entry.goal_event, entry.status, entry.source) == (
            "pricing-v2", TWIN_FLAG, ("control", "test"), "api_key_created", "Running", "app",
        )  # fmt: skip
        assert find_experiment(con, settings.playbook_config(), "new-onboarding").source == "beton.yaml"
        assert find_experiment(con, settings.playbook_config(), "unknown") is None
    with env_vars(BETON_SOURCE_DIR=str(pipeline_run.source_dir)):
        result = dg.materialize(
            [experiment_readouts],
            resources={"warehouse": WarehouseResource(path=str(copy)), "settings": SettingsResource()},
        )
    assert result.success
    assert sorted({r[0] for r in rows(copy, "select experiment from beton.experiment_readouts")}) == [
        "ai-assistant",
        "new-onboarding",
        "pricing-v2",
    ]
    assert_readout_equals_table(detail["readout"], table_rows(copy, "pricing-v2"))


def test_without_a_token_nothing_can_be_written(copy, pipeline_run):
    with serving(copy, settings=run_settings(pipeline_run)) as url:
        status, answer = post(f"{url}/api/experiments", INTAKE, TOKEN)
        assert status == 403 and "BETON_APP_TOKEN" in answer["error"]
        status, _, body = get(f"{url}/experiments/new")
        assert status == 200 and b'id="intake"' not in body and b"read-only" in body
    assert rows(copy, "select count(*) from information_schema.tables where table_schema = 'beton' and "
                "table_name like 'experiment%' and table_name <> 'experiment_readouts'") == [(0,)]  # fmt: skip


# ------------------------------------------------------------------------------------------------
# The pages: intake, statuses, the forbidden move, the AI summary
# ------------------------------------------------------------------------------------------------
def form_post(url: str, fields: dict, cookie: str | None = None) -> int:
    data = urllib.parse.urlencode(fields).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    if cookie:
        request.add_header("Cookie", cookie)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def move(page, status: str, by: str, why: str) -> None:
    page.select_option("#move select[name='status']", status)
    page.fill("#move input[name='by']", by)
    page.fill("#move input[name='why']", why)
    page.click("#move button[type='submit']")


def test_an_experiment_created_and_moved_through_the_pages(copy, pipeline_run, page, monkeypatch, caplog):
    with FakeLLM(api_key=LLM_KEY, reply="Test and control convert alike; keep collecting.") as llm:
        monkeypatch.setenv("BETON_LLM_API_KEY", LLM_KEY)
        monkeypatch.setenv("BETON_LLM_BASE_URL", llm.base_url)
        monkeypatch.setenv("BETON_LLM_MODEL", "gpt-test")
        with serving(copy, settings=run_settings(pipeline_run), token=TOKEN) as url:
            assert form_post(f"{url}/experiments/new", {**INTAKE, "variants": "control, test"}) == 401
            assert rows(copy, "select count(*) from information_schema.tables where table_name = 'experiments'") == [
                (0,)
            ]
            page.goto(f"{url}/experiments/new")
            assert page.locator("#intake").count() == 0
            page.click("#sign-in")
            page.fill("input[name='token']", TOKEN)
            page.click("#login button[type='submit']")
            page.wait_for_url("**/experiments/new")
            options = page.locator("#known-events option").evaluate_all("els => els.map(e => e.value)")
            assert "api_key_created" in options and len(options) == len(get_json(f"{url}/api/posthog/events"))

            page.fill("#intake input[name='name']", "pricing-v2")
            page.fill("#intake input[name='owner']", "ana")
            page.fill("#intake textarea[name='hypothesis']", INTAKE["hypothesis"])
            page.fill("#intake input[name='goal_event']", "api_key_created")
            page.fill("#intake input[name='flag']", "new-onboarding")  # taken: refused, the form kept
            page.click("#intake button[type='submit']")
            assert "already the name of experiment 'new-onboarding'" in page.locator("#intake-error").inner_text()
            assert page.locator("#intake input[name='owner']").input_value() == "ana"
            page.fill("#intake input[name='flag']", TWIN_FLAG)
            page.click("#intake button[type='submit']")
            page.wait_for_url("**/experiments/pricing-v2")
            assert page.locator("#status").inner_text() == "Draft"
            assert page.locator("#hypothesis").inner_text() == INTAKE["hypothesis"]
            drawn(page, "rates")

            # beton's summary and the model's, each labelled; only aggregates were sent
            detail = get_json(f"{url}/api/experiments/pricing-v2")
            assert page.locator("#summary pre").inner_text() == detail["readout"]["summary"]
            assert "beton's summary" in page.locator("#summary .label").inner_text()
            ai = page.locator("#ai-summary")
            assert "AI summary (gpt-test at 127.0.0.1" in ai.locator(".label").inner_text()
            assert ai.locator("p").inner_text() == "Test and control convert alike; keep collecting."
            sent = llm.bodies[-1]["messages"][1]["content"]
            assert "pricing-v2" in sent and "distinct_id" not in sent and "account_id" not in sent

            move(page, "Review", "ana", "ready for review")
            page.wait_for_selector("#decision-log tbody tr:nth-child(2)")
            move(page, "Running", "cleo", "approved")
            page.wait_for_selector("#decision-log tbody tr:nth-child(3)")
            assert page.locator("#status").inner_text() == "Running"

            # A stale page: someone moved it to Readout meanwhile; Running → Readout from here is refused with
            # the sentence, on this page
            assert (
                post(
                    f"{url}/api/experiments/pricing-v2/status",
                    {"status": "Readout", "by": "dan", "why": "4 weeks"},
                    TOKEN,
                )[0]
                == 200
            )
            move(page, "Readout", "ana", "4 weeks in")
            assert page.locator("#status-error").inner_text() == (
                "Readout → Readout is not allowed: from Readout the next status is Shipped, Killed or Running."
            )
            assert page.locator("#decision-log tbody tr").count() == 4
            move(page, "Shipped", "ana", "test wins")
            page.wait_for_selector("#final")
            assert page.locator("#status").inner_text() == "Shipped" and page.locator("#move").count() == 0
            log = page.locator("#decision-log tbody tr").all_inner_texts()
            assert [" ".join(r.split()[2:]) for r in log] == [
                "ana created → Draft created",
                "ana Draft → Review ready for review",
                "cleo Review → Running approved",
                "dan Running → Readout 4 weeks",
                "ana Readout → Shipped test wins",
            ]

            # the session cookie alone cannot write: the form needs this page's CSRF token
            forged = page.request.post(
                f"{url}/experiments/pricing-v2/status", form={"status": "Killed", "by": "m", "why": "x"}
            )
            assert forged.status == 403

            # the page was drawn again after each move, with the same numbers: the model was asked once
            assert len(llm.bodies) == 1
            # the model fails (new numbers, or the app restarted): beton's summary alone, the failure said, the
            # key nowhere
            experiments_app._SUMMARIES.clear()
            llm.fail_next(401, body={"error": {"message": f"Incorrect API key provided: {LLM_KEY}", "type": "x"}})
            with caplog.at_level(logging.WARNING, logger="beton_pipeline.app.experiments"):
                page.goto(f"{url}/experiments/pricing-v2")
            assert "AI summary unavailable" in page.locator("#ai-summary .label").inner_text()
            assert "HTTP 401" in page.locator("#ai-summary .note").inner_text()
            assert page.locator("#summary pre").inner_text() == detail["readout"]["summary"]
            assert LLM_KEY not in page.content() and TOKEN not in page.content()
            assert "no AI summary" in caplog.text and LLM_KEY not in caplog.text
    assert rows(copy, "select status, created_by from beton.experiments") == [("Shipped", "ana")]
