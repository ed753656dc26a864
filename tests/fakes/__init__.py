"""Real HTTP servers on 127.0.0.1 standing in for Slack's Web API, Attio's REST API and a webhook receiver.

Each is a `ThreadingHTTPServer` on a free port in a background thread, used as a context manager
(stopped with `shutdown()` and a bounded join, also when a test fails). They record every request
and can be told to fail: `fail_next(status, retry_after=…, times=n)` queues responses; `down()`
closes the port so connections are refused (a destination that is down).

The webhook receiver verifies `Beton-Signature` with its own HMAC code (not beton's), so a wrong
signature scheme fails the tests.

    with FakeSlack(token="xoxb-test") as slack:
        slack.fail_next(429, retry_after=1)
        ... SlackSender("xoxb-test", base_url=slack.base_url) ...
        assert len(slack.messages) == 1
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCALHOST = "127.0.0.1"


@dataclass
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0

    def json(self) -> dict:
        return json.loads(self.body.decode() or "{}")


@dataclass
class Scripted:
    status: int
    body: dict = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class _Handler(BaseHTTPRequestHandler):
    server_version = "fake/1.0"

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        fake: FakeServer = self.server.fake  # type: ignore[attr-defined]
        rec = Recorded(self.command, self.path, {k: v for k, v in self.headers.items()}, body)
        status, payload, headers, delay = fake.respond(rec)
        if delay:
            time.sleep(delay)
        rec.status = status
        with fake.lock:
            fake.requests.append(rec)
        data = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if not isinstance(payload, bytes) else "text/html")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    do_POST = do_PATCH = do_PUT = do_GET = _handle


class FakeServer:
    """Base: a threaded HTTP server on 127.0.0.1 with a queue of scripted failures."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.lock = threading.Lock()
        self._script: deque[Scripted] = deque()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self):
        self._httpd = ThreadingHTTPServer((LOCALHOST, self.port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.fake = self  # type: ignore[attr-defined]
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def down(self) -> None:
        """Stop listening: connections to the port are refused from now on."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._httpd = None

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    # -- behaviour ----------------------------------------------------------------------------
    def fail_next(
        self,
        status: int,
        *,
        retry_after: float | str | None = None,
        times: int = 1,
        body: dict | None = None,
        delay: float = 0.0,
    ) -> None:
        """Answer the next ``times`` requests with ``status`` (and a Retry-After header if given)."""
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        for _ in range(times):
            self._script.append(Scripted(status, body or {"error": f"scripted {status}"}, headers, delay))

    def respond(self, rec: Recorded) -> tuple[int, dict | bytes, dict, float]:
        with self.lock:
            scripted = self._script.popleft() if self._script else None
        if scripted is not None:
            body = scripted.body if scripted.status < 500 else b"<html>upstream error</html>"
            return scripted.status, body, scripted.headers, scripted.delay
        return self.handle_ok(rec)

    def handle_ok(self, rec: Recorded) -> tuple[int, dict, dict, float]:
        return 200, {"ok": True}, {}, 0.0

    def successes(self) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if 200 <= r.status < 300]


class FakeSlack(FakeServer):
    """Slack Web API: `POST /api/chat.postMessage` with a bearer token, JSON body."""

    def __init__(self, token: str = "xoxb-test-token") -> None:
        super().__init__()
        self.token = token
        self._ts = 0

    @property
    def base_url(self) -> str:
        return f"{self.url}/api/"

    def handle_ok(self, rec: Recorded):
        if rec.path != "/api/chat.postMessage":
            return 404, {"ok": False, "error": "unknown_method"}, {}, 0.0
        if rec.headers.get("Authorization") != f"Bearer {self.token}":
            return 200, {"ok": False, "error": "invalid_auth"}, {}, 0.0
        body = rec.json()
        if not body.get("channel"):
            return 200, {"ok": False, "error": "channel_not_found"}, {}, 0.0
        with self.lock:
            self._ts += 1
            ts = f"1700000000.{self._ts:06d}"
        return 200, {"ok": True, "channel": body["channel"], "ts": ts}, {}, 0.0

    @property
    def messages(self) -> list[dict]:
        return [r.json() for r in self.successes()]


class FakeAttio(FakeServer):
    """Attio REST API: `PATCH /v2/objects/{object}/records/{record_id}` with a bearer key."""

    def __init__(self, api_key: str = "attio-test-key", known_records: set[str] | None = None) -> None:
        super().__init__()
        self.api_key = api_key
        self.known_records = known_records  # None: every record exists

    def handle_ok(self, rec: Recorded):
        parts = rec.path.strip("/").split("/")
        if rec.method != "PATCH" or len(parts) != 5 or parts[:2] != ["v2", "objects"] or parts[3] != "records":
            return (
                404,
                {"status_code": 404, "type": "invalid_request_error", "code": "not_found", "message": "route"},
                {},
                0.0,
            )
        if rec.headers.get("Authorization") != f"Bearer {self.api_key}":
            return (
                401,
                {"status_code": 401, "type": "auth_error", "code": "unauthorized", "message": "bad key"},
                {},
                0.0,
            )
        record_id = parts[4]
        if self.known_records is not None and record_id not in self.known_records:
            return (
                404,
                {
                    "status_code": 404,
                    "type": "invalid_request_error",
                    "code": "not_found",
                    "message": f"Record {record_id} not found",
                },
                {},
                0.0,
            )
        values = rec.json().get("data", {}).get("values")
        if not isinstance(values, dict):
            return (
                400,
                {
                    "status_code": 400,
                    "type": "invalid_request_error",
                    "code": "validation_type",
                    "message": "data.values",
                },
                {},
                0.0,
            )
        return (
            200,
            {"data": {"id": {"workspace_id": "ws", "object_id": parts[2], "record_id": record_id}, "values": values}},
            {},
            0.0,
        )

    @property
    def updates(self) -> list[tuple[str, dict]]:
        return [(r.path.rsplit("/", 1)[1], r.json()["data"]["values"]) for r in self.successes()]


class FakeWebhookReceiver(FakeServer):
    """A receiver that verifies `Beton-Signature: t=…,v1=…` = HMAC-SHA256(secret, "{t}.{body}") itself."""

    def __init__(self, secret: str = "whsec-test", tolerance_seconds: int = 300) -> None:
        super().__init__()
        self.secret = secret
        self.tolerance = tolerance_seconds
        self.rejected = 0

    def _valid(self, rec: Recorded) -> bool:
        header = rec.headers.get("Beton-Signature") or ""
        parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
        if "t" not in parts or "v1" not in parts:
            return False
        if abs(time.time() - int(parts["t"])) > self.tolerance:
            return False
        mac = hmac.new(self.secret.encode(), parts["t"].encode() + b"." + rec.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(mac, parts["v1"])

    def handle_ok(self, rec: Recorded):
        if not self._valid(rec):
            with self.lock:
                self.rejected += 1
            return 400, {"error": "bad signature"}, {}, 0.0
        return 200, {"received": True}, {}, 0.0

    @property
    def events(self) -> list[dict]:
        return [r.json() for r in self.successes()]

    @property
    def idempotency_keys(self) -> list[str]:
        return [r.headers.get("Idempotency-Key", "") for r in self.successes()]
