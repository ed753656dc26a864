"""`beton check --sources`: one call per enabled connector says whether its key opens the project or workspace, and
why not (missing variable, refused key, missing scope, unknown project, no answer), never with the key in it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from beton_pipeline.settings import Settings
from beton_pipeline.sources.connectors.checks import check_connection
from tests.fakes.attio_api import FakeAttioRecords
from tests.fakes.posthog_api import FakePostHog
from tests.fakes.stripe_api import FakeStripe

KEYS = {
    "BETON_POSTHOG_API_KEY": "phx_SECRET_check_1",
    "BETON_ATTIO_API_KEY": "attio-SECRET-check-2",
    "BETON_STRIPE_API_KEY": "sk_test_SECRET_check_3",
}


@pytest.fixture
def fakes():
    with (
        FakePostHog(KEYS["BETON_POSTHOG_API_KEY"], "4242") as posthog,
        FakeAttioRecords(KEYS["BETON_ATTIO_API_KEY"]) as attio,
        FakeStripe(KEYS["BETON_STRIPE_API_KEY"]) as stripe,
    ):
        yield posthog, attio, stripe


def _settings(posthog, attio, stripe, project: str = "4242") -> Settings:
    return Settings.model_validate(
        {
            "sources": {
                "posthog": {"enabled": True, "host": posthog.url, "project_id": project},
                "attio": {"enabled": True, "api_base": attio.url},
                "stripe": {"enabled": True, "api_base": stripe.url},
            }
        }
    )


def _check(settings: Settings, name: str):
    result = check_connection(name, settings.connector_config(name))
    assert all(key not in result.detail for key in KEYS.values())
    return result


def test_each_connector_says_what_its_key_opens(fakes, monkeypatch):
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    settings = _settings(*fakes)
    posthog, attio, stripe = (_check(settings, n) for n in ("posthog", "attio", "stripe"))
    assert posthog.ok and posthog.detail == f"project 4242 answers event queries at {fakes[0].url}"
    assert attio.ok and "workspace Beton Test" in attio.detail
    assert stripe.ok and stripe.detail.startswith("test-mode key reads events, customers, subscriptions, invoices")
    assert [len(f.requests) for f in fakes] == [1, 1, 4]


def test_each_failure_is_named_without_the_key(fakes, monkeypatch):
    posthog_fake, attio_fake, stripe_fake = fakes
    monkeypatch.delenv("BETON_POSTHOG_API_KEY", raising=False)
    monkeypatch.setenv("BETON_ATTIO_API_KEY", KEYS["BETON_ATTIO_API_KEY"])
    monkeypatch.setenv("BETON_STRIPE_API_KEY", "sk_test_SECRET_wrong")
    attio_fake.identity["scope"] = "record_permission:read"
    settings = _settings(*fakes)
    posthog = _check(settings, "posthog")
    assert not posthog.ok and posthog.detail.startswith("BETON_POSTHOG_API_KEY is not set")
    attio = _check(settings, "attio")
    assert not attio.ok and attio.detail == "workspace Beton Test: the key lacks object_configuration:read"
    stripe = _check(settings, "stripe")
    assert not stripe.ok and "the key in BETON_STRIPE_API_KEY is refused (HTTP 401" in stripe.detail
    assert "SECRET_wrong" not in stripe.detail
    monkeypatch.setenv("BETON_POSTHOG_API_KEY", KEYS["BETON_POSTHOG_API_KEY"])
    unknown = _check(_settings(*fakes, project="999"), "posthog")
    assert not unknown.ok and unknown.detail == f"project 999 not found at {posthog_fake.url}"
    attio_fake.identity["active"] = False
    assert _check(settings, "attio").detail == "the key in BETON_ATTIO_API_KEY is not active"
    url = stripe_fake.url
    stripe_fake.down()
    down = _check(settings, "stripe")
    assert not down.ok and down.detail.startswith(f"{url}/v1/events: no answer (ConnectionError)")


def test_the_command_prints_one_line_per_connector_and_fails_when_one_cannot_pull(fakes, tmp_path):
    posthog, attio, stripe = fakes
    config = tmp_path / "beton.yaml"
    config.write_text(yaml.safe_dump(_settings(posthog, attio, stripe).model_dump(mode="json", include={"sources"})))
    env = {**os.environ, **KEYS, "BETON_CONFIG": str(config), "BETON_STRIPE_API_KEY": "sk_test_SECRET_wrong"}
    beton = str(Path(sys.executable).parent / "beton")
    done = subprocess.run([beton, "check", "--sources"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0] == f"posthog: ok: project 4242 answers event queries at {posthog.url}"
    assert lines[1] == f"attio: ok: workspace Beton Test at {attio.url}"
    assert lines[2].startswith("stripe: FAILED: the key in BETON_STRIPE_API_KEY is refused (HTTP 401")
    assert done.stderr.startswith("error: beton check --sources: 1 of 3 connector(s) cannot pull:")
    assert "Traceback" not in done.stderr and "SECRET" not in done.stdout + done.stderr
    env["BETON_STRIPE_API_KEY"] = KEYS["BETON_STRIPE_API_KEY"]
    done = subprocess.run([beton, "check", "--sources", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and '"ok": true' in done.stdout
    config.write_text("sources: {}\n")
    done = subprocess.run([beton, "check", "--sources"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "no connector is enabled" in done.stderr


def test_a_key_with_a_line_break_is_refused_before_any_request(monkeypatch):
    """An HTTP library refuses such a header and writes its value (the key) into its error: refuse it first."""
    from beton_pipeline.sources.connectors.common import ConnectorError, secret

    monkeypatch.setenv("BETON_STRIPE_API_KEY", "sk_test_SECRET\nsecond-line")
    with pytest.raises(ConnectorError, match="a line break or a control character") as raised:
        secret("BETON_STRIPE_API_KEY", "stripe")
    assert "SECRET" not in str(raised.value)
    monkeypatch.setenv("BETON_STRIPE_API_KEY", "  sk_test_ok  ")
    assert secret("BETON_STRIPE_API_KEY", "stripe") == "sk_test_ok"


def test_a_posthog_batch_export_is_checked_on_its_bucket(monkeypatch):
    """One page of the prefix listed and the newest object's HEAD: how many export objects, the newest's time; a
    missing bucket or a refused key pair said without the keys; the query API asked only when topped up."""
    from datetime import UTC, datetime, timedelta

    from beton_pipeline.sources.connectors.posthog_batch import ACCESS_KEY_ENV, SECRET_KEY_ENV
    from tests.fakes.s3 import FakeS3, export_event

    start = datetime(2025, 3, 1, 10, tzinfo=UTC)
    with FakeS3() as s3, FakePostHog(KEYS["BETON_POSTHOG_API_KEY"], "4242") as posthog:
        keys = [s3.put_export([export_event(h, start)], start, start + timedelta(hours=h + 1)) for h in range(3)]
        newest = s3.client().head_object(Bucket=s3.bucket, Key=keys[-1])["LastModified"]
        monkeypatch.setenv(ACCESS_KEY_ENV, s3.access_key)
        monkeypatch.setenv(SECRET_KEY_ENV, s3.secret_key)
        monkeypatch.delenv("BETON_POSTHOG_API_KEY", raising=False)

        def check(**export):
            export = {"bucket": s3.bucket, "prefix": "posthog/events/", "endpoint_url": s3.url, **export}
            settings = Settings.model_validate(
                {
                    "sources": {
                        "posthog": {"enabled": True, "host": posthog.url, "project_id": "4242", "batch_export": export}
                    }
                }
            )
            return _check(settings, "posthog")

        ok = check()
        assert ok.ok and ok.detail.startswith(
            f"s3://{s3.bucket}/posthog/events/ at {s3.url}: 3 export objects, newest written "
            f"{newest.astimezone(UTC).isoformat()} ("
        )
        assert ok.detail.endswith(f"({keys[-1].rsplit('/', 1)[-1]}), readable")
        assert posthog.requests == []  # no top-up: no API key needed, PostHog not asked
        missing = check(bucket="no-such-bucket")
        assert not missing.ok and missing.detail.startswith("posthog batch export: there is no bucket 'no-such-bucket'")
        topped = check(top_up=True)
        assert not topped.ok and topped.detail.endswith(
            "; BETON_POSTHOG_API_KEY is not set (export it with the posthog key)"
        )

        key_id, _ = s3.require_credentials()
        monkeypatch.setenv(ACCESS_KEY_ENV, key_id)
        monkeypatch.setenv(SECRET_KEY_ENV, "SECRET_wrong_s3_key")
        refused = check()
        assert not refused.ok and "(SignatureDoesNotMatch, HTTP 403) listing the prefix (one page)" in refused.detail
        assert "SECRET_wrong" not in refused.detail and key_id not in refused.detail
