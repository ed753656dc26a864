"""Secrets: a known value in every secret env var, the whole graph and its playbooks run for real (against
local servers), and the value is found nowhere: not in the output, the Dagster instance's files (event log,
run storage, compute logs), the warehouse, nor the exception texts of a failing destination.

The run is the shared live run (`tests/e2e/conftest.py`: 600 accounts, 6 months, Slack, Attio and a webhook
really receive requests, Attio's first answer echoes the key back); the size of the data does not change
where a secret could leak."""

import duckdb
import pytest

from tests.e2e.conftest import SECRETS

pytestmark = pytest.mark.slow(seconds=180)  # with the shared live run


def test_no_secret_anywhere_after_a_full_run(live_run):
    assert live_run.slack_successes and live_run.hook_successes, "the playbook must really have sent something"
    texts = {"stdout": live_run.done.stdout, "stderr": live_run.done.stderr}
    home = live_run.home
    for path in home.rglob("*"):
        if path.is_file():
            texts[f"dagster home: {path.relative_to(home)}"] = path.read_bytes().decode("utf-8", errors="replace")
    with duckdb.connect(live_run.warehouse, read_only=True) as con:
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
