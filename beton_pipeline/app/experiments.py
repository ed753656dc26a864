"""Experiments as a workflow: intake, statuses with a decision log, and readouts.

* `GET /experiments` — every experiment (beton.yaml's, Running, and the app's): status, source, hypothesis,
  primary metric, users exposed so far and the latest decision.
* `GET /experiments/new`, `POST /experiments/new` — the intake form (signed in): name, hypothesis, primary metric
  (the events the warehouse knows are offered), variants with the control first and optional weights, flag
  (default: the name), conversion window, period, owner; checked by `core.experiments.parse_intake` (the
  `Experiment` model of beton.yaml's experiments) and refused when the name or flag is another experiment's.
* `GET /experiments/{name}` — the readout, computed from the warehouse as the `experiment_readouts` asset does
  (`store.experiments.read_experiment_readout`): per variant exposures, conversions, rate with CI, lift vs control
  with CI, p (Holm-adjusted across variants), the sample-ratio check, small-sample warnings and beton's summary,
  a chart of each variant's rate with its interval; beside it, when `BETON_LLM_API_KEY` is set, a language model's
  summary of the same numbers (`destinations.llm_summary`; beton's summary alone when it fails). An app
  experiment's status form (signed in) and its decision log.
* `GET /api/experiments`, `GET /api/experiments/{name}`, `POST /api/experiments` (bearer; the intake as JSON),
  `POST /api/experiments/{name}/status` (bearer; `{"status", "by", "why"}`).

Statuses move Draft → Review → Running → Readout → Shipped / Killed (`core.experiments.TRANSITIONS`); a move the
workflow does not allow answers 409 with the sentence naming the allowed next statuses.
"""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.parse

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from beton_pipeline.app import charts
from beton_pipeline.app.access import Reader, Warehouse
from beton_pipeline.app.tracking import forget_definitions
from beton_pipeline.app.web import (
    Refused,
    WarehouseJSON,
    bearer_ok,
    checked_form,
    csrf_for,
    decision_author,
    figure_json,
    json_object,
    templates,
)
from beton_pipeline.core.experiments import (
    STATUSES,
    ExperimentRefused,
    next_statuses,
    parse_intake,
)
from beton_pipeline.core.readouts import ExperimentReadout
from beton_pipeline.destinations.llm_summary import LLMSummary, llm_config, readout_aggregates, summarize_readout
from beton_pipeline.store.experiments import (
    APP_SOURCE,
    change_status,
    create_experiment,
    defined_experiment,
    defined_experiments,
    experiment_decisions,
    exposures_so_far,
    last_decisions,
    read_experiment_readout,
)

api = APIRouter(prefix="/api", default_response_class=WarehouseJSON)
pages = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)
log = logging.getLogger(__name__)

INTAKE_SHAPE = (
    '{"name", "hypothesis", "goal_event", "variants": ["control", "test"], "weights"?, "flag"?, '
    '"conversion_window_days"?, "start"?, "end"?, "owner", "by"?}'
)
STATUS_SHAPE = '{"status": "Review", "by": "ana", "why": "…"}'
INTAKE_FIELDS = (
    "name",
    "hypothesis",
    "goal_event",
    "variants",
    "weights",
    "flag",
    "conversion_window_days",
    "start",
    "end",
    "owner",
)


# ------------------------------------------------------------------------------------------------
# Reads and writes (blocking: called through run_in_threadpool from the async routes)
# ------------------------------------------------------------------------------------------------
def experiment_list(reader: Warehouse) -> list[dict]:
    """Every experiment with its status, source, users exposed so far and latest decision."""
    config = reader.settings.playbook_config()
    with reader.open() as con:
        defined = defined_experiments(con, config)
        exposures = exposures_so_far(con, [d.experiment for d in defined])
        last = last_decisions(con)
    return [
        {
            **d.as_dict(),
            "exposures": exposures[d.experiment.name],
            "last_decision": last.get(d.experiment.name) if d.source == APP_SOURCE else None,
        }
        for d in defined
    ]


def readout_json(readout: ExperimentReadout | None) -> dict | None:
    """A readout as JSON: per variant its beton.experiment_readouts row (the summary and warnings once, beside)."""
    if readout is None:
        return None
    return {
        "variants": readout.table.drop("summary", "warnings").to_dicts(),
        "srm_pvalue": readout.srm_pvalue,
        "srm_flag": readout.srm_flag,
        "small_sample": readout.small_sample,
        "warnings": list(readout.warnings),
        "summary": readout.summary,
    }


def experiment_detail(reader: Warehouse, name: str) -> dict:
    """One experiment: its definition and status (`experiment`), the statuses it may move to, its decision log
    and its readout (None before `beton run` has built the exposures)."""
    config = reader.settings.playbook_config()
    with reader.open() as con:
        defined = defined_experiment(con, config, name)
        decisions = experiment_decisions(con, name) if defined.source == APP_SOURCE else []
        readout = read_experiment_readout(con, defined.experiment, reader.settings.thresholds.confidence_level)
    return {
        "experiment": defined.as_dict(),
        "next_statuses": list(next_statuses(defined.status)) if defined.source == APP_SOURCE else [],
        "decisions": decisions,
        "readout": readout_json(readout),
    }


def create(reader: Warehouse, raw: dict, by: str | None) -> dict:
    """A new experiment from the intake's fields, stored as Draft; Refused (400: a field, 409: a name or flag
    taken) saying what to change."""
    try:
        intake = parse_intake(raw)
    except ExperimentRefused as exc:
        raise Refused(str(exc), 400) from None
    author = decision_author(by, None)[0] if by else intake.owner
    with reader.write("the experiment was not saved") as con:
        try:
            defined = create_experiment(con, reader.settings.playbook_config(), intake, author)
        except ExperimentRefused as exc:
            raise Refused(str(exc), 409) from None
    forget_definitions(reader)
    return {**defined.as_dict(), "next_statuses": list(next_statuses(defined.status))}


def move(reader: Warehouse, name: str, status: object, by: object, why: object) -> dict:
    """Move an app experiment to `status` with who and why; Refused (400: a field, 409: a move the workflow or
    the experiment's source does not allow)."""
    if not isinstance(status, str) or not status:
        raise Refused(f"status: one of {', '.join(STATUSES)}", 400)
    who, reason = decision_author(by, why, why_required=True)
    with reader.write("the status was not changed") as con:
        try:
            defined = change_status(con, reader.settings.playbook_config(), name, status, who, reason)
        except ExperimentRefused as exc:
            raise Refused(str(exc), 409) from None
    forget_definitions(reader)
    return {**defined.as_dict(), "next_statuses": list(next_statuses(defined.status))}


MAX_CACHED_SUMMARIES = 256
"""Model summaries kept in memory (oldest dropped first), by model, endpoint and the readout's numbers."""
RETRY_FAILED_SUMMARY_SECONDS = 60.0
"""After the model failed for a readout, how long its pages show beton's summary alone before asking again."""
_SUMMARIES: dict[tuple, tuple[LLMSummary, float]] = {}
"""(model, endpoint, the readout's numbers) → the summary and until when (monotonic seconds) it stands."""


def llm_summary(detail: dict) -> tuple[LLMSummary | None, str | None]:
    """A language model's summary of the readout when `BETON_LLM_API_KEY` is set (None otherwise), and where it
    came from ("model at host"). Only the readout's aggregates are sent."""
    config, readout = llm_config(), detail["readout"]
    if config is None or readout is None:
        return None, None
    e = detail["experiment"]
    aggregates = readout_aggregates(
        e["name"], e["goal_event"], readout["variants"], readout["srm_pvalue"], readout["warnings"]
    )
    key = (config, json.dumps(aggregates, sort_keys=True, default=str))
    summary, until = _SUMMARIES.get(key, (None, 0.0))
    if summary is None or time.monotonic() >= until:
        summary = summarize_readout(config, aggregates)
        if summary.error:
            log.warning("experiment %s: no AI summary (%s); beton's summary is shown alone", e["name"], summary.error)
        # The same numbers get the same summary: one model call per readout, not per page view; after a failure,
        # the model is asked again only after a while (a page view would wait for its timeout each time).
        if len(_SUMMARIES) >= MAX_CACHED_SUMMARIES:
            _SUMMARIES.pop(next(iter(_SUMMARIES)))
        _SUMMARIES[key] = (summary, time.monotonic() + (RETRY_FAILED_SUMMARY_SECONDS if summary.error else math.inf))
    return summary, f"{config.model} at {config.host}"


# ------------------------------------------------------------------------------------------------
# API
# ------------------------------------------------------------------------------------------------
@api.get("/experiments", tags=["experiments"])
async def api_experiments(reader: Reader) -> WarehouseJSON:
    """Every experiment: its definition (the fields of beton.yaml's `experiments:`), `status`, `source`
    (beton.yaml or app), `hypothesis`, `owner`, `exposures` (users exposed so far; null before `beton run`) and
    `last_decision` (a beton.experiment_decisions row)."""
    return WarehouseJSON(await run_in_threadpool(experiment_list, reader))


@api.get("/experiments/{name}", tags=["experiments"])
async def api_experiment(request: Request, reader: Reader, name: str) -> Response:
    """One experiment: `experiment` (definition, status, source, hypothesis, owner), `next_statuses`, `decisions`
    (its beton.experiment_decisions rows) and `readout` (per variant the columns of beton.experiment_readouts,
    the sample-ratio check, warnings and summary; null before `beton run`)."""
    return WarehouseJSON(await run_in_threadpool(experiment_detail, reader, name))


@api.post("/experiments", tags=["experiments"], status_code=201)
async def api_create(request: Request, reader: Reader) -> WarehouseJSON:
    """Define an experiment (as Draft), with `Authorization: Bearer <BETON_APP_TOKEN>`: the JSON body
    `{"name", "hypothesis", "goal_event", "variants": ["control", "test"], "weights"?, "flag"?,
    "conversion_window_days"?, "start"?, "end"?, "owner", "by"?}` (control first; `flag` defaults to the name,
    `by` to the owner). 400 names each bad field, 409 a name or flag another experiment has."""
    bearer_ok(request)
    body = await json_object(request, INTAKE_SHAPE)
    raw = {k: body.get(k) for k in INTAKE_FIELDS}
    return WarehouseJSON(await run_in_threadpool(create, reader, raw, body.get("by")), status_code=201)


@api.post("/experiments/{name}/status", tags=["experiments"])
async def api_status(request: Request, reader: Reader, name: str) -> Response:
    """Move an app experiment to another status, with `Authorization: Bearer <BETON_APP_TOKEN>`: the JSON body
    `{"status": "Review", "by": "ana", "why": "…"}`. Logged in beton.experiment_decisions. 409 with the allowed
    next statuses for a move the workflow does not allow, or for a beton.yaml experiment."""
    bearer_ok(request)
    body = await json_object(request, STATUS_SHAPE)
    return WarehouseJSON(
        await run_in_threadpool(move, reader, name, body.get("status"), body.get("by"), body.get("why"))
    )


# ------------------------------------------------------------------------------------------------
# Pages
# ------------------------------------------------------------------------------------------------
@pages.get("/experiments")
async def experiments_page(request: Request, reader: Reader) -> Response:
    rows = await run_in_threadpool(experiment_list, reader)
    context = {"title": "Experiments", "experiments": rows, "writes": request.app.state.token is not None}
    return templates.TemplateResponse(request, "experiments.html", context)


def _intake_context(request: Request, reader: Warehouse, **extra) -> dict:
    return {
        "title": "New experiment",
        "events": [e["event"] for e in reader.catalog()["events"]],
        "csrf": csrf_for(request),
        "writes": request.app.state.token is not None,
        "form": {},
        **extra,
    }


@pages.get("/experiments/new")
async def intake_page(request: Request, reader: Reader) -> Response:
    context = await run_in_threadpool(_intake_context, request, reader)
    return templates.TemplateResponse(request, "experiment_new.html", context)


@pages.post("/experiments/new")
async def intake(request: Request, reader: Reader) -> Response:
    form = await checked_form(request)
    raw = {k: form.get(k, "") for k in INTAKE_FIELDS}
    try:
        created = await run_in_threadpool(create, reader, raw, None)
    except Refused as exc:
        if exc.status not in (400, 409):
            raise
        context = await run_in_threadpool(_intake_context, request, reader, form=form, error=exc.message)
        return templates.TemplateResponse(request, "experiment_new.html", context, exc.status)
    return RedirectResponse(f"/experiments/{urllib.parse.quote(created['name'], safe='')}", status_code=303)


async def _experiment_page(request: Request, reader: Warehouse, name: str, error: str | None = None, status=200):
    detail = await run_in_threadpool(experiment_detail, reader, name)
    ai, ai_source = await run_in_threadpool(llm_summary, detail)
    readout = detail["readout"]
    level = reader.settings.thresholds.confidence_level
    context = {
        "title": name,
        **detail,
        "e": detail["experiment"],
        "level": f"{100 * level:.0f}%",
        "chart": figure_json(charts.variant_rates(readout["variants"], level)) if readout else None,
        "ai": ai,
        "ai_source": ai_source,
        "csrf": csrf_for(request),
        "writes": request.app.state.token is not None,
        "error": error,
    }
    return templates.TemplateResponse(request, "experiment.html", context, status)


@pages.get("/experiments/{name}")
async def experiment_page(request: Request, reader: Reader, name: str) -> Response:
    return await _experiment_page(request, reader, name)


@pages.post("/experiments/{name}/status")
async def status_form(request: Request, reader: Reader, name: str) -> Response:
    form = await checked_form(request)
    try:
        await run_in_threadpool(move, reader, name, form.get("status"), form.get("by"), form.get("why"))
    except Refused as exc:
        if exc.status not in (400, 409):
            raise
        return await _experiment_page(request, reader, name, exc.message, exc.status)
    return RedirectResponse(f"/experiments/{urllib.parse.quote(name, safe='')}#decisions", status_code=303)
