"""The settings and destinations pages and endpoints, served for real over a small warehouse of their own (an outbox
written here) and a settings file in tmp_path: every setting with its default and meaning, never a secret; a
change written to beton.yaml with its comments kept, refused with the validator's words when it would not load;
the destinations with their secrets set or not and the outbox's actions as the warehouse counts them; the Attio
field auto-match as a dry run and applied against the local Attio fake, a conflict or an Attio failure changing
nothing. Then the settings form and the destinations page in a browser."""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path

import duckdb
import pytest

from beton_pipeline.settings import RevenueSettings, Settings, load_settings
from beton_pipeline.store.outbox import ensure_tables
from tests.app.conftest import get, get_json, post_json, serving
from tests.fakes.attio_api import FakeAttioRecords

TOKEN = "app-token-S3CRET-5e2a"
ATTIO_KEY = "attio-SECRET-settings-page-77c1"
READ_WRITE = "record_permission:read object_configuration:read object_configuration:read-write"
SECRETS = {
    "BETON_SLACK_TOKEN": "xoxb-SECRET-slack-31f0",
    "BETON_WEBHOOK_SECRET_CRM_HOOK": "whsec-SECRET-hook-8d2b",
    "BETON_APP_TOKEN": TOKEN,
}
HOOK_URL = "https://hooks.example.com/in?token=HOOK-QUERY-SECRET-1"

SETTINGS = """\
# team settings: this comment must survive
revenue:
  acv: 24000              # our ACV

windows:
  observation_days: 14    # two weeks

thresholds:
  min_sample: 30
  min_lift: 1.3           # minimum lift

discovery:
  first_n_days: [1, 3, 7, 14]

schedule:
  timezone: UTC

playbooks:
  - name: hot-accounts
    when: {min_score: 0.5}
    then:
      - {type: slack, channel: "#revenue-alerts"}
      - {type: webhook, name: crm-hook, url: "https://hooks.example.com/in?token=HOOK-QUERY-SECRET-1"}
      - {type: attio, attribute: beton_score}

destinations:
  dry_run: true           # nothing is sent yet
"""

ACTIONS = [  # (destination type, destination, status, how many)
    ("slack", "slack:#revenue-alerts", "dry_run", 3),
    ("slack", "slack:#revenue-alerts", "sent", 1),
    ("slack", "slack:#old-channel", "sent", 2),
    ("webhook", "webhook:crm-hook", "dead", 2),
    ("attio", "attio:companies.beton_score", "held_out", 1),
]


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "beton.yaml"
    path.write_text(SETTINGS)
    return path


@pytest.fixture
def warehouse(tmp_path) -> Path:
    """A warehouse holding only an outbox with `ACTIONS`."""
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as con:
        ensure_tables(con)
        n = 0
        for kind, destination, status, count in ACTIONS:
            for _ in range(count):
                n += 1
                con.execute(
                    "insert into beton.playbook_actions (idempotency_key, playbook, day, account_id, destination, "
                    "destination_type, held_out, status, max_attempts, payload, created_at, updated_at) "
                    "values (?, 'hot-accounts', ?, ?, ?, ?, ?, ?, 6, '{}', ?, ?)",
                    [
                        f"k{n}",
                        date(2025, 3, n),
                        f"acc{n}",
                        destination,
                        kind,
                        status == "held_out",
                        status,
                        datetime(2025, 3, 20),
                        datetime(2025, 3, 20),
                    ],
                )
    return path


@pytest.fixture
def secrets(monkeypatch):
    """The destinations' secrets set (Attio's key unset), with values the answers must never contain."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("BETON_ATTIO_API_KEY", raising=False)
    monkeypatch.delenv("BETON_CONFIG", raising=False)
    return SECRETS


def post(url: str, body: object, token: str | None = TOKEN) -> tuple[int, dict]:
    return post_json(url, body, token)


def by_path(answer: dict) -> dict[str, dict]:
    return {s["setting"]: s for section in answer["sections"] for s in section["settings"]}


def test_the_settings_are_listed_with_defaults_and_meanings_and_never_a_secret(warehouse, config, secrets):
    with serving(warehouse, settings=load_settings(config), token=TOKEN, config_path=config) as url:
        answer = get_json(f"{url}/api/settings")
        bodies = [get(f"{url}{path}")[2].decode() for path in ("/api/settings", "/settings", "/destinations")]
        bodies.append(json.dumps(get_json(f"{url}/api/destinations")))
    assert (answer["settings_file"], answer["changeable"], answer["why_not"]) == (str(config), True, None)
    assert [s["section"] for s in answer["sections"]] == list(Settings.model_fields)
    settings = by_path(answer)
    assert settings["revenue.acv"] == {
        "setting": "revenue.acv",
        "value": 24000.0,
        "default": 12000.0,
        "changed": True,
        "description": RevenueSettings.model_fields["acv"].description,
        "changeable": True,
    }
    assert (settings["thresholds.min_lift"]["value"], settings["thresholds.min_lift"]["changed"]) == (1.3, False)
    assert settings["discovery.first_n_days"]["value"] == [1, 3, 7, 14]
    assert settings["sources.posthog.page_size"]["default"] == 10_000  # nested sections by dotted path
    assert settings["destinations.dry_run"] == {**settings["destinations.dry_run"], "value": True, "changed": True}
    assert settings["freshness.max_lag_days"]["changeable"] is False
    assert settings["destinations.attio.object"]["why_not"].startswith("the Attio mapping is recorded by the auto")
    playbooks = next(s for s in answer["sections"] if s["section"] == "playbooks")
    assert (playbooks["changeable"], [p["name"] for p in playbooks["value"]]) == (False, ["hot-accounts"])
    assert playbooks["value"][0]["then"][1]["url"] == "https://hooks.example.com/in?[redacted]"
    assert answer["secrets"] == {
        "slack": {"env_var": "BETON_SLACK_TOKEN", "set": True},
        "attio": {"env_var": "BETON_ATTIO_API_KEY", "set": False},
        "webhooks": [{"name": "crm-hook", "env_var": "BETON_WEBHOOK_SECRET_CRM_HOOK", "set": True}],
    }
    for body in bodies:  # no secret's value, nor the token a webhook URL carries in its query
        assert all(value not in body for value in (*secrets.values(), "HOOK-QUERY-SECRET-1"))


def test_without_a_token_or_a_settings_file_nothing_can_be_changed(warehouse, config, secrets, monkeypatch):
    with serving(warehouse, settings=load_settings(config), config_path=config) as url:
        answer = get_json(f"{url}/api/settings")
        assert answer["changeable"] is False and "BETON_APP_TOKEN" in answer["why_not"]
        assert post(f"{url}/api/settings", {"changes": {"thresholds.min_lift": 1.5}})[0] == 403
        assert b'id="change-settings"' not in get(f"{url}/settings")[2]
    with serving(warehouse, settings=load_settings(config), token=TOKEN) as url:
        status, answer = post(f"{url}/api/settings", {"changes": {"thresholds.min_lift": 1.5}})
        assert status == 409 and "started without a settings file" in answer["error"]
    missing = config.with_name("missing.yaml")
    monkeypatch.setenv("BETON_CONFIG", str(missing))
    with serving(warehouse, settings=load_settings(config), token=TOKEN, config_path=missing) as url:
        status, answer = post(f"{url}/api/settings", {"changes": {"thresholds.min_lift": 1.5}})
        assert status == 409 and answer["error"].startswith(f"{missing}: settings file not found (named by BETON_C")
        assert get_json(f"{url}/api/settings")["changeable"] is False
    assert config.read_text() == SETTINGS and not missing.exists()


def test_a_change_is_written_with_the_comments_kept_and_the_pages_use_it(warehouse, config, secrets):
    with serving(warehouse, settings=load_settings(config), token=TOKEN, config_path=config) as url:
        changes = {
            "thresholds.min_lift": 1.5,
            "windows.observation_days": 21,
            "discovery.first_n_days": [1, 3, 7],
            "windows.as_of": "2025-06-01",  # YAML reads a bare 2025-06-01 as a date: written quoted
            "schedule.timezone": "Europe/Berlin",
            "revenue.sales_capacity": 40,  # not in the file yet
            "thresholds.min_sample": 30,  # unchanged: not listed
        }
        assert post(f"{url}/api/settings", {"changes": changes}, token=None)[0] == 401
        assert post(f"{url}/api/settings", {"changes": changes}, token="wrong")[0] == 401
        status, answer = post(f"{url}/api/settings", {"changes": changes})
        assert status == 200, answer
        assert answer["changed"] == [
            {"setting": "thresholds.min_lift", "old": 1.3, "new": 1.5},
            {"setting": "windows.observation_days", "old": 14, "new": 21},
            {"setting": "discovery.first_n_days", "old": [1, 3, 7, 14], "new": [1, 3, 7]},
            {"setting": "windows.as_of", "old": None, "new": "2025-06-01"},
            {"setting": "schedule.timezone", "old": "UTC", "new": "Europe/Berlin"},
            {"setting": "revenue.sales_capacity", "old": None, "new": 40},
        ]
        assert answer["settings_file"] == str(config) and "next run" in answer["note"]
        expected = (
            SETTINGS.replace("min_lift: 1.3 ", "min_lift: 1.5 ")
            .replace("observation_days: 14 ", "observation_days: 21 ")
            .replace("first_n_days: [1, 3, 7, 14]", "first_n_days: [1, 3, 7]")
            .replace("# two weeks\n", '# two weeks\n  as_of: "2025-06-01"\n')
            .replace("timezone: UTC", "timezone: Europe/Berlin")
            .replace("# our ACV\n", "# our ACV\n  sales_capacity: 40\n")
        )
        assert config.read_text() == expected
        loaded = load_settings(config)
        assert (loaded.thresholds.min_lift, loaded.windows.as_of, loaded.revenue.sales_capacity) == (
            1.5,
            "2025-06-01",
            40,
        )
        shown = by_path(get_json(f"{url}/api/settings"))
        assert {p: shown[p]["value"] for p in changes} == {**changes, "discovery.first_n_days": [1, 3, 7]}

        refusals = [
            ({"thresholds.min_lift": -1}, 400, "thresholds.min_lift: Input should be greater than 0"),
            ({"windows.observation_days": 90}, 400, "observation_days must not exceed conversion_window_days"),
            ({"thresholds.min_lift": "high"}, 400, "thresholds.min_lift: Input should be a valid number"),
            ({"thresholds.max_lift": 3}, 400, "thresholds.max_lift is not a setting"),
            ({"playbooks": []}, 400, "playbooks cannot be changed from the app: playbooks are edited in beton.yaml"),
            ({"destinations.attio.object": "deals"}, 400, "the Attio mapping is recorded by the auto-match"),
            ({"destinations.webhook_allowed_hosts": ["x.io"]}, 400, "edited in beton.yaml by hand"),
            ({"freshness.max_lag_days": {}}, 400, "not a plain value"),
            ({"revenue.acv": {"value": 1}}, 400, "revenue.acv: give a number, text, true/false, null or a list"),
            # what a run or the code location could not use is refused before the file is written
            ({"schedule.cron": "not a cron"}, 400, "'not a cron' is not a cron schedule of five fields"),
            ({"schedule.timezone": "Mars/Olympus"}, 400, "'Mars/Olympus' is not a time zone name"),
            ({"monitoring.start_date": "2099-99-99"}, 400, "'2099-99-99' is not a day of the calendar"),
            ({"windows.as_of": "2099-99-99"}, 400, "'2099-99-99' is not an ISO date or time"),
            ({"schedule.timezone": "*anchor"}, 400, "is not a time zone name"),  # YAML-special text: no 500
            # connectors send their keys to these hosts: never from the app
            ({"sources.attio.api_base": "https://evil.example.com"}, 400, "edited in beton.yaml by hand"),
            ({"sources.posthog.enabled": True}, 400, "edited in beton.yaml by hand"),
            ({"sources.landing_dir": "/tmp/x"}, 400, "edited in beton.yaml by hand"),
        ]
        for change, status, words in refusals:
            got, answer = post(f"{url}/api/settings", {"changes": change})
            assert (got, words in answer["error"]) == (status, True), answer
        assert "/beton.yaml was not changed" in post(f"{url}/api/settings", {"changes": refusals[0][0]})[1]["error"]
        assert post(f"{url}/api/settings", {"changes": {}})[0] == 400
        assert config.read_text() == expected  # every refusal left the file as it was
        assert not list(config.parent.glob(".beton.yaml*"))


def test_destinations_with_their_secrets_playbooks_and_outbox_counts(warehouse, config, secrets):
    with serving(warehouse, settings=load_settings(config), token=TOKEN, config_path=config) as url:
        answer = get_json(f"{url}/api/destinations")
        status, _, page = get(f"{url}/destinations")
    with duckdb.connect(str(warehouse), read_only=True) as con:
        counted = con.execute(
            "select destination, status, count(*) from beton.playbook_actions group by 1, 2"
        ).fetchall()
    assert (answer["dry_run"], answer["outbox"]) == (True, None)
    slack, attio, webhook = answer["destinations"]
    assert [d["type"] for d in answer["destinations"]] == ["slack", "attio", "webhook"]
    assert slack["configured"] and slack["secrets"] == [{"env_var": "BETON_SLACK_TOKEN", "set": True}]
    assert (slack["playbooks"], slack["actions"]) == (["hot-accounts"], {"dry_run": 3, "sent": 3})
    assert [(t["destination"], t["playbooks"]) for t in slack["targets"]] == [
        ("slack:#revenue-alerts", ["hot-accounts"]),
        ("slack:#old-channel", []),  # the outbox holds it; beton.yaml no longer names it
    ]
    assert attio["secrets"] == [{"env_var": "BETON_ATTIO_API_KEY", "set": False}]
    assert (attio["object"], attio["fields"], attio["actions"]) == ("companies", {}, {"held_out": 1})
    assert webhook["secrets"] == [{"env_var": "BETON_WEBHOOK_SECRET_CRM_HOOK", "set": True}]
    assert webhook["targets"][0]["url"] == "https://hooks.example.com/in?[redacted]"
    listed = {
        (t["destination"], s, n) for d in answer["destinations"] for t in d["targets"] for s, n in t["actions"].items()
    }
    assert listed == set(counted) and len(listed) == len(ACTIONS)
    assert status == 200 and b"BETON_ATTIO_API_KEY is not set where beton serve runs" in page


def test_the_attio_auto_match_as_a_dry_run_and_applied(warehouse, config, secrets, monkeypatch):
    with FakeAttioRecords(ATTIO_KEY) as attio:
        monkeypatch.setenv("BETON_ATTIO_API_KEY", ATTIO_KEY)
        monkeypatch.setenv("BETON_ATTIO_BASE_URL", attio.url)
        attio.identity["scope"] = READ_WRITE
        attio.add_attribute("companies", "lead_score", "Lead score", "text")
        with serving(warehouse, settings=load_settings(config), token=TOKEN, config_path=config) as url:
            dry = get_json(f"{url}/api/destinations/attio/fields")
            assert dry["object"] == "companies" and dry["settings_file"] == str(config)
            assert [(p["field"], p["action"], p["attribute"], p["type"]) for p in dry["proposals"]] == [
                ("score", "conflict", "lead_score", "number"),
                ("rank", "create", "beton_rank", "number"),
                ("top_signals", "create", "beton_top_signals", "text"),
                ("why", "create", "beton_why", "text"),
            ]
            assert dry["proposals"][0]["reason"] == (
                "'Lead score' (lead_score) looks like the score field but is of type text, and beton writes a number"
            )
            assert dry["would_create"] == ["beton_rank", "beton_top_signals", "beton_why"]
            assert dry["conflicts"][0]["field"] == "score" and 'use {"score": "SLUG"}' in dry["conflicts"][0]["advice"]

            assert post(f"{url}/api/destinations/attio/auto-match", {}, token=None)[0] == 401
            status, answer = post(f"{url}/api/destinations/attio/auto-match", {})
            assert status == 409 and answer["error"].startswith("1 field(s) conflict with an attribute in Attio; nothi")
            status, answer = post(f"{url}/api/destinations/attio/auto-match", {"use": {"score": "Bad Slug"}})
            assert status == 400 and "use score: Bad Slug" in answer["error"]
            assert [r for r in attio.requests if r.method == "POST"] == [] and config.read_text() == SETTINGS

            status, answer = post(f"{url}/api/destinations/attio/auto-match", {"use": {"score": "account_score"}})
            assert status == 200, answer
            assert [(p["attribute"], p["type"]) for p in answer["created"]] == [
                ("account_score", "number"),
                ("beton_rank", "number"),
                ("beton_top_signals", "text"),
                ("beton_why", "text"),
            ]
            mapping = {"score": "account_score", "rank": "beton_rank", "top_signals": "beton_top_signals"}
            mapping["why"] = "beton_why"
            assert answer["recorded"] == mapping
            assert attio.attribute("companies", "account_score")["type"] == "number"
            assert config.read_text() == SETTINGS + "  attio:\n    object: companies\n    fields:\n" + "".join(
                f"      {f}: {s}\n" for f, s in mapping.items()
            )
            assert get_json(f"{url}/api/destinations")["destinations"][1]["fields"] == mapping  # the pages use it
            again = get_json(f"{url}/api/destinations/attio/fields")
            assert [p["action"] for p in again["proposals"]] == ["use"] * 4 and again["would_create"] == []

            attio.identity["scope"] = READ_WRITE.replace(" object_configuration:read-write", "")
            before = config.read_text()
            status, answer = post(
                f"{url}/api/destinations/attio/auto-match", {"object": "people", "use": {"score": "p_score"}}
            )
            assert status == 502 and "needs the scope object_configuration:read-write" in answer["error"]
            assert "was not changed; auto-match again when that is fixed" in answer["error"]
            assert config.read_text() == before and ATTIO_KEY not in json.dumps(answer)
        assert all(ATTIO_KEY not in r.path for r in attio.requests)


def test_attio_errors_are_paragraphs_without_the_key(warehouse, config, secrets, monkeypatch):
    with FakeAttioRecords(ATTIO_KEY) as attio:
        monkeypatch.setenv("BETON_ATTIO_API_KEY", ATTIO_KEY)
        monkeypatch.setenv("BETON_ATTIO_BASE_URL", attio.url)
        with serving(warehouse, settings=load_settings(config), token=TOKEN, config_path=config) as url:
            attio.fail_next(400, body={"status_code": 400, "message": f"bad request for key {ATTIO_KEY}"})
            status, _, body = get(f"{url}/api/destinations/attio/fields")
            assert status == 502 and b"Attio answered HTTP 400 while listing" in body and ATTIO_KEY.encode() not in body
            attio.fail_next(400, body={"status_code": 400, "message": f"bad request for key {ATTIO_KEY}"})
            status, _, page = get(f"{url}/destinations")
            assert status == 200 and b'id="fields-error"' in page and ATTIO_KEY.encode() not in page
            status, answer = post(f"{url}/api/destinations/attio/auto-match", {"object": "Not A Slug"})
            assert status == 400 and "give an Attio object's slug" in answer["error"]


def sign_in(page, url: str, path: str) -> None:
    page.goto(f"{url}{path}")
    page.click("#sign-in")
    page.fill("input[name='token']", TOKEN)
    page.click("#login button[type='submit']")
    page.wait_for_url(f"**{path}")


def test_the_settings_form_changes_beton_yaml_and_shows_a_refusal(warehouse, config, secrets, page):
    with serving(warehouse, settings=load_settings(config), token=TOKEN, config_path=config) as url:
        page.goto(f"{url}/settings")
        assert page.locator("#change-settings").count() == 0
        row = page.locator("tr[data-setting='revenue.acv']")
        assert "changed" in row.inner_text() and "24000.0" in row.inner_text() and "12000.0" in row.inner_text()
        sign_in(page, url, "/settings")
        page.fill("input[name='thresholds.min_lift']", "1.6")
        page.select_option("select[name='signals.strict']", "true")
        page.click("#save-settings")
        page.wait_for_selector("#changes")
        listed = page.locator("#changes li").all_inner_texts()
        assert listed == ["thresholds.min_lift: 1.3 → 1.6", "signals.strict: false → true"]
        assert "min_lift: 1.6           # minimum lift" in config.read_text()
        assert load_settings(config).signals.strict is True
        assert page.locator("tr[data-setting='thresholds.min_lift'] .badge").inner_text() == "changed"

        page.fill("input[name='windows.observation_days']", "90")
        with page.expect_response(f"{url}/settings") as answered:
            page.click("#save-settings")
        assert answered.value.status == 400
        refusal = page.locator("#refusal").inner_text()
        assert "observation_days must not exceed conversion_window_days" in refusal and "was not changed" in refusal
        assert page.locator("input[name='windows.observation_days']").input_value() == "90"  # kept as typed
        assert load_settings(config).windows.observation_days == 14
        assert all(value not in page.content() for value in secrets.values())


def test_the_destinations_page_auto_matches_attio_fields(warehouse, config, secrets, page, monkeypatch):
    with FakeAttioRecords(ATTIO_KEY) as attio:
        attio.identity["scope"] = READ_WRITE
        monkeypatch.setenv("BETON_ATTIO_API_KEY", ATTIO_KEY)
        monkeypatch.setenv("BETON_ATTIO_BASE_URL", attio.url)
        with serving(warehouse, settings=load_settings(config), token=TOKEN, config_path=config) as url:
            page.goto(f"{url}/destinations")
            card = page.locator("[data-destination='slack']").inner_text()
            assert "BETON_SLACK_TOKEN set" in card and "hot-accounts" in card and "dry_run 3" in card
            assert page.locator("#dry-run").count() == 1
            actions = page.locator("#fields tbody tr td:nth-child(2)").all_inner_texts()
            assert actions == ["create"] * 4 and page.locator("#auto-match").count() == 0
            sign_in(page, url, "/destinations")
            page.fill("#auto-match input[name='use.rank']", "account_rank")
            page.click("#auto-match button[type='submit']")
            page.wait_for_selector("#auto-matched")
            assert "account_rank" in page.locator("#auto-matched").inner_text()
            assert page.locator("#fields tbody tr td:nth-child(2)").all_inner_texts() == ["use"] * 4
            assert load_settings(config).playbook_config().destinations.attio.fields.mapped() == {
                "score": "beton_score",
                "rank": "account_rank",
                "top_signals": "beton_top_signals",
                "why": "beton_why",
            }
            assert ATTIO_KEY not in page.content()
