"""What every page and endpoint of `beton serve` shares: its errors, its JSON, its templates and how a request's
body, origin and session are checked (the routes live in `server`, `settings_pages`, `experiments` and
`accounts`)."""

from __future__ import annotations

import json
import math
import urllib.parse
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

from fastapi import Request
from fastapi.responses import JSONResponse
from fastapi.templating import Jinja2Templates

from beton_pipeline.app import auth
from beton_pipeline.core.formatting import MISSING, fmt, fmt_interval

HERE = Path(__file__).resolve().parent
RETRY_AFTER_SECONDS = 5
"""What a 503 asks the browser or client to wait."""
MAX_BODY_BYTES = 65_536
"""The largest request body accepted (a form, a decision, a signal definition)."""
MAX_WHO, MAX_WHY = 100, 500
"""Longest accepted author and reason of a decision (a signal's, an experiment's), in characters."""


class Refused(Exception):
    """A write the app refuses: `status` (401, 403, 400) and a `message` saying what to do."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.message, self.status = message, status


class WarehouseUnavailable(Exception):
    """The warehouse cannot be read now: `message` says why, `status` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 503):
        super().__init__(message)
        self.message = message
        self.status = status


def plain(value: object) -> object:
    """A value JSON can carry: non-finite floats as null, decimals as numbers, dates and times as ISO text,
    containers walked."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):  # DuckDB's sums of integers
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


class WarehouseJSON(JSONResponse):
    """JSON of warehouse rows: NaN and infinities (a lift with no conversions without the signal) become null."""

    def render(self, content: object) -> bytes:
        return json.dumps(plain(content), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def figure_json(figure: dict) -> str:
    """A figure as JSON safe inside a `<script type="application/json">` element."""
    text = json.dumps(plain(figure), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


templates = Jinja2Templates(directory=HERE / "templates")


def _minute(value: datetime | None) -> str:
    """A time on a page: to the minute (UTC, as stored), or a dash."""
    return value.strftime("%Y-%m-%d %H:%M") if value else MISSING


templates.env.globals.update(fmt=fmt, fmt_interval=fmt_interval, minute=_minute)


def writes_allowed(request: Request) -> str:
    """The app token, or Refused (403) when writes are off."""
    token = request.app.state.token
    if token is None:
        raise Refused(
            f"This beton serve is read-only: start it with {auth.TOKEN_ENV} set to a secret to allow changes.", 403
        )
    return token


def signed_in(request: Request) -> str | None:
    """The nonce of the request's valid session (None: not signed in, or writes off)."""
    return auth.session_nonce(request.cookies.get(auth.SESSION_COOKIE), request.app.state.token)


async def read_body(request: Request) -> bytes:
    """The request's body, refused (413) past `MAX_BODY_BYTES` before more is read."""
    declared = request.headers.get("content-length", "")
    if declared.isdecimal() and int(declared) > MAX_BODY_BYTES:
        raise Refused(f"the request is larger than {MAX_BODY_BYTES:,} bytes", 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise Refused(f"the request is larger than {MAX_BODY_BYTES:,} bytes", 413)
    return bytes(body)


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (the last value of each)."""
    body = await read_body(request)
    return {k: v[-1] for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace")).items()}


def _no_constant(name: str) -> None:
    """`json.loads` reads NaN, Infinity and -Infinity, which JSON does not have: refuse them."""
    raise ValueError(f"{name} is not a JSON number")


async def json_object(request: Request, shape: str) -> dict:
    """A JSON object body sent as `application/json` (a cross-site page cannot send that type without the
    browser asking first, which this app never allows); Refused (400 or 415) otherwise, naming `shape`."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise Refused(f"send the body as Content-Type: application/json: {shape}", 415)
    try:
        body = json.loads(await read_body(request), parse_constant=_no_constant)
    except ValueError:
        raise Refused(f"the body must be a JSON object (NaN and Infinity are not numbers): {shape}", 400) from None
    if not isinstance(body, dict):
        raise Refused(f"the body must be a JSON object: {shape}", 400)
    return body


def same_origin(request: Request) -> None:
    """Refused (403) for a POST whose Origin is another site (browsers send it with every form POST): this site is
    the Host the request was sent to, or the public address of `app.base_url` (a proxy may rewrite the Host)."""
    origin = request.headers.get("origin")
    ours = {request.headers.get("host"), getattr(request.app.state, "public_host", None)} - {None}
    if origin is not None and urllib.parse.urlsplit(origin).netloc not in ours:
        raise Refused("a form from another site cannot change beton", 403)


def local_path(target: str | None) -> str:
    """Where to go after signing in: a path on this site, else the dashboard."""
    return target if target and target.startswith("/") and not target.startswith("//") else "/"


async def checked_form(request: Request) -> dict[str, str]:
    """A page form that changes something: writes on, this site's origin, signed in, and the CSRF token this
    app gave the session (Refused 403 / 401 / 403 otherwise); its fields."""
    token = writes_allowed(request)
    same_origin(request)
    form = await read_form(request)
    nonce = signed_in(request)
    if nonce is None:
        raise Refused("sign in with the app token first (/login)", 401)
    if not auth.csrf_matches(form.get("csrf"), token, nonce):
        raise Refused("this form has expired or was not made by this page: reload the page and try again", 403)
    return form


def csrf_for(request: Request) -> str | None:
    """The CSRF token for this session's forms (None: not signed in, or writes off)."""
    nonce = signed_in(request)
    return auth.csrf_token(request.app.state.token, nonce) if nonce else None


def decision_author(by: object, why: object, why_required: bool = False) -> tuple[str, str | None]:
    """Who decides and why, as a decision log keeps them: (who, why), or Refused (400) naming what is wrong."""
    who = by.strip() if isinstance(by, str) else ""
    reason = (why.strip() if isinstance(why, str) else "") or None
    if not who or len(who) > MAX_WHO:
        raise Refused(f"by: say who decides (1 to {MAX_WHO} characters): the decision log keeps it", 400)
    if reason is None and why_required:
        raise Refused(f"why: say why (1 to {MAX_WHY} characters): the decision log keeps it", 400)
    if reason is not None and len(reason) > MAX_WHY:
        raise Refused(f"why: the reason is {len(reason)} characters long; keep it under {MAX_WHY}", 400)
    return who, reason


def bearer_ok(request: Request) -> str:
    """The app token, when the request carries it as `Authorization: Bearer <token>`; Refused (403 when writes
    are off, 401 otherwise)."""
    token = writes_allowed(request)
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not auth.token_matches(given.strip(), token):
        raise Refused("send the app token as Authorization: Bearer <token>", 401)
    return token
