"""Links to `beton serve`'s pages from what beton sends elsewhere (Slack messages, webhook events, Dagster asset
metadata), built from the app's public address (`app.base_url` in beton.yaml); no address, no link."""

from __future__ import annotations

from typing import Literal
from urllib.parse import quote

PAGES = {"account": "accounts", "signal": "signals", "experiment": "experiments"}
"""A page kind → its path under the app's address."""


def page_url(base_url: str | None, kind: Literal["account", "signal", "experiment"], key: str) -> str | None:
    """The address of one page (`https://beton.example.com/accounts/rec_1`), or None without a base URL; the key is
    quoted whole (a slash or a space in an id stays in the one path segment)."""
    if not base_url:
        return None
    return f"{base_url.rstrip('/')}/{PAGES[kind]}/{quote(str(key), safe='')}"
