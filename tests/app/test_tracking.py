"""`POST /api/track`: exposures and conversions checked against the experiment and kept in the tracking spool,
whose rows the ingest reads through the contract (tests/sources/test_tracking.py follows them into the readout)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from beton_pipeline.app import tracking as tracking_app
from beton_pipeline.sources import tracking as spool_module
from beton_pipeline.sources.tracking import TrackingSpool, tracking_paths
from tests.app.conftest import post_json, run_settings, serving
from tests.test_warehouse_lock import hold_lock

TOKEN = "app-token-TRACKING-5e1f"


@pytest.fixture
def app(tmp_path, pipeline_run):
    """The app, with writes, over a copy of the demo run (its beton.yaml experiments: new-onboarding with control
    and test, ai-assistant with control, variant-a and variant-b)."""
    copy = tmp_path / "warehouse.duckdb"
    shutil.copy(pipeline_run.warehouse, copy)
    with serving(copy, settings=run_settings(pipeline_run), token=TOKEN, lock_wait_seconds=0.5) as url:
        yield url, copy


def spooled(warehouse: Path) -> list[tuple]:
    with sqlite3.connect(tracking_paths(warehouse)[0]) as con:
        return con.execute(
            "select experiment, variant, user_key, event_type, event_name from tracked_events order by id"
        ).fetchall()


def test_events_are_kept_once_per_experiment_user_and_type(app):
    url, warehouse = app
    track = f"{url}/api/track"
    exposure = {"experiment": "new-onboarding", "variant": "test", "user": "u-1", "event": "exposure"}
    exposure["timestamp"] = (datetime.now(UTC) - timedelta(hours=3)).isoformat()
    status, first = post_json(track, exposure, TOKEN)
    assert status == 201 and first["duplicate"] is False and first["event_name"] == "$feature_flag_called"
    status, again = post_json(track, {**exposure, "variant": "control"}, TOKEN)  # the first exposure stays
    assert status == 200 and again["duplicate"] is True and again["uuid"] == first["uuid"]
    at = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    conversion = {**exposure, "event": "conversion", "timestamp": at}
    status, converted = post_json(track, conversion, TOKEN)
    assert status == 201 and converted["event_name"] == "api_key_created"  # the experiment's goal event
    assert post_json(track, {**exposure, "experiment": "ai-assistant", "variant": "variant-a"}, TOKEN)[0] == 201
    assert spooled(warehouse) == [
        ("new-onboarding", "test", "u-1", "exposure", "$feature_flag_called"),
        ("new-onboarding", "test", "u-1", "conversion", "api_key_created"),
        ("ai-assistant", "variant-a", "u-1", "exposure", "$feature_flag_called"),
    ]
    spool, folder = tracking_paths(warehouse)
    TrackingSpool(spool).export(folder)
    (exported,) = (folder / "tracked_events").iterdir()
    records = [json.loads(line) for line in exported.read_text().splitlines()]
    assert [r["uuid"] for r in records[:2]] == [first["uuid"], converted["uuid"]]
    assert records[1]["timestamp"] == datetime.fromisoformat(at).isoformat(timespec="microseconds")
    assert records[0]["properties"] == {
        "$feature_flag": "new-onboarding",
        "$feature_flag_response": "test",
        "beton_tracked": "exposure",
    }


def test_what_the_experiment_does_not_allow_is_refused_and_nothing_kept(app):
    url, warehouse = app
    track = f"{url}/api/track"
    body = {"experiment": "new-onboarding", "variant": "variant-a", "user": "u-2", "event": "exposure"}
    status, answer = post_json(track, body, TOKEN)
    assert status == 400
    assert answer["error"] == (
        "variant 'variant-a' is not one of experiment new-onboarding's variants (control, test); "
        "'variant-a' is a variant of ai-assistant"
    )
    assert post_json(track, {**body, "experiment": "no-such"}, TOKEN)[0] == 404
    assert post_json(track, {**body, "variant": "test", "event": "click"}, TOKEN)[0] == 400
    assert post_json(track, {**body, "variant": "test", "user": " "}, TOKEN)[0] == 400
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert "in the future" in post_json(track, {**body, "variant": "test", "timestamp": future}, TOKEN)[1]["error"]
    assert post_json(track, {**body, "variant": "test", "user": "x" * 300}, TOKEN)[0] == 400  # the spool's bound
    assert post_json(track, {**body, "variant": "test"})[0] == 401  # no token
    assert post_json(track, {**body, "variant": "test"}, "wrong")[0] == 401

    draft = {"name": "checkout-v3", "hypothesis": "h", "goal_event": "api_key_created", "variants": ["control", "b"]}
    assert post_json(f"{url}/api/experiments", {**draft, "owner": "ana"}, TOKEN)[0] == 201
    status, answer = post_json(track, {**body, "experiment": "checkout-v3", "variant": "b"}, TOKEN)
    assert status == 409 and "checkout-v3 is Draft" in answer["error"]
    for step in ("Review", "Running"):  # the endpoint sees the change at once
        move = {"status": step, "by": "ana", "why": "go"}
        assert post_json(f"{url}/api/experiments/checkout-v3/status", move, TOKEN)[0] == 200
    assert post_json(track, {**body, "experiment": "checkout-v3", "variant": "b"}, TOKEN)[0] == 201
    assert spooled(warehouse) == [("checkout-v3", "b", "u-2", "exposure", "$feature_flag_called")]


def test_tracking_goes_on_while_a_run_writes_the_warehouse(app):
    url, warehouse = app
    track = f"{url}/api/track"
    body = {"experiment": "new-onboarding", "variant": "control", "user": "u-3", "event": "exposure"}
    assert post_json(track, body, TOKEN)[0] == 201  # the experiments are read once
    holder = hold_lock(warehouse, 60)
    try:
        status, answer = post_json(track, {**body, "user": "u-4"}, TOKEN)
        assert status == 201, answer
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert [r[2] for r in spooled(warehouse)] == ["u-3", "u-4"]


def test_what_the_readout_could_not_count_is_refused_before_it_is_kept(app):
    url, warehouse = app
    track = f"{url}/api/track"
    exposed_at = datetime.now(UTC) - timedelta(hours=3)
    body = {"experiment": "new-onboarding", "variant": "test", "user": "u-5", "event": "exposure"}
    assert post_json(track, {**body, "timestamp": exposed_at.isoformat()}, TOKEN)[0] == 201
    status, answer = post_json(track, {**body, "variant": "control"}, TOKEN)
    assert (status, answer["duplicate"], answer["variant"]) == (200, True, "test")  # the variant the user counts in
    early = {**body, "event": "conversion", "timestamp": (exposed_at - timedelta(minutes=1)).isoformat()}
    status, answer = post_json(track, early, TOKEN)
    assert status == 409 and "is not after the user's exposure" in answer["error"]
    assert post_json(track, {**early, "timestamp": datetime.now(UTC).isoformat()}, TOKEN)[0] == 201  # kept now
    for moment, says in [
        ("1970-01-01T00:00:00Z", "is before 1990-01-01"),  # the events' rules would quarantine it
        ("0001-01-01T00:00:00+14:00", "out of range"),
        ("9999-12-31T23:59:59-14:00", "out of range"),
    ]:
        status, answer = post_json(track, {**body, "user": "u-6", "timestamp": moment}, TOKEN)
        assert status == 400 and says in answer["error"], answer
    status, answer = post_json(track, {}, TOKEN, raw=b'{"experiment": NaN}')
    assert status == 400 and "NaN and Infinity are not numbers" in answer["error"]
    assert [r[2:4] for r in spooled(warehouse)] == [("u-5", "exposure"), ("u-5", "conversion")]


def test_an_experiment_started_just_before_a_run_is_retried_not_refused(app, monkeypatch):
    """Started in the app, then a run takes the warehouse: the endpoint cannot read the experiment again, and says
    so with a 503 to retry (never a 404 or 409 for an experiment that is Running); the run over, it records."""
    monkeypatch.setattr(tracking_app, "RETRY_SECONDS", 0.5)
    url, warehouse = app
    track = f"{url}/api/track"
    body = {"experiment": "pricing-v9", "variant": "b", "user": "u-7", "event": "exposure"}
    assert post_json(track, {**body, "experiment": "new-onboarding", "variant": "test"}, TOKEN)[0] == 201
    intake = {"name": "pricing-v9", "hypothesis": "h", "goal_event": "api_key_created", "variants": ["a", "b"]}
    assert post_json(f"{url}/api/experiments", {**intake, "owner": "ana"}, TOKEN)[0] == 201
    for step in ("Review", "Running"):
        assert (
            post_json(f"{url}/api/experiments/pricing-v9/status", {"status": step, "by": "a", "why": "go"}, TOKEN)[0]
            == 200
        )
    holder = hold_lock(warehouse, 60)
    try:
        status, answer = post_json(track, body, TOKEN)
        assert status == 503 and "send it again" in answer["error"], answer
    finally:
        holder.kill()
        holder.wait(timeout=10)
    time.sleep(tracking_app.RETRY_SECONDS)  # the endpoint waits this long before it reads the warehouse again
    assert post_json(track, body, TOKEN)[0] == 201


def test_a_busy_spool_is_a_503_to_retry(app, monkeypatch):
    monkeypatch.setattr(spool_module, "BUSY_TIMEOUT_SECONDS", 0.5)  # how long a record waits for another writer
    url, warehouse = app
    body = {"experiment": "new-onboarding", "variant": "test", "user": "u-8", "event": "exposure"}
    assert post_json(f"{url}/api/track", body, TOKEN)[0] == 201
    holder = subprocess.Popen(
        [sys.executable, "-c", SPOOL_HOLDER, str(tracking_paths(warehouse)[0])], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        status, answer = post_json(f"{url}/api/track", {**body, "user": "u-9"}, TOKEN)
        assert status == 503 and "spool is busy" in answer["error"]
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert post_json(f"{url}/api/track", {**body, "user": "u-9"}, TOKEN)[0] == 201


SPOOL_HOLDER = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("begin immediate")
print("locked", flush=True)
time.sleep(60)
"""
