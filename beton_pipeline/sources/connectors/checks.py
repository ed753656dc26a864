"""`beton check --sources`: one authenticated call per enabled connector, to say whether a pull can start.

Each check makes one request (no retries: it answers now, or says why not) with the connector's key from its
environment variable, and reports what the vendor said: the project or workspace the key opens, or why it was
refused. The key never appears in what is reported. A PostHog batch export is checked on its bucket (one page of
the prefix listed, the newest export object's HEAD: `posthog_batch.describe_bucket`), and through the query API
as well only when it is topped up from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import requests

ATTIO_READ_SCOPES = ("record_permission:read", "object_configuration:read")
"""The scopes the Attio connector reads with (records, and the objects' attributes)."""


STRIPE_LISTS = ("events", "customers", "subscriptions", "invoices")
"""The Stripe lists the pull reads, each asked once by the check."""


@dataclass(frozen=True)
class ConnectionCheck:
    """One connector's answer: `ok`, and a sentence for people."""

    source: str
    ok: bool
    detail: str


def _request(
    url: str, key: str, timeout: float, params: dict | None = None, json_body: dict | None = None
) -> tuple[int | None, dict, str]:
    """(status, JSON body or {}, error) of one GET (or POST of `json_body`) with a bearer key; never raises for HTTP
    or network failures, and never chains the request's error (it can hold the headers)."""
    method = "POST" if json_body is not None else "GET"
    try:
        response = requests.request(
            method, url, headers={"Authorization": f"Bearer {key}"}, params=params, json=json_body, timeout=timeout
        )
    except requests.RequestException as exc:
        return None, {}, f"no answer ({type(exc).__name__})"
    try:
        body = response.json()
    except ValueError:
        body = {}
    return response.status_code, body if isinstance(body, dict) else {}, ""


def _refused(source: str, env_var: str, status: int | None, error: str, url: str) -> ConnectionCheck:
    if status is None:
        return ConnectionCheck(source, False, f"{url}: {error}; check the host setting and the network")
    if status in (401, 403):
        what = "refused" if status == 401 else "lacks a permission"
        return ConnectionCheck(source, False, f"the key in {env_var} is {what} (HTTP {status} from {url})")
    return ConnectionCheck(source, False, f"HTTP {status} from {url}")


def check_connection(name: str, config) -> ConnectionCheck:
    """Whether connector `name` can pull with `config` (`Settings.connector_config(name)`) and its key."""
    if name == "posthog" and config.batch_export is not None:
        return _check_posthog_export(config)
    key = os.environ.get(config.api_key_env, "").strip()
    if not key:
        return ConnectionCheck(name, False, f"{config.api_key_env} is not set (export it with the {name} key)")
    timeout = min(config.timeout_seconds, 30.0)
    if name == "posthog":  # the pull's own query (scope query:read), over an empty window: one row at most
        from beton_pipeline.sources.connectors.posthog import query_body

        url = f"{config.host}{config.query_path}"
        now = datetime.now(UTC)
        status, answer, error = _request(
            url, key, timeout, json_body=query_body(replace(config, page_size=1), now, now, None)
        )
        if status == 200 and isinstance(answer.get("results"), list):
            return ConnectionCheck(name, True, f"project {config.project_id} answers event queries at {config.host}")
        if status == 404:
            return ConnectionCheck(name, False, f"project {config.project_id} not found at {config.host}")
        return _refused(name, config.api_key_env, status, error, url)
    if name == "attio":
        url = f"{config.api_base}/v2/self"
        status, body, error = _request(url, key, timeout)
        if status == 200 and body.get("active"):
            missing = [s for s in ATTIO_READ_SCOPES if s not in str(body.get("scope", "")).split()]
            workspace = body.get("workspace_name") or body.get("workspace_id") or "?"
            if missing:
                return ConnectionCheck(name, False, f"workspace {workspace}: the key lacks {', '.join(missing)}")
            return ConnectionCheck(name, True, f"workspace {workspace} at {config.api_base}")
        if status == 200:
            return ConnectionCheck(name, False, f"the key in {config.api_key_env} is not active")
        return _refused(name, config.api_key_env, status, error, url)
    if name == "stripe":  # every list the pull reads (a restricted key may read some and not others)
        for resource in STRIPE_LISTS:
            url = f"{config.api_base}/v1/{resource}"
            status, _, error = _request(url, key, timeout, params={"limit": 1})
            if status != 200:
                return _refused(name, config.api_key_env, status, error, url)
        mode = "live" if key.startswith(("sk_live", "rk_live")) else "test"
        return ConnectionCheck(name, True, f"{mode}-mode key reads {', '.join(STRIPE_LISTS)} at {config.api_base}")
    raise ValueError(f"unknown connector {name!r}")


def _check_posthog_export(config) -> ConnectionCheck:
    """The batch export's bucket; with `top_up`, the query API too (both must answer)."""
    from beton_pipeline.sources.connectors.posthog_batch import describe_bucket

    ok, detail = describe_bucket(config, timeout=min(config.timeout_seconds, 30.0))
    if not config.batch_export.top_up:
        return ConnectionCheck("posthog", ok, detail)
    query = check_connection("posthog", replace(config, batch_export=None))
    return ConnectionCheck("posthog", ok and query.ok, f"{detail}; {query.detail}")
