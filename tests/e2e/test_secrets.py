"""Secrets: a known value in every secret env var, the whole graph and its playbooks run for real (against
local servers), and the value is found nowhere: not in the output, the Dagster instance's files (event log,
run storage, compute logs), the warehouse, nor the exception texts of a failing destination.

A small export (600 accounts, 6 months) is enough: every stage runs and writes (a few dozen accounts
score above the playbook's bar on the last day, so Slack, Attio and the webhook really receive
requests); the size of the data does not change where a secret could leak."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import yaml

from beton_pipeline.settings import PROJECT_ROOT
from tests.fakes import FakeAttio, FakeSlack, FakeWebhookReceiver

ACCOUNTS, MONTHS, SEED = 600, 6, 11

SECRETS = {
    "BETON_SLACK_TOKEN": "xoxb-SECRET-whole-graph-1a2b",
    "BETON_ATTIO_API_KEY": "attio-SECRET-whole-graph-3c4d",
    "BETON_WEBHOOK_SECRET_CRM_SYNC": "whsec-SECRET-whole-graph-5e6f",
    "DAGSTER_PG_PASSWORD": "pg-SECRET-whole-graph-7a8b",
}


def _config(hook_url: str) -> str:
    settings = yaml.safe_load((PROJECT_ROOT / "beton.yaml").read_text())
    settings["demo"] = {"accounts": ACCOUNTS, "seed": SEED}
    settings["playbooks"] = [
        {
            "name": "hot-accounts",
            "when": {"min_score": 0.05},
            "holdout_fraction": 0.2,
            "then": [
                {"type": "slack", "channel": "#revenue", "template": "*$company* is hot: $score. $signals"},
                {"type": "attio", "attribute": "beton_score", "value": "$score_raw"},
                {"type": "webhook", "name": "crm-sync", "url": f"{hook_url}/hooks/beton"},
            ],
        }
    ]
    settings["destinations"] = {"dry_run": False, "max_action_age_days": 3}
    return yaml.safe_dump(settings)


def test_no_secret_anywhere_after_a_full_run(tmp_path):
    from beton_pipeline.sources.demo import generate_demo

    source = tmp_path / "source"
    generate_demo(source, n_accounts=ACCOUNTS, seed=SEED, months=MONTHS)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    warehouse = tmp_path / "warehouse.duckdb"
    with (
        FakeSlack(SECRETS["BETON_SLACK_TOKEN"]) as slack,
        FakeAttio(SECRETS["BETON_ATTIO_API_KEY"]) as attio,
        FakeWebhookReceiver(SECRETS["BETON_WEBHOOK_SECRET_CRM_SYNC"]) as hook,
    ):
        config = tmp_path / "beton.yaml"
        config.write_text(_config(hook.url))
        # A destination that fails by echoing the key back: its error must be stored redacted.
        attio.fail_next(401, body={"message": f"bad key {SECRETS['BETON_ATTIO_API_KEY']}"})
        env = {
            **os.environ,
            **SECRETS,
            "BETON_SOURCE_DIR": str(source),
            "BETON_WAREHOUSE": str(warehouse),
            "BETON_CONFIG": str(config),
            "DAGSTER_HOME": str(home),
            "BETON_SLACK_BASE_URL": slack.base_url,
            "BETON_ATTIO_BASE_URL": attio.url,
        }
        done = subprocess.run(
            [str(Path(sys.executable).parent / "beton"), "run"],
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert slack.successes() and hook.successes(), "the playbook must really have sent something"
    texts = {"stdout": done.stdout, "stderr": done.stderr}
    for path in home.rglob("*"):
        if path.is_file():
            texts[f"dagster home: {path.relative_to(home)}"] = path.read_bytes().decode("utf-8", errors="replace")
    with duckdb.connect(str(warehouse), read_only=True) as con:
        tables = [
            f"{s}.{t}" for s, t in con.sql("select table_schema, table_name from information_schema.tables").fetchall()
        ]
        texts["warehouse"] = "\n".join(str(con.sql(f"select * from {t}").fetchall()) for t in tables)
        errors = con.sql("select last_error from beton.playbook_actions where last_error is not null").fetchall()
    assert any("[redacted]" in e for (e,) in errors), errors  # the echoed key was stored redacted
    assert len(texts) > 3
    for secret in SECRETS.values():
        for where, text in texts.items():
            assert secret not in text, f"{secret[:10]}… found in {where}"
