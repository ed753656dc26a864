"""An account's page: its score by day with its rank, what makes up its latest score (each signal's contribution,
in plain language, with when it fired and why any counts less), its outcome; and the account search.

* `GET /accounts?q=` — the latest scored day's accounts whose name, domain or id contains `q`, best ranked first.
* `GET /accounts/{id}` — one account (`store.accounts.read_account`).
* `GET /api/accounts`, `GET /api/accounts/{id}` — the same as JSON.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from beton_pipeline.app import charts
from beton_pipeline.app.access import Reader, Warehouse
from beton_pipeline.app.web import WarehouseJSON, figure_json, templates
from beton_pipeline.store.accounts import read_account, search_accounts
from beton_pipeline.store.playbooks import latest_score_day
from beton_pipeline.store.signal_detail import signal_names

api = APIRouter(prefix="/api", default_response_class=WarehouseJSON)
pages = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)

SEARCH_LIMIT = 100
"""Accounts a search lists at most."""

Search = Annotated[str | None, Query(max_length=200, description="text in the company name, domain or account id")]
Limit = Annotated[int, Query(ge=1, le=1000, description="accounts listed at most")]


def _named(entries: list[dict] | None, names: dict[str, str]) -> list[dict]:
    """Score entries with each signal's plain-language `name` (else its definition)."""
    return [{**e, "name": names.get(e["signal_id"]) or e.get("definition") or e["signal_id"]} for e in entries or []]


def account(reader: Warehouse, account_id: str) -> dict:
    """One account as the page and the API show it: `account` (its latest beton.account_scores row, entries
    named), `history` (score, rank and signals fired by day), `outcome` and `scored_day`."""
    with reader.open() as con:
        found = read_account(con, account_id)
        names = signal_names(con, reader.observation_days)
    latest = dict(found.latest)
    for column in ("top_contributions", "intent_contributions", "signals_fired"):
        latest[column] = _named(latest[column], names)
    return {
        "account": latest,
        "history": found.history.to_dicts(),
        "outcome": found.outcome,
        "scored_day": found.scored_day,
    }


def accounts(reader: Warehouse, q: str | None, limit: int) -> dict:
    """The latest scored day and its accounts matching `q` (best ranked first)."""
    with reader.open() as con:
        day = latest_score_day(con)
        rows = search_accounts(con, (q or "").strip() or None, day, limit).to_dicts() if day else []
    return {"day": day, "accounts": rows}


@api.get("/accounts", tags=["accounts"])
def api_accounts(reader: Reader, q: Search = None, limit: Limit = SEARCH_LIMIT) -> WarehouseJSON:
    """The latest scored day's accounts whose company name, domain or id contains `q` (all when empty), best ranked
    first: id, company, domain, whether a CRM company, score, rank and signals fired."""
    return WarehouseJSON(accounts(reader, q, limit))


@api.get("/accounts/{account_id:path}", tags=["accounts"])
def api_account(reader: Reader, account_id: str) -> WarehouseJSON:
    """One account: its latest beton.account_scores row (`signals_fired`, `top_contributions`,
    `intent_contributions`, each entry with its plain-language `name`), its score, rank and signals fired by day
    (`history`), its marts.account_outcomes row (`outcome`) and the latest day any account was scored."""
    return WarehouseJSON(account(reader, account_id))


@pages.get("/accounts")
def accounts_page(request: Request, reader: Reader, q: Search = None) -> Response:
    found = accounts(reader, q, SEARCH_LIMIT)
    context = {"title": "Accounts", "q": q or "", "limit": SEARCH_LIMIT, **found}
    return templates.TemplateResponse(request, "accounts.html", context)


@pages.get("/accounts/{account_id:path}")
def account_page(request: Request, reader: Reader, account_id: str) -> Response:
    data = account(reader, account_id)
    latest = data["account"]
    top = latest["top_contributions"]
    context = {
        "title": latest["company_name"] or latest["domain"] or account_id,
        **data,
        "history_chart": figure_json(charts.score_history(data["history"])),
        "contributions_chart": figure_json(charts.contributions(top, [e["name"] for e in top])),
    }
    return templates.TemplateResponse(request, "account.html", context)
