"""One small live run shared by the end-to-end stories that need a whole `beton run` with every destination
switched on: the secrets test reads what it left behind, the interrupted-run test uses it as the clean run
its re-run must equal. One run instead of two (each ~75 s of CPU on this export): the tests are
CPU-bound on two cores, so every full run saved shortens the suite.

The run: a 600-account, 6-month demo, a playbook that fires (a few dozen accounts score above its bar on the
last day) with Slack, Attio and a webhook against local fakes (`tests/fakes`), `destinations.dry_run: false`,
a known value in every secret environment variable, and the fake Attio answering its first request with a
401 that echoes the key back (the stored error must be redacted)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from beton_pipeline.settings import PROJECT_ROOT
from tests.fakes import FakeAttio, FakeSlack, FakeWebhookReceiver

BETON = str(Path(sys.executable).parent / "beton")
LIVE_ACCOUNTS, LIVE_MONTHS, LIVE_SEED = 600, 6, 5
"""Five cohort months with closed outcome windows; signals are enabled (with the activity bands off, below), so
every table the interrupted-run test compares (health included) has rows, and the playbook fires."""
RUN_TIMEOUT = 1800
"""Bound for one `beton run` of this export (about a minute on 2 idle cores)."""

SECRETS = {
    "BETON_SLACK_TOKEN": "xoxb-SECRET-whole-graph-1a2b",
    "BETON_ATTIO_API_KEY": "attio-SECRET-whole-graph-3c4d",
    "BETON_WEBHOOK_SECRET_CRM_SYNC": "whsec-SECRET-whole-graph-5e6f",
    "DAGSTER_PG_PASSWORD": "pg-SECRET-whole-graph-7a8b",
}


@dataclass
class LiveDestinations:
    slack: FakeSlack
    attio: FakeAttio
    hook: FakeWebhookReceiver


@contextmanager
def live_destinations() -> Iterator[LiveDestinations]:
    """Fake Slack, Attio and webhook receiver on 127.0.0.1 that check the secrets; Attio's first answer is a
    401 echoing the key."""
    with ExitStack() as stack:
        fakes = LiveDestinations(
            slack=stack.enter_context(FakeSlack(SECRETS["BETON_SLACK_TOKEN"])),
            attio=stack.enter_context(FakeAttio(SECRETS["BETON_ATTIO_API_KEY"])),
            hook=stack.enter_context(FakeWebhookReceiver(SECRETS["BETON_WEBHOOK_SECRET_CRM_SYNC"])),
        )
        fakes.attio.fail_next(401, body={"message": f"bad key {SECRETS['BETON_ATTIO_API_KEY']}"})
        yield fakes


def live_env(base: Path, source: Path, name: str, fakes: LiveDestinations) -> dict[str, str]:
    """Environment of a live run named `name` under `base`: its own warehouse, Dagster home (the project's
    dagster.yaml) and settings (the committed beton.yaml with the playbook and live destinations)."""
    home = base / f"home_{name}"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    settings = yaml.safe_load((PROJECT_ROOT / "beton.yaml").read_text())
    settings["demo"] = {"accounts": LIVE_ACCOUNTS, "seed": LIVE_SEED}
    # Activity bands off (cohort months stay strata): these runs test secrets and idempotency, not discovery,
    # and at this size no discovered signal clears the adjusted rule (measured at 600 and at 1,500 accounts),
    # which would leave signal_health empty and prove nothing.
    settings["discovery"] = {**(settings.get("discovery") or {}), "activity_strata": 1}
    settings["playbooks"] = [
        {
            "name": "hot-accounts",
            "when": {"min_score": 0.05},
            "holdout_fraction": 0.2,
            "then": [
                {"type": "slack", "channel": "#revenue", "template": "*$company* is hot: $score. $signals"},
                {"type": "attio", "attribute": "beton_score", "value": "$score_raw"},
                {"type": "webhook", "name": "crm-sync", "url": f"{fakes.hook.url}/hooks/beton"},
            ],
        }
    ]
    settings["destinations"] = {"dry_run": False, "max_action_age_days": 3}
    config = base / f"beton_{name}.yaml"
    config.write_text(yaml.safe_dump(settings))
    return {
        **os.environ,
        **SECRETS,
        "BETON_SOURCE_DIR": str(source),
        "BETON_WAREHOUSE": str(base / f"{name}.duckdb"),
        "BETON_CONFIG": str(config),
        "DAGSTER_HOME": str(home),
        "BETON_SLACK_BASE_URL": fakes.slack.base_url,
        "BETON_ATTIO_BASE_URL": fakes.attio.url,
    }


@dataclass(frozen=True)
class LiveRun:
    base: Path
    source: Path
    env: dict[str, str]
    done: subprocess.CompletedProcess
    slack_successes: int
    hook_successes: int

    @property
    def warehouse(self) -> str:
        return self.env["BETON_WAREHOUSE"]

    @property
    def home(self) -> Path:
        return Path(self.env["DAGSTER_HOME"])


@pytest.fixture(scope="session")
def live_run(tmp_path_factory) -> LiveRun:
    """The clean live run (see the module docstring); it must succeed."""
    from beton_pipeline.sources.demo import generate_demo

    base = tmp_path_factory.mktemp("live_run")
    source = base / "source"
    generate_demo(source, n_accounts=LIVE_ACCOUNTS, seed=LIVE_SEED, months=LIVE_MONTHS)
    with live_destinations() as fakes:
        env = live_env(base, source, "clean", fakes)
        done = subprocess.run([BETON, "run"], env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=base)
        assert done.returncode == 0, done.stderr[-3000:]
        return LiveRun(base, source, env, done, len(fakes.slack.successes()), len(fakes.hook.successes()))
