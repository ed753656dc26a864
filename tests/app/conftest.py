"""The app served for real: uvicorn on 127.0.0.1 (a free port) in a thread, over a warehouse file."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn

from beton_pipeline.app.server import create_app


@contextmanager
def serving(warehouse: Path, **options) -> Iterator[str]:
    """The app over `warehouse` (default settings, as the demo run's but its playbooks: `settings=` to change),
    served until the block ends; yields its base URL."""
    app = create_app(warehouse, **options)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the app did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def get(url: str) -> tuple[int, dict, bytes]:
    """(status, headers, body) of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def post_json(url: str, body: object, token: str | None = None, raw: bytes | None = None) -> tuple[int, dict]:
    """(status, JSON answer) of a POST of `body` as JSON (or the bytes `raw`), with the app token when given."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=raw or json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get_json(url: str):
    status, _, body = get(url)
    assert status == 200, body[:500]
    return json.loads(body)


def run_settings(pipeline_run):
    """The settings the demo run used (beton.yaml with the demo's playbook and experiments)."""
    from beton_pipeline.settings import load_settings
    from tests.conftest import env_vars

    with env_vars(BETON_SOURCE_DIR=str(pipeline_run.source_dir)):
        return load_settings()


@pytest.fixture(scope="module")
def app_url(pipeline_run) -> Iterator[str]:
    """The app over the session's demo run, with its settings."""
    with serving(pipeline_run.warehouse, settings=run_settings(pipeline_run)) as url:
        yield url


BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome")


def browser_path() -> str:
    """The system's Chromium (Playwright's own browser download needs a network these machines lack)."""
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("no Chromium on this machine: apt-get install -y chromium (CI's .ci/run installs it)")


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=browser_path(), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    """A fresh page whose browser console must stay free of errors (checked when the test ends).

    A page the app answers with an error status (a refusal, an unknown id: the tests check the status) makes the
    browser log "Failed to load resource" for that document; those lines are left out, matched by the document's
    URL, whenever they arrive. A script, style or chart that fails to load, or a script error, still fails."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[tuple[str, str]] = []
    refused_documents: set[str] = set()
    page.on("console", lambda m: errors.append((m.text, m.location.get("url", ""))) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append((str(e), "")))
    page.on(
        "response",
        lambda r: refused_documents.add(r.url) if r.status >= 400 and r.request.resource_type == "document" else None,
    )
    page.errors = errors
    yield page
    context.close()
    left = [
        text for text, url in errors if not (text.startswith("Failed to load resource") and url in refused_documents)
    ]
    assert not left, f"the browser console has errors: {left}"


def backtest_from_builder(page, url: str, name: str, event: str, count: int, days: int) -> None:
    """On the backtest page, build "`event` at least `count` times in the first `days` days" and run it."""
    page.goto(f"{url}/backtest")
    page.fill("#builder input[name='name']", name)
    page.select_option("#builder select[name='event_1']", event)
    page.fill("#builder input[name='count_1']", str(count))
    page.select_option("#builder select[name='days_1']", str(days))
    page.click("#builder button[type='submit']")
