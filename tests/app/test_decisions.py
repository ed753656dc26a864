"""Changing a signal from the pages and the API: only with the app token, recorded with who and why in
beton.signal_overrides, and then what `beton signals` shows. Each test serves its own copy of the demo run's
warehouse (the shared one stays as the run left it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import duckdb
import pytest

from beton_pipeline.settings import Settings
from tests.app.conftest import get, get_json, serving
from tests.app.conftest import post_json as post
from tests.app.test_browser import drawn

TOKEN = "app-token-S3CRET-7f41"


@pytest.fixture
def copy(tmp_path, pipeline_run) -> Path:
    path = tmp_path / "warehouse.duckdb"
    shutil.copy(pipeline_run.warehouse, path)
    return path


def beton_signals(warehouse: Path) -> dict[str, bool]:
    """signal id → enabled, as `beton signals --all --json` prints them."""
    env = {**os.environ, "BETON_WAREHOUSE": str(warehouse)}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "beton"), "signals", "--all", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=True,
    )
    return {row["signal_id"]: row["enabled"] for row in json.loads(done.stdout)}


def overrides(warehouse: Path, signal_id: str) -> list[tuple]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        if not con.execute(
            "select count(*) from information_schema.tables where table_schema = 'beton' and table_name = "
            "'signal_overrides'"
        ).fetchall()[0][0]:
            return []  # no decision was ever recorded
        return con.execute(
            "select enabled, changed_by, reason from beton.signal_overrides where signal_id = ? order by changed_at",
            [signal_id],
        ).fetchall()


def test_the_api_records_a_decision_only_with_the_token(copy):
    with serving(copy, token=TOKEN) as url:
        signal = get_json(f"{url}/api/signals/list?recommendation=enable")[0]
        sid, decision = signal["signal_id"], f"{url}/api/signals/{signal['signal_id']}/decision"
        body = {"decision": "disable", "by": "ana", "reason": "fires on test accounts"}
        assert post(decision, body)[0] == 401
        status, answer = post(decision, body, token="not-the-token")
        assert status == 401 and TOKEN not in json.dumps(answer)
        assert post(decision, {**body, "decision": "pause"}, TOKEN) == (
            400,
            {"error": "decision must be one of enable, disable, reset, not 'pause'"},
        )
        assert post(decision, {**body, "by": " "}, TOKEN)[0] == 400
        assert post(decision, None, TOKEN, raw=b"not json")[0] == 400
        assert overrides(copy, sid) == []

        assert post(decision, body, TOKEN) == (
            200,
            {"signal_id": sid, "decision": "disable", "enabled": False, "by": "ana"},
        )
        assert overrides(copy, sid) == [(False, "ana", "fires on test accounts")]
        assert get_json(f"{url}/api/signals/{sid}")["signal"]["enabled"] is False
        assert beton_signals(copy)[sid] is False

        status, answer = post(decision, {"decision": "reset", "by": "ben"}, TOKEN)
        assert (status, answer["enabled"]) == (200, True)  # back to its recommendation: enable
        assert overrides(copy, sid)[-1] == (None, "ben", None)
        assert beton_signals(copy)[sid] is True

        status, answer = post(f"{url}/api/signals/sig_000000000000/decision", body, TOKEN)
        assert status == 404 and "no such signal" in answer["error"]


def test_decisions_while_pages_are_read_all_succeed(copy):
    """DuckDB refuses a read-write connection beside a read-only one in one process: the app takes turns."""
    import threading

    with serving(copy, token=TOKEN) as url:
        sid = get_json(f"{url}/api/signals/list?recommendation=enable")[0]["signal_id"]
        stop, statuses = threading.Event(), []

        def read() -> None:
            while not stop.is_set():
                statuses.append(get(f"{url}/api/signals/list")[0])

        readers = [threading.Thread(target=read) for _ in range(2)]
        for reader in readers:
            reader.start()
        try:
            answers = [
                post(f"{url}/api/signals/{sid}/decision", {"decision": d, "by": "ana"}, TOKEN)[0]
                for d in ("disable", "enable", "reset", "disable", "reset")
            ]
        finally:
            stop.set()
            for reader in readers:
                reader.join(timeout=60)
        assert answers == [200] * 5 and statuses and set(statuses) == {200}
        assert [o[0] for o in overrides(copy, sid)] == [False, True, None, False, None]


def test_without_a_token_the_app_is_read_only(copy):
    with serving(copy) as url:
        sid = get_json(f"{url}/api/signals/list")[0]["signal_id"]
        status, answer = post(f"{url}/api/signals/{sid}/decision", {"decision": "disable", "by": "ana"}, TOKEN)
        assert status == 403 and "BETON_APP_TOKEN" in answer["error"]
        status, _, page = get(f"{url}/login")
        assert status == 200 and b"read-only" in page
        assert b'id="decide"' not in get(f"{url}/signals/{sid}")[2]
    assert overrides(copy, sid) == []


def test_a_disable_from_the_signal_page_appears_in_beton_signals(copy, page):
    with serving(copy, token=TOKEN) as url:
        sid = get_json(f"{url}/api/signals/list?recommendation=enable")[0]["signal_id"]
        page.goto(f"{url}/signals/{sid}")
        assert page.locator("#decide").count() == 0
        page.click("#sign-in")
        page.fill("input[name='token']", "wrong")
        page.click("#login button[type='submit']")
        assert "not the app token" in page.locator("#message").inner_text()
        page.fill("input[name='token']", TOKEN)
        page.click("#login button[type='submit']")
        page.wait_for_url(f"**/signals/{sid}")
        drawn(page, "backtest")
        page.select_option("#decide select[name='decision']", "disable")
        page.fill("#decide input[name='by']", "ana")
        page.fill("#decide input[name='reason']", "fires on test accounts")
        page.click("#decide button[type='submit']")
        page.wait_for_selector("#overrides tbody tr")
        row = page.locator("#overrides tbody tr").last.inner_text()
        assert "ana" in row and "disabled" in row and "fires on test accounts" in row
        assert beton_signals(copy)[sid] is False

        # The session cookie alone cannot change anything: a form needs this page's CSRF token, and a POST from
        # another site is refused whatever it carries.
        forged = page.request.post(f"{url}/signals/{sid}/decision", form={"decision": "enable", "by": "mallory"})
        assert forged.status == 403 and "reload the page" in forged.text()
        csrf = page.locator("#decide input[name='csrf']").get_attribute("value")
        foreign = page.request.post(
            f"{url}/signals/{sid}/decision",
            form={"decision": "enable", "by": "mallory", "csrf": csrf},
            headers={"Origin": "http://evil.example"},
        )
        assert foreign.status == 403
        assert [o[1] for o in overrides(copy, sid)] == ["ana"]
        assert TOKEN not in page.content()


def test_behind_a_proxy_at_app_base_url_pages_and_forms_work(copy):
    """With `app.base_url` set, a request for that host is served (a proxy passing its own name on), and a form
    whose Origin is that address is this site's (a proxy rewriting the Host to 127.0.0.1); another site's is not."""
    settings = Settings(app={"base_url": "https://beton.example.com/"})
    with serving(copy, settings=settings, token=TOKEN) as url:
        port = url.rsplit(":", 1)[1]

        def send(path: str, headers: dict, data: bytes | None = None) -> int:
            request = urllib.request.Request(f"{url}{path}", data=data, headers=headers)
            opener = urllib.request.build_opener(NoRedirect)
            try:
                with opener.open(request, timeout=60) as response:
                    return response.status
            except urllib.error.HTTPError as exc:
                return exc.code

        assert send("/signals", {"Host": "beton.example.com"}) == 200
        assert send("/signals", {"Host": "elsewhere.example.com"}) == 400
        login = urllib.parse.urlencode({"token": TOKEN, "next": "/"}).encode()
        host = {"Host": f"127.0.0.1:{port}"}
        assert send("/login", {**host, "Origin": "https://beton.example.com"}, login) == 303
        assert send("/login", {**host, "Origin": "https://evil.example.com"}, login) == 403


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # the 303 itself is the answer under test
        return None
