"""Attio: companies, people, deals and the deals' stage history through Attio's REST API (v2).

Records come from `POST {api_base}/v2/objects/{object}/records/query` with `{"limit": n, "offset": k}`, page by
page until a page holds fewer than `limit` records (Attio's query endpoint pages by limit and offset). Each
attribute's values arrive as an array of value objects keyed by the attribute's slug, e.g.
`values.domains[0].domain`; a value whose `active_until` is null is current, and the first current value of an
attribute is the one a contract column takes (`current_values`). Every table is replaced on each pull: Attio has
no change feed for records, and the tables are small (thousands of rows).

A deal's stage history comes from `GET …/records/{record_id}/attributes/stage/values?show_historic=true`, one
call per deal: every stage the deal has been in, oldest first, each with the time it became current. Asking every
deal on every pull would cost a call per deal per pull, so only the deals whose history may have changed are asked
(`plan_history`); the others keep the rows landed by the previous pull, read back from the landing directory.

Attio allows about 100 reads a second and answers 429 with `Retry-After` as an HTTP date (the second the limit
resets); dlt's retrying client waits until then, and retries 5xx answers, timeouts and refused connections with
exponential backoff (`AttioConfig.max_attempts`, `backoff_factor`, `max_wait_seconds`).

The key is the one the Attio write-back uses (`BETON_ATTIO_API_KEY`); reading needs the scopes
`record_permission:read` and `object_configuration:read`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from beton_pipeline.sources.connectors.common import (
    ConnectorError,
    contract_row,
    secret,
    source_dir,
    text_columns,
)
from beton_pipeline.sources.contract import TABLES_BY_NAME

SOURCE = "attio"

HISTORY_REUSABLE = "deal_history_reusable"
"""Source-state flag: the landed stage history may be reused for deals whose stage has not changed. dlt's source
state is committed with the load it belongs to and wiped by a full refresh, so after a refresh every deal's
history is asked again."""

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttioConfig:
    """How the Attio connector pulls (`sources.attio` in beton.yaml).

    `max_history_calls`: stage-history calls a pull may make; deals beyond it are asked on the next pull (the log
    says how many wait) and keep their earlier rows meanwhile. `won_stages` / `lost_stages`: stage titles that
    close a deal as won or lost (compared case-insensitively); any other stage is open."""

    api_base: str = "https://api.attio.com"
    api_key_env: str = "BETON_ATTIO_API_KEY"
    page_size: int = 500
    timeout_seconds: float = 30.0
    max_attempts: int = 5
    backoff_factor: float = 1.0
    max_wait_seconds: float = 60.0
    deal_history: bool = True
    max_history_calls: int = 2000
    won_stages: tuple[str, ...] = ("Won", "Won 🎉", "Closed won")
    lost_stages: tuple[str, ...] = ("Lost", "Closed lost")
    companies_object: str = "companies"
    people_object: str = "people"
    deals_object: str = "deals"


def attio_source(config: AttioConfig, landing: Path):
    """The dlt source `attio`: `crm_companies`, `crm_people`, `crm_deals` and (with `deal_history`)
    `crm_deal_stage_changes`, each replaced on every pull. `landing` is where earlier pulls landed (the stage
    history of unchanged deals is read back from there). The key is read when a resource first runs."""
    import dlt  # here: dlt is imported only where a connector runs

    @dlt.source(name=SOURCE)
    def attio():
        @dlt.resource(name="crm_companies", write_disposition="replace", columns=text_columns("crm_companies"))
        def crm_companies():
            for page in AttioApi(config).records(config.companies_object):
                yield [company_row(record) for record in page]

        @dlt.resource(name="crm_people", write_disposition="replace", columns=text_columns("crm_people"))
        def crm_people():
            for page in AttioApi(config).records(config.people_object):
                yield [person_row(record) for record in page]

        @dlt.resource(name="attio_deal_records", selected=False)
        def deal_records():
            # One list of every deal: both deal tables are made from the same records, read once.
            yield [record for page in AttioApi(config).records(config.deals_object) for record in page]

        @dlt.transformer(name="crm_deals", write_disposition="replace", columns=text_columns("crm_deals"))
        def crm_deals(records: list[dict]):
            yield [deal_row(record, config) for record in records]

        @dlt.transformer(
            name="crm_deal_stage_changes",
            write_disposition="replace",
            columns=text_columns("crm_deal_stage_changes"),
        )
        def crm_deal_stage_changes(records: list[dict]):
            yield from stage_changes(config, landing, records, dlt.current.source_state())

        resources = [crm_companies, crm_people, deal_records | crm_deals]
        if config.deal_history:
            resources.append(deal_records | crm_deal_stage_changes)
        return resources

    return attio()


# -- the API ---------------------------------------------------------------------------------------------------


def _record_id(record: Any) -> str | None:
    """A record's `id.record_id`, or None when the record has none (it still lands, to be quarantined)."""
    ident = record.get("id") if isinstance(record, dict) else None
    value = ident.get("record_id") if isinstance(ident, dict) else None
    return value if isinstance(value, str) else None


class AttioApi:
    """Attio's REST API read with the connector's key and retry policy (dlt's retrying `Client`)."""

    def __init__(self, config: AttioConfig) -> None:
        from dlt.sources.helpers.requests import Client

        self._config = config
        self._key = secret(config.api_key_env, SOURCE)
        self._client = Client(
            request_timeout=config.timeout_seconds,
            raise_for_status=False,
            request_max_attempts=config.max_attempts,
            request_backoff_factor=config.backoff_factor,
            request_max_retry_delay=config.max_wait_seconds,
            respect_retry_after_header=True,
        )

    def records(self, object_slug: str) -> Iterator[list[dict]]:
        """Every record of an object, one page (a list of records) at a time; the last page may be empty.

        Pages are sorted by `created_at` (oldest first), so a record created during the pull lands at the end
        instead of shifting every offset; a record seen on an earlier page (a deletion shifted the offsets back)
        is left out, and a full page of records all seen before (an API ignoring the offset) stops the pull
        instead of looping."""
        path = f"/v2/objects/{quote(object_slug, safe='')}/records/query"
        offset, seen, repeated = 0, set(), 0
        sorts = [{"attribute": "created_at", "direction": "asc"}]
        while True:
            page = self._data("POST", path, json={"limit": self._config.page_size, "offset": offset, "sorts": sorts})
            ids = [_record_id(r) for r in page]
            new = [r for r, i in zip(page, ids, strict=True) if i is None or i not in seen]
            if page and not new and len(page) == self._config.page_size:
                raise ConnectorError(
                    f"attio: POST {path} at offset {offset} answered {len(page)} records all read on earlier pages: "
                    "the offset is not being honoured, so the pull stops rather than loop. Try again later."
                )
            repeated += len(page) - len(new)
            seen.update(i for i in ids if i is not None)
            yield new
            if len(page) < self._config.page_size:
                if repeated:
                    logger.info(f"attio: {object_slug}: {repeated} record(s) seen twice while paging were read once")
                return
            offset += len(page)

    def stage_values(self, record_id: str) -> list[dict]:
        """Every value a deal's stage has had, historic ones included, oldest first (as Attio sorts them)."""
        deals = quote(self._config.deals_object, safe="")
        path = f"/v2/objects/{deals}/records/{quote(record_id, safe='')}/attributes/stage/values"
        values: list[dict] = []
        while True:
            params = {"show_historic": "true", "limit": self._config.page_size, "offset": len(values)}
            page = self._data("GET", path, params=params)
            values += page
            if len(page) < self._config.page_size:
                return values

    def _data(self, method: str, path: str, **kwargs: Any) -> list[dict]:
        """The `data` array of one answer, retried by the client; a `ConnectorError` when there is none."""
        from requests import RequestException

        try:
            response = self._client.session.request(
                method,
                f"{self._config.api_base.rstrip('/')}{path}",
                headers={"Authorization": f"Bearer {self._key}", "Accept": "application/json"},
                **kwargs,
            )
        except RequestException as exc:
            raise ConnectorError(
                f"attio: {method} {path} got no answer in {self._config.max_attempts} attempts "
                f"({type(exc).__name__}; timeout {self._config.timeout_seconds:g} s). Check that "
                f"{self._config.api_base} is reachable, or raise sources.attio.timeout_seconds or max_attempts."
            ) from None  # the request error can hold the headers (the key): never chained
        if response.status_code >= 400:
            raise ConnectorError(self._refusal(method, path, response.status_code, _attio_error(response)))
        try:
            data = response.json().get("data")
        except (ValueError, AttributeError):
            data = None
        if not isinstance(data, list):
            raise ConnectorError(
                f"attio: {method} {path} answered {response.status_code} without a `data` array of records; "
                f"is {self._config.api_base} Attio's API (sources.attio.api_base)?"
            )
        return data

    def _refusal(self, method: str, path: str, status: int, detail: str) -> str:
        """What a refused request means and what to change, with Attio's own code and message (key removed)."""
        said = f" (Attio: {detail.replace(self._key, '[key]')[:300]})" if detail else ""
        asked = f"attio: {method} {path} answered {status}{said}"
        env = self._config.api_key_env
        if status == 429 or status >= 500:
            return (
                f"{asked} after {self._config.max_attempts} attempts (backing off between them, and waiting as long as "
                f"a Retry-After asked, up to {self._config.max_wait_seconds:g} s). Attio is busy or failing: try again "
                "later, or raise sources.attio.max_attempts."
            )
        if status == 401:
            return (
                f"{asked}: the key in {env} is not a valid Attio access token; create one in Attio's developer "
                "settings with the scopes record_permission:read and object_configuration:read."
            )
        if status == 403:
            return (
                f"{asked}: the key in {env} lacks a permission; it needs the scopes record_permission:read and "
                "object_configuration:read."
            )
        if status == 404:
            objects = ", ".join((self._config.companies_object, self._config.people_object, self._config.deals_object))
            return (
                f"{asked}: no such object or record. The connector reads the objects {objects}: activate any the "
                "workspace lacks (Attio: Workspace settings → Objects); a record deleted during the pull is gone on "
                "the next one."
            )
        return f"{asked}: the request was refused; this is a bug in the connector or a change in Attio's API."


def _attio_error(response) -> str:
    """`code: message` from Attio's error JSON (`status_code`, `type`, `code`, `message`), or ''."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    return ": ".join(str(body[k]) for k in ("code", "message") if body.get(k))


# -- records to contract rows ------------------------------------------------------------------------------------


def current_values(record: Mapping, slug: str) -> list[dict]:
    """The current values of attribute `slug` (`active_until` null), in Attio's order; [] when it has none."""
    values = (record.get("values") or {}).get(slug)
    if not isinstance(values, list):
        return []
    return [v for v in values if isinstance(v, dict) and v.get("active_until") is None]


def _first(record: Mapping, slug: str, *path: str) -> Any:
    """A field of the first current value of `slug` (`path` into nested objects), or None."""
    values = current_values(record, slug)
    value: Any = values[0] if values else None
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def record_id_of(record: Mapping) -> str | None:
    """The record's id (`id.record_id`)."""
    ids = record.get("id")
    return ids.get("record_id") if isinstance(ids, dict) else None


def _created_at(record: Mapping) -> Any:
    """When the record was created: its `created_at` attribute, else the record's own `created_at`."""
    return _first(record, "created_at", "value") or record.get("created_at")


def company_row(record: Mapping) -> dict[str, str | None]:
    """A `crm_companies` row of a company record.

    `employee_count` is the number in a workspace's own number attribute `employee_count` when it has one. Attio's
    standard `employee_range` is a band ("11-50"): it is not turned into a number (no count would be right), so
    without that attribute the column is empty."""
    domain = _first(record, "domains", "domain")
    return contract_row(
        "crm_companies",
        {
            "record_id": record_id_of(record),
            "name": _first(record, "name", "value"),
            "domain": domain.lower() if isinstance(domain, str) else domain,
            "employee_count": _first(record, "employee_count", "value"),
            "industry": _first(record, "categories", "option", "title"),
            "created_at": _created_at(record),
        },
    )


def person_row(record: Mapping) -> dict[str, str | None]:
    """A `crm_people` row of a person record: the first current e-mail address and company."""
    return contract_row(
        "crm_people",
        {
            "record_id": record_id_of(record),
            "email": _first(record, "email_addresses", "email_address"),
            "company_record_id": _first(record, "company", "target_record_id"),
            "created_at": _created_at(record),
        },
    )


def deal_status(stage: str | None, config: AttioConfig) -> str:
    """`won`, `lost` or `open`: the stage title against `won_stages` / `lost_stages`, case-insensitively."""
    title = (stage or "").strip().casefold()
    if title in {s.casefold() for s in config.won_stages}:
        return "won"
    if title in {s.casefold() for s in config.lost_stages}:
        return "lost"
    return "open"


def deal_row(record: Mapping, config: AttioConfig) -> dict[str, str | None]:
    """A `crm_deals` row of a deal record.

    `closed_at` is when the current stage became current (its `active_from`) when that stage is won or lost, else
    empty. `owner` is the owning workspace member's id: their e-mail needs a further scope (`user_management:read`)
    that the connector does not ask for."""
    stage = _first(record, "stage", "status", "title")
    status = deal_status(stage, config)
    return contract_row(
        "crm_deals",
        {
            "record_id": record_id_of(record),
            "company_record_id": _first(record, "associated_company", "target_record_id"),
            "name": _first(record, "name", "value"),
            "stage": stage,
            "value": _first(record, "value", "currency_value"),
            "currency": _first(record, "value", "currency_code"),
            "owner": _first(record, "owner", "referenced_actor_id"),
            "created_at": _created_at(record),
            "closed_at": _first(record, "stage", "active_from") if status != "open" else None,
            "status": status,
        },
    )


def stage_change_rows(record_id: str, values: Sequence[Mapping]) -> list[dict[str, str | None]]:
    """`crm_deal_stage_changes` rows of a deal's stage values (historic ones included): one per stage entered."""
    rows = []
    for value in values:
        status = value.get("status")
        title = status.get("title") if isinstance(status, dict) else None
        rows.append(
            contract_row(
                "crm_deal_stage_changes",
                {"deal_record_id": record_id, "stage": title, "changed_at": value.get("active_from")},
            )
        )
    return rows


# -- stage history -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryPlan:
    """Which deals' stage history a pull asks for (`ask`, in record order) and how many wait for the next pull
    (`waiting`). Every other deal keeps its landed rows."""

    ask: tuple[str, ...]
    waiting: int


def plan_history(
    records: Sequence[Mapping], landed: Mapping[str, Sequence[Mapping]], max_calls: int, reuse: bool
) -> HistoryPlan:
    """The deals whose history is asked, at most `max_calls` of them.

    A deal is asked when `reuse` is off (first pull, full refresh), or when its current stage value (title and
    `active_from`) is not among its landed rows: a new deal, a deal whose stage changed since (also to a stage it
    had before), or one that waited last time. A deal without a current stage has nothing new to ask."""
    wanted: list[str] = []
    for record in records:
        record_id = record_id_of(record)
        if record_id is None:
            continue
        if reuse:
            title = _first(record, "stage", "status", "title")
            since = _first(record, "stage", "active_from")
            if title is None or any(
                row.get("stage") == title and row.get("changed_at") == since for row in landed.get(record_id, ())
            ):
                continue
        wanted.append(record_id)
    return HistoryPlan(tuple(wanted[:max_calls]), max(0, len(wanted) - max_calls))


def landed_stage_changes(landing: Path) -> dict[str, list[dict[str, str | None]]]:
    """The stage-change rows the last pull landed (`<landing>/attio/crm_deal_stage_changes/*.parquet`), by deal."""
    import pyarrow.parquet as pq

    columns = TABLES_BY_NAME["crm_deal_stage_changes"].column_names
    by_deal: dict[str, list[dict[str, str | None]]] = {}
    for path in sorted((source_dir(SOURCE, landing) / "crm_deal_stage_changes").glob("*.parquet")):
        present = [c for c in columns if c in pq.read_schema(path).names]
        for row in pq.read_table(path, columns=present).to_pylist():
            by_deal.setdefault(row["deal_record_id"], []).append(contract_row("crm_deal_stage_changes", row))
    return by_deal


def stage_changes(
    config: AttioConfig, landing: Path, records: Sequence[Mapping], state: dict
) -> Iterator[list[dict[str, str | None]]]:
    """Every deal's stage-change rows: asked anew for the deals `plan_history` picks, as landed for the others.

    `state` is the source's dlt state (`HISTORY_REUSABLE`). Deals that are no longer in Attio lose their rows."""
    landed = landed_stage_changes(landing)
    plan = plan_history(records, landed, config.max_history_calls, reuse=bool(state.get(HISTORY_REUSABLE)))
    if plan.ask:
        api = AttioApi(config)
        for record_id in plan.ask:
            yield stage_change_rows(record_id, api.stage_values(record_id))
    asked = set(plan.ask)
    kept = [row for record in records if (rid := record_id_of(record)) not in asked for row in landed.get(rid, ())]
    yield kept  # also when empty: the table is replaced by this pull's rows
    if plan.waiting:
        logger.warning(
            "attio: the stage history of %d deal(s) waits for the next pull (sources.attio.max_history_calls = %d); "
            "their earlier rows are kept meanwhile",
            plan.waiting,
            config.max_history_calls,
        )
    state[HISTORY_REUSABLE] = True
