"""The optional language-model summary of an experiment readout, against a chat completions fake on 127.0.0.1:
what is sent (the model, the instructions and the readout's aggregates only), what is read back, and every
failure (a wrong key echoed back, a server error, no answer in time, a port that is closed, an answer without
text) giving no summary and an error that never holds the key."""

from __future__ import annotations

import json

import pytest

from beton_pipeline.core.readouts import experiment_readout
from beton_pipeline.destinations.llm_summary import (
    DEFAULT_BASE_URL,
    DEFAULT_MODEL,
    INSTRUCTIONS,
    LLMConfig,
    llm_config,
    readout_aggregates,
    summarize_readout,
)
from tests.fakes.llm import FakeLLM

KEY = "sk-SECRET-llm-5f0e2a"


@pytest.fixture
def aggregates() -> dict:
    r = experiment_readout("pricing", "trial_started", ["control", "short"], [400, 410], [40, 62])
    return readout_aggregates(r.experiment, r.goal_event, r.table.to_dicts(), r.srm_pvalue, r.warnings)


def test_the_configuration_comes_from_the_environment_only_when_a_key_is_set():
    assert llm_config({}) is None and llm_config({"BETON_LLM_API_KEY": "  "}) is None
    assert llm_config({"BETON_LLM_API_KEY": KEY}) == LLMConfig(KEY, DEFAULT_BASE_URL, DEFAULT_MODEL)
    custom = llm_config(
        {"BETON_LLM_API_KEY": KEY, "BETON_LLM_BASE_URL": "http://127.0.0.1:8000/v1/", "BETON_LLM_MODEL": "llama3"}
    )
    assert (custom.base_url, custom.model, custom.host) == ("http://127.0.0.1:8000/v1", "llama3", "127.0.0.1")
    assert KEY not in repr(custom)


def test_aggregates_are_counts_and_rates_per_variant(aggregates):
    assert aggregates["experiment"] == "pricing" and aggregates["goal_event"] == "trial_started"
    control, short = aggregates["variants"]
    assert (control["variant"], control["exposures"], control["conversions"], control["rate"]) == (
        "control",
        400,
        40,
        0.1,
    )
    assert control["lift"] is None and control["p_value"] is None  # NaN for the control: null in JSON
    assert (short["exposures"], short["conversions"]) == (410, 62) and short["lift"] == pytest.approx(62 / 410 / 0.1)
    assert set(short) == {
        "variant", "is_control", "exposures", "conversions", "rate", "rate_ci_low", "rate_ci_high", "lift",
        "lift_ci_low", "lift_ci_high", "p_value", "p_value_holm", "significant",
    }  # fmt: skip
    json.dumps(aggregates, allow_nan=False)  # sendable as is


def test_a_summary_is_asked_for_with_the_readout_and_read_from_the_first_choice(aggregates):
    with FakeLLM(api_key=KEY, reply="  Short converts better than control (15.1% vs 10.0%).  ") as llm:
        summary = summarize_readout(LLMConfig(KEY, llm.base_url, "gpt-test"), aggregates)
        assert summary.text == "Short converts better than control (15.1% vs 10.0%)." and summary.error is None
        [request] = llm.requests
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Content-Type"] == "application/json"
    body = request.json()
    assert set(body) == {"model", "messages"} and body["model"] == "gpt-test"
    system, user = body["messages"]
    assert system == {"role": "system", "content": INSTRUCTIONS}
    assert user["role"] == "user" and json.loads(user["content"]) == aggregates
    assert KEY not in user["content"]


def test_a_wrong_key_echoed_back_gives_no_summary_and_an_error_without_the_key(aggregates):
    with FakeLLM(api_key="sk-the-right-one") as llm:
        summary = summarize_readout(LLMConfig(KEY, llm.base_url), aggregates)
        [request] = llm.requests
        status, answer, _, _ = llm.handle_ok(request)
    assert status == request.status == 401 and KEY in answer["error"]["message"]  # the fake did echo it
    assert summary.text is None
    assert summary.error.startswith("127.0.0.1 answered HTTP 401: Incorrect API key provided: [redacted].")
    assert KEY not in summary.error


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ({"status": 500}, "127.0.0.1 answered HTTP 500"),
        ({"status": 429, "body": {"error": {"message": "Rate limit reached", "type": "requests", "param": None,
                                           "code": "rate_limit_exceeded"}}},
         "127.0.0.1 answered HTTP 429: Rate limit reached"),
        ({"status": 200, "body": {"id": "x", "object": "chat.completion", "choices": []}},
         "127.0.0.1 answered without a summary (no choices[0].message.content)"),
    ],
)  # fmt: skip
def test_a_failed_answer_gives_no_summary(aggregates, script, expected):
    with FakeLLM(api_key=KEY) as llm:
        llm.fail_next(script["status"], body=script.get("body"))
        summary = summarize_readout(LLMConfig(KEY, llm.base_url), aggregates)
    assert (summary.text, summary.error) == (None, expected)


def test_no_answer_in_time_or_a_closed_port_gives_no_summary(aggregates):
    with FakeLLM(api_key=KEY) as llm:
        llm.fail_next(200, delay=3, body={"choices": [{"message": {"content": "too late"}}]})
        late = summarize_readout(LLMConfig(KEY, llm.base_url), aggregates, timeout=0.3)
        url = llm.base_url
    assert (late.text, late.error) == (None, "127.0.0.1: connection failed: TimeoutError")
    closed = summarize_readout(LLMConfig(KEY, url), aggregates, timeout=2)
    assert closed.text is None and closed.error == "127.0.0.1: connection failed: ConnectionRefusedError"
