"""Who may change things through `beton serve`: the holder of the app token.

Reads are open on 127.0.0.1; every write (a signal's enable / disable / reset) needs the token set in the
environment variable `BETON_APP_TOKEN` when the app starts (unset: the app is read-only and says so). The JSON
API takes it as `Authorization: Bearer <token>`. In the browser, `/login` exchanges it once for a session cookie
(HttpOnly, SameSite=Strict, `SESSION_HOURS` long) that holds no secret: an issue time, a random nonce and an
HMAC-SHA256 of both keyed by the token, so changing the token ends every session. Each form carries a CSRF token,
the HMAC of the session's nonce for the purpose "csrf", which another site can neither read nor forge; a POST
whose `Origin` names another site is refused as well. Tokens are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time

TOKEN_ENV = "BETON_APP_TOKEN"
SESSION_COOKIE = "beton_session"
SESSION_HOURS = 12


def app_token() -> str | None:
    """The token writes need (`BETON_APP_TOKEN`), or None when writes are off."""
    return os.environ.get(TOKEN_ENV, "").strip() or None


def token_matches(given: str | None, token: str | None) -> bool:
    """Whether `given` is the token (constant time; never with no token set)."""
    return bool(token) and bool(given) and hmac.compare_digest(given.encode(), token.encode())


def _mac(token: str, purpose: str, nonce: str) -> str:
    return hmac.new(token.encode(), f"{purpose}:{nonce}".encode(), hashlib.sha256).hexdigest()


def new_session(token: str, now: float | None = None) -> str:
    """A session cookie's value: `<issued>.<nonce>.<mac>`."""
    nonce = f"{int(now if now is not None else time.time())}.{secrets.token_urlsafe(16)}"
    return f"{nonce}.{_mac(token, 'session', nonce)}"


def session_nonce(cookie: str | None, token: str | None, now: float | None = None) -> str | None:
    """The nonce of a valid, unexpired session cookie made with `token`; None otherwise."""
    if not token or not cookie or cookie.count(".") != 2:
        return None
    issued, rest, mac = cookie.split(".")
    nonce = f"{issued}.{rest}"
    if not (issued.isascii() and issued.isdigit()) or not hmac.compare_digest(
        mac.encode(), _mac(token, "session", nonce).encode()
    ):
        return None
    age = (now if now is not None else time.time()) - int(issued)
    return nonce if 0 <= age <= SESSION_HOURS * 3600 else None


def csrf_token(token: str, nonce: str) -> str:
    """The CSRF token of the session with `nonce`."""
    return _mac(token, "csrf", nonce)


def csrf_matches(given: str | None, token: str | None, nonce: str | None) -> bool:
    """Whether a form's CSRF token belongs to this session."""
    return bool(token and nonce and given) and hmac.compare_digest(given.encode(), csrf_token(token, nonce).encode())
