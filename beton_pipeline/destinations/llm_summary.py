"""An optional second summary of an experiment's readout, written by a language model.

When `BETON_LLM_API_KEY` is set, the experiment page asks an OpenAI-compatible chat completions endpoint
(`POST {BETON_LLM_BASE_URL}/chat/completions`, default base https://api.openai.com/v1; model `BETON_LLM_MODEL`,
default `DEFAULT_MODEL`) for a few plain sentences about the readout. The request is the documented minimum every
compatible server accepts — `{"model", "messages": [{"role": "system"|"user", "content"}]}`, the key as
`Authorization: Bearer` — and the answer's text is `choices[0].message.content`; an error answers
`{"error": {"message", "type", "param", "code"}}`. No `max_tokens` or `temperature` is sent (OpenAI's reasoning
models refuse both; the prompt asks for brevity instead).

Only aggregates leave beton: per variant the exposures, conversions, rates, lifts, intervals and p-values, the
sample-ratio check and the warnings (`readout_aggregates`) — never a user or account key. One attempt with a
`TIMEOUT_SECONDS` limit (per connection step, urllib's); any failure gives `LLMSummary(text=None, error=…)`, the
error short and without the key, and the caller shows beton's own summary alone.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from beton_pipeline.destinations.http import REDACTED, http_request, redact

KEY_ENV, BASE_URL_ENV, MODEL_ENV = "BETON_LLM_API_KEY", "BETON_LLM_BASE_URL", "BETON_LLM_MODEL"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
TIMEOUT_SECONDS = 10.0
MAX_SUMMARY_CHARS = 2000
"""A longer answer is cut here (the page has room for a paragraph)."""
INSTRUCTIONS = (
    "You summarise A/B test readouts for a B2B SaaS revenue team. In at most four short sentences of plain "
    "English, say which variant converts best, whether the difference is statistically significant (use the "
    "Holm-adjusted p-value), how uncertain it is (the confidence intervals), and any warning (sample-ratio "
    "mismatch, small samples) that should stop a decision. Use only the numbers given; do not invent any."
)
READOUT_FIELDS = (
    "variant",
    "is_control",
    "exposures",
    "conversions",
    "rate",
    "rate_ci_low",
    "rate_ci_high",
    "lift",
    "lift_ci_low",
    "lift_ci_high",
    "p_value",
    "p_value_holm",
    "significant",
)
"""The per-variant numbers sent (columns of beton.experiment_readouts)."""


@dataclass(frozen=True)
class LLMConfig:
    """Where to ask and with what: the API key (a secret), the base URL and the model."""

    api_key: str
    base_url: str = DEFAULT_BASE_URL
    model: str = DEFAULT_MODEL

    def __repr__(self) -> str:  # the key never reaches a log through a repr
        return f"LLMConfig(base_url={self.base_url!r}, model={self.model!r})"

    @property
    def host(self) -> str:
        """The endpoint's host, to say on the page where the summary came from."""
        return urlsplit(self.base_url).hostname or self.base_url


def llm_config(environ: Mapping[str, str] | None = None) -> LLMConfig | None:
    """The configuration from `BETON_LLM_API_KEY`, `BETON_LLM_BASE_URL` and `BETON_LLM_MODEL` (read when called);
    None when no key is set."""
    env = os.environ if environ is None else environ
    key = env.get(KEY_ENV, "").strip()
    if not key:
        return None
    return LLMConfig(
        key,
        env.get(BASE_URL_ENV, "").strip().rstrip("/") or DEFAULT_BASE_URL,
        env.get(MODEL_ENV, "").strip() or DEFAULT_MODEL,
    )


@dataclass(frozen=True)
class LLMSummary:
    """The model's summary (`text`), or why there is none (`error`, short, never the key)."""

    text: str | None
    error: str | None = None


def _number(value: object) -> object:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def readout_aggregates(
    experiment: str, goal_event: str, rows: list[dict], srm_pvalue: float, warnings: tuple[str, ...]
) -> dict:
    """What is sent about a readout: its name, goal event, per-variant numbers (`READOUT_FIELDS` of its rows),
    the sample-ratio p-value and the warnings. Counts and rates only: no user or account key is in a readout."""
    return {
        "experiment": experiment,
        "goal_event": goal_event,
        "variants": [{k: _number(row.get(k)) for k in READOUT_FIELDS} for row in rows],
        "sample_ratio_p_value": _number(srm_pvalue),
        "warnings": list(warnings),
    }


def chat_request(config: LLMConfig, aggregates: dict) -> dict:
    """The chat completions request body for one readout."""
    return {
        "model": config.model,
        "messages": [
            {"role": "system", "content": INSTRUCTIONS},
            {"role": "user", "content": json.dumps(aggregates, allow_nan=False)},
        ],
    }


def summarize_readout(config: LLMConfig, aggregates: dict, timeout: float = TIMEOUT_SECONDS) -> LLMSummary:
    """Ask the model for a summary of `aggregates` (`readout_aggregates`); one attempt, never raises."""
    response = http_request(
        "POST",
        f"{config.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {config.api_key}", "Content-Type": "application/json"},
        body=json.dumps(chat_request(config, aggregates)).encode(),
        timeout=timeout,
    )
    if response.status is None:
        return LLMSummary(None, redact(f"{config.host}: {response.error or 'no response'}", [config.api_key]))
    answer = response.json()
    if not 200 <= response.status < 300:
        detail = answer.get("error")
        message = detail.get("message") if isinstance(detail, dict) else None
        error = f"{config.host} answered HTTP {response.status}" + (f": {message}" if message else "")
        return LLMSummary(None, redact(error, [config.api_key]))
    try:
        text = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        text = None
    if not isinstance(text, str) or not text.strip():
        return LLMSummary(None, f"{config.host} answered without a summary (no choices[0].message.content)")
    return LLMSummary(text.strip().replace(config.api_key, REDACTED)[:MAX_SUMMARY_CHARS])
