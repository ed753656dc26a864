"""`beton serve`: the signal browser — pages with charts for revenue teams, and the same data as a JSON API.

One FastAPI application on 127.0.0.1 reading the warehouse read-only:

* `GET /` — the dashboard: leads surfaced, conversion rate, signal accuracy and pipeline influenced (the latest
  day of beton.revenue_metrics), their trends, the score distribution and the latest day's best-ranked accounts.
* `GET /signals` — every signal best first, with a forest plot of lift and its confidence interval; filters
  (recommendation, enabled, source, text) and sorting by any numeric column, in the URL so a view can be shared.
* `GET /backtest` — a custom signal from the visual builder (events and attributes, and / or) or the SQL editor,
  backtested as `beton backtest` does (nothing written): its recommendation, lift with CI, projected ARR and
  results by cohort month, or the definition's or the sandbox's reason why it cannot run.
* `GET /sources` — each contract table: files or a connector, the last ingest (read, loaded, duplicates,
  quarantined with its reasons) and how current it is.
* `GET /playbooks` — each playbook's rule, its actions by status and its readout (treated vs held out).
* `GET /signals/{id}` — one signal: what it means, its statistics, its backtest by cohort month (chart), its
  health by day (chart) and who overrode it.
* `GET /api/signals/dashboard/metrics`, `/api/signals/list`, `/api/signals/{id}`, `/api/sources/status`,
  `/api/playbooks/list` — the same rows as JSON (the columns of beton.signals,
  beton.signal_backtests, beton.signal_health and beton.signal_overrides), described at `/api/openapi.json`.

Changes (enable, disable or reset a signal, from its page or `POST /api/signals/{id}/decision`) need the app
token (`auth`: `BETON_APP_TOKEN`; unset, the app is read-only); each is recorded in beton.signal_overrides with
who and why, the same path as `beton signals enable|disable|reset`.

Every request opens the DuckDB file read-only and closes it before answering. A DuckDB file has one writer and
no readers while it writes, so the app never holds it across requests: a run waiting for the file waits for
one request at most, and a page asked for while a run writes answers 503 with `Retry-After` (the run is not
slowed down). Numbers are the warehouse's: the JSON is the rows as stored (NaN and infinities as null), and the
pages format those same values.

The pages use no CDN: plotly.js comes from the `plotly` package installed with beton, served at
`/static/plotly.min.js`, so they work offline. Interactive API docs (which load from a CDN) are left out; the
OpenAPI document is served.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

from beton_pipeline.app import accounts, auth, builder, charts, experiments, settings_pages, tracking
from beton_pipeline.app.access import LOCK_WAIT_SECONDS, Reader, SignalFilter, Warehouse
from beton_pipeline.app.web import (
    HERE,
    RETRY_AFTER_SECONDS,
    Refused,
    WarehouseJSON,
    WarehouseUnavailable,
    bearer_ok,
    checked_form,
    csrf_for,
    decision_author,
    figure_json,
    json_object,
    local_path,
    read_form,
    same_origin,
    templates,
    writes_allowed,
)
from beton_pipeline.settings import Settings
from beton_pipeline.store.accounts import UnknownAccountError
from beton_pipeline.store.experiments import UnknownExperimentError
from beton_pipeline.store.signal_detail import json_row, lift_in_words
from beton_pipeline.store.signals import UnknownSignalError

FOREST_ROWS = 40
"""Signals drawn in the list page's forest plot (the first of the filtered, sorted list; the table has them all)."""

SORTABLE = (
    "lift",
    "adjusted_lift",
    "q_value",
    "p_value",
    "n_with",
    "holdout_lift",
    "projected_arr",
    "rate_with",
    "signal_id",
)
"""Columns the list can be sorted by (`sort=`); the default order is beton's own (`read_signals`: enabled,
recommendation, q-value, lift)."""


# Query parameters of the list (page and API). An empty value is "any": the page's form sends every field.
Recommendation = Annotated[
    Literal["enable", "review", "reject", ""] | None, Query(description="keep one recommendation")
]
Enabled = Annotated[Literal["true", "false", ""] | None, Query(description="keep enabled or disabled signals")]
Source = Annotated[str | None, Query(max_length=50, description="keep one source, e.g. discovered or custom")]
Text = Annotated[str | None, Query(max_length=200, description="text in the name, definition or id")]
Sort = Annotated[Literal[SORTABLE + ("",)] | None, Query(description="sort by this column (default: beton's order)")]
Order = Annotated[Literal["asc", "desc"], Query(description="sort direction")]
All = Annotated[bool, Query(alias="all", description="every tested candidate, not only each family's best")]


EXAMPLE_SQL = (
    "select account_id, first_occurred_at as fired_at\n"
    "from marts.account_event_features\n"
    "where event_name = 'invited_teammate' and n_first_14d >= 3"
)
"""The SQL editor's first text: a SELECT of account_id and fired_at over a feature mart (README, "SQL signals")."""

DECISIONS: dict[str, bool | None] = {"enable": True, "disable": False, "reset": None}
"""A decision's name → the `enabled` it records (reset: back to the recommendation)."""


def _plotly_js() -> Path:
    """plotly.min.js as installed with the `plotly` package."""
    import plotly

    return Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"


api = APIRouter(prefix="/api", default_response_class=WarehouseJSON)
pages = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)


def _list_query(
    recommendation: Recommendation = None,
    enabled: Enabled = None,
    source: Source = None,
    q: Text = None,
    sort: Sort = None,
    order: Order = "desc",
    include_all: All = False,
) -> tuple[SignalFilter, bool]:
    """The signal list's query parameters (the page's and the API's): its filter, and whether every candidate."""
    return SignalFilter.of(recommendation, enabled, source, q, sort, order), include_all


ListQuery = Annotated[tuple[SignalFilter, bool], Depends(_list_query)]


@api.get("/signals/dashboard/metrics", tags=["dashboard"])
def api_dashboard(reader: Reader) -> WarehouseJSON:
    """The dashboard's numbers: the latest day of beton.revenue_metrics (`latest`: leads surfaced, conversion rate
    and signal accuracy over outcomes closed in the last 30 days, pipeline influenced), the last 180 days of it
    (`trend`), the latest scored day's best-ranked accounts with their top contributions (`recent_leads`) and how
    that day's scores spread over 20 bins of 0–1 (`score_distribution`)."""
    return WarehouseJSON(reader.dashboard())


@api.get("/sources/status", tags=["sources"])
def api_sources(reader: Reader) -> WarehouseJSON:
    """One entry per contract table: `origin` (files, or the connector that pulls it), the last ingest's `rows_read`,
    `loaded`, `duplicates`, `files` and `ingested_at`, `quarantined` with the most frequent `quarantine_reasons`,
    and freshness (`newest`, `lag_days`, `age_days`, `fresh`, `freshness`)."""
    return WarehouseJSON(reader.sources())


@api.get("/playbooks/list", tags=["playbooks"])
def api_playbooks(reader: Reader) -> WarehouseJSON:
    """Each playbook: its rule (`kind`, `when`, `then` destinations, `holdout_fraction`, `cooldown_days`; `configured`
    false for one the outbox holds but beton.yaml no longer names), its `actions` by status with `first_day` and
    `last_day`, and its `readout` (a beton.playbook_readouts row: treated vs held out, lift, p, warnings)."""
    return WarehouseJSON(reader.playbooks())


@api.post("/signals/backtest", tags=["signals"])
async def api_backtest(request: Request, reader: Reader) -> WarehouseJSON:
    """Backtest one custom signal without writing it, as `beton backtest` does: the JSON body `{"sql": "SELECT
    account_id[, fired_at] …"}` (run in the read-only sandbox, 30 s at most) or `{"yaml": "name: …\nwhen: …"}`
    (a condition file's text). Answers its beton.signals `signal` row (lift with CI, p, q, holdout, projected ARR,
    `recommendation`: enable / review / reject with its reason), the backtest's `verdict` and its `periods` by
    cohort month; 400 with the definition's or the sandbox's reason."""
    same_origin(request)
    body = await json_object(request, '{"sql": "…"} or {"yaml": "…"}')
    if len({"sql", "yaml"} & set(body)) != 1:
        raise Refused('give exactly one of "sql" and "yaml"', 400)
    kind, text = ("sql", body["sql"]) if "sql" in body else ("condition", body["yaml"])
    name = "SQL" if kind == "sql" else "YAML"
    if not isinstance(text, str):
        raise Refused(f"the {name} must be a string", 400)
    if not text.strip():
        raise Refused(f"the {name} is empty", 400)
    return WarehouseJSON(await run_in_threadpool(reader.backtest, text, kind))


@api.get("/posthog/events", tags=["catalog"])
def api_events(reader: Reader) -> WarehouseJSON:
    """The events custom signals can name, with the accounts that did each before their window end and how often
    (`beton events`)."""
    return WarehouseJSON(reader.catalog()["events"])


@api.get("/posthog/properties", tags=["catalog"])
def api_properties(reader: Reader) -> WarehouseJSON:
    """Property values conditions can name (`properties`: the configured property features' top values) and the
    raw property keys seen on events (`raw_property_keys`: usable once added to `discovery.property_features`)."""
    catalog = reader.catalog()
    return WarehouseJSON({"properties": catalog["properties"], "raw_property_keys": catalog["raw_property_keys"]})


@api.get("/signals/list", tags=["signals"])
def api_signals(reader: Reader, query: ListQuery) -> WarehouseJSON:
    """beton.signals (one row per family unless `all`), filtered and sorted; each row with its plain-language
    `name`."""
    flt, include_all = query
    frame = reader.signals(flt, include_all)
    return WarehouseJSON([json_row(r) for r in frame.iter_rows(named=True)])


@api.get("/signals/{signal_id}", tags=["signals"])
def api_signal(reader: Reader, signal_id: str) -> WarehouseJSON:
    """One signal: its beton.signals row, name, pair parts, backtest by cohort month, latest health days and
    override history (the answer of `beton signals show ID --json`)."""
    d = reader.signal(signal_id)
    return WarehouseJSON(
        {
            "signal": json_row(d.signal),
            "name": d.name,
            "parts": list(d.parts),
            "backtest": d.backtest.to_dicts(),
            "health": d.health.to_dicts(),
            "overrides": d.overrides.to_dicts(),
        }
    )


@pages.get("/")
def dashboard_page(request: Request, reader: Reader) -> Response:
    data = reader.dashboard()
    charts_of = {
        "accuracy_chart": charts.accuracy_trend(data["trend"]),
        "leads_chart": charts.leads_by_day(data["trend"]),
        "scores_chart": charts.score_histogram(data["score_distribution"], data["day"]),
    }
    return templates.TemplateResponse(
        request,
        "dashboard.html",
        {"title": "Dashboard", **data, **{k: figure_json(v) for k, v in charts_of.items()}},
    )


@pages.get("/sources")
def sources_page(request: Request, reader: Reader) -> Response:
    return templates.TemplateResponse(request, "sources.html", {"title": "Sources", "tables": reader.sources()})


@pages.get("/playbooks")
def playbooks_page(request: Request, reader: Reader) -> Response:
    context = {"title": "Playbooks", "playbooks": reader.playbooks()}
    return templates.TemplateResponse(request, "playbooks.html", context)


def _backtest_context(reader: Warehouse, **extra) -> dict:
    catalog = reader.catalog()
    return {
        "title": "Backtest a signal",
        "catalog": catalog,
        "rows": range(1, builder.MAX_ROWS + 1),
        "sql": EXAMPLE_SQL,
        "form": {},
        **extra,
    }


@pages.get("/backtest")
def backtest_page(request: Request, reader: Reader) -> Response:
    return templates.TemplateResponse(request, "backtest.html", _backtest_context(reader))


@pages.post("/backtest")
async def backtest_run(request: Request, reader: Reader) -> Response:
    same_origin(request)
    form = await read_form(request)
    if form.get("mode") == "sql":
        text, kind, sql = form.get("sql") or "", "sql", form.get("sql") or ""
    else:
        leaves = builder.builder_rows(form)
        if not leaves:
            raise Refused("add at least one event or attribute to the builder", 400)
        text, kind, sql = (
            builder.condition_yaml(form.get("name", ""), form.get("combine", "all"), leaves),
            "condition",
            EXAMPLE_SQL,
        )
    context = await run_in_threadpool(_backtest_context, reader, sql=sql, form=form, definition=text, mode=kind)
    try:
        result = await run_in_threadpool(reader.backtest, text, kind)
    except Refused as exc:
        return templates.TemplateResponse(request, "backtest.html", {**context, "error": exc.message}, 400)
    chart = figure_json(charts.backtest_by_month(result["periods"]))
    return templates.TemplateResponse(request, "backtest.html", {**context, "result": result, "chart": chart})


@pages.get("/signals")
def signals_page(request: Request, reader: Reader, query: ListQuery) -> Response:
    flt, include_all = query
    rows = reader.signals(flt, include_all).to_dicts()
    shown = rows[:FOREST_ROWS]
    figure = charts.forest_plot(shown, [f"{r['name']} ({r['signal_id']})" for r in shown])
    return templates.TemplateResponse(
        request,
        "signals.html",
        {
            "title": "Signals",
            "rows": rows,
            "filter": flt,
            "include_all": include_all,
            "sortable": SORTABLE,
            "forest": figure_json(figure),
            "forest_rows": len(shown),
        },
    )


@pages.get("/signals/{signal_id}")
def signal_page(request: Request, reader: Reader, signal_id: str) -> Response:
    d = reader.signal(signal_id)
    backtest, health = d.backtest.to_dicts(), d.health.to_dicts()
    return templates.TemplateResponse(
        request,
        "signal.html",
        {
            "title": d.name,
            "d": d,
            "s": d.signal,
            "in_words": lift_in_words(d.signal),
            "backtest": backtest,
            "overrides": d.overrides.to_dicts(),
            "backtest_chart": figure_json(charts.backtest_by_month(backtest)),
            "health_chart": figure_json(charts.health_over_time(health)),
            "writes": request.app.state.token is not None,
            "csrf": csrf_for(request),
        },
    )


def _decision(decision: str | None, by: str | None, reason: str | None) -> tuple[bool | None, str, str | None]:
    """A decision's fields checked: (enabled, who, why), or Refused (400) saying which is wrong."""
    if decision not in DECISIONS:
        raise Refused(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}", 400)
    who, why = decision_author(by, reason)
    return DECISIONS[decision], who, why


@api.post("/signals/{signal_id}/decision", tags=["signals"])
async def api_decide(request: Request, reader: Reader, signal_id: str) -> WarehouseJSON:
    """Enable, disable or reset (back to its recommendation) a signal, as `beton signals enable|disable|reset`
    does: the JSON body `{"decision": "disable", "by": "ana", "reason": "…"}`, with `Authorization: Bearer
    <BETON_APP_TOKEN>`. Answers the signal's `enabled` now. Recorded in beton.signal_overrides with who and why."""
    bearer_ok(request)
    body = await json_object(request, "{decision, by, reason}")
    enabled, who, why = _decision(body.get("decision"), body.get("by"), body.get("reason"))
    now = await run_in_threadpool(reader.decide, signal_id, enabled, who, why)
    return WarehouseJSON({"signal_id": signal_id, "decision": body["decision"], "enabled": now, "by": who})


@pages.get("/login")
def login_page(request: Request, next: str = "/") -> Response:
    context = {"title": "Sign in", "next": local_path(next), "writes": request.app.state.token is not None}
    return templates.TemplateResponse(request, "login.html", context)


@pages.post("/login")
async def login(request: Request) -> Response:
    token = writes_allowed(request)
    same_origin(request)
    form = await read_form(request)
    if not auth.token_matches(form.get("token"), token):
        context = {"title": "Sign in", "next": local_path(form.get("next")), "writes": True, "wrong": True}
        return templates.TemplateResponse(request, "login.html", context, 401)
    response = RedirectResponse(local_path(form.get("next")), status_code=303)
    response.set_cookie(
        auth.SESSION_COOKIE,
        auth.new_session(token),
        max_age=auth.SESSION_HOURS * 3600,
        httponly=True,
        samesite="strict",
        path="/",
    )
    return response


@pages.post("/logout")
async def logout(request: Request) -> Response:
    same_origin(request)
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(auth.SESSION_COOKIE, path="/")
    return response


@pages.post("/signals/{signal_id}/decision")
async def decide(request: Request, reader: Reader, signal_id: str) -> Response:
    form = await checked_form(request)
    enabled, who, why = _decision(form.get("decision"), form.get("by"), form.get("reason"))
    await run_in_threadpool(reader.decide, signal_id, enabled, who, why)
    return RedirectResponse(f"/signals/{urllib.parse.quote(signal_id, safe='')}#decisions", status_code=303)


@pages.get("/static/plotly.min.js")
def plotly_js() -> FileResponse:
    return FileResponse(_plotly_js(), media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


async def _unavailable(request: Request, exc: WarehouseUnavailable) -> Response:
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    if _wants_json(request):
        return WarehouseJSON({"error": exc.message}, status_code=exc.status, headers=headers)
    context = {"title": "Not available", "message": exc.message}
    return templates.TemplateResponse(request, "error.html", context, exc.status, headers)


async def _refused(request: Request, exc: Refused) -> Response:
    if _wants_json(request):
        return WarehouseJSON({"error": exc.message}, status_code=exc.status)
    context = {"title": "Not allowed" if exc.status in (401, 403) else "Not accepted", "message": exc.message}
    return templates.TemplateResponse(request, "error.html", context, exc.status)


async def _invalid(request: Request, exc: RequestValidationError) -> Response:
    """A bad query parameter: FastAPI's 422 JSON for the API, a page saying which parameter for the pages."""
    if _wants_json(request):
        return await request_validation_exception_handler(request, exc)
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
    context = {"title": "Not accepted", "message": f"This address has a value the page cannot use ({problems})."}
    return templates.TemplateResponse(request, "error.html", context, 422)


NOT_FOUND = {
    UnknownSignalError: "No such signal",
    UnknownAccountError: "No such account",
    UnknownExperimentError: "No such experiment",
}
"""What a page says (its title) when the thing it names does not exist: 404."""


async def _unknown(request: Request, exc: LookupError) -> Response:
    message = str(exc.args[0])
    if _wants_json(request):
        return WarehouseJSON({"error": message}, status_code=404)
    context = {"title": NOT_FOUND[type(exc)], "message": message}
    return templates.TemplateResponse(request, "error.html", context, 404)


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'"
    ),
}
"""Every answer's headers: scripts and styles only from the app itself (plotly's inline styles allowed), no
framing by other sites."""


async def _headers(request: Request, call_next):
    response = await call_next(request)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def create_app(
    warehouse: Path,
    settings: Settings | None = None,
    lock_wait_seconds: float = LOCK_WAIT_SECONDS,
    token: str | None = None,
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
    config_path: Path | None = None,
):
    """The application over `warehouse` (a DuckDB file written by `beton run`) under `settings` (None: every
    default): see the module docstring. `token` allows writes (`auth.app_token()`: `BETON_APP_TOKEN`); None keeps
    the app read-only. `hosts`: the names a request's Host may carry (a page of another site whose name was made to
    point at 127.0.0.1 carries its own, and is refused: no DNS rebinding), with `app.base_url`'s host added (a proxy
    passing its own name on). `config_path`: the beton.yaml the settings came from, which the settings page changes
    (None: the settings cannot be changed from the app)."""
    app = FastAPI(
        title="beton",
        summary="Signals that predict conversion, with their evidence: the pages' data as JSON.",
        version="1",
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.reader = Warehouse(warehouse, settings or Settings(), lock_wait_seconds)
    public = urllib.parse.urlsplit(app.state.reader.settings.app.base_url or "")
    app.state.public_host = public.netloc or None  # app.base_url: the address people open, maybe behind a proxy
    hosts = (*hosts, public.hostname) if public.hostname else hosts
    app.state.token = token
    app.state.config_path = config_path
    for router in (
        api,
        pages,
        *(r for m in (settings_pages, experiments, tracking, accounts) for r in (m.api, m.pages)),
    ):
        app.include_router(router)
    app.add_exception_handler(WarehouseUnavailable, _unavailable)
    for unknown in NOT_FOUND:
        app.add_exception_handler(unknown, _unknown)
    app.add_exception_handler(Refused, _refused)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.middleware("http")(_headers)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(hosts))
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")  # after /static/plotly.min.js
    return app
