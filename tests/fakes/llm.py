"""An OpenAI-compatible chat completions endpoint on 127.0.0.1: `POST /v1/chat/completions`.

Answers as OpenAI's API does (the shapes `destinations.llm_summary` relies on, fields it ignores included):
`{"id": "chatcmpl-…", "object": "chat.completion", "created", "model", "choices": [{"index": 0, "message":
{"role": "assistant", "content", "refusal": null}, "logprobs": null, "finish_reason": "stop"}], "usage": {…},
"system_fingerprint"}`; a wrong key gets 401 `{"error": {"message", "type": "invalid_request_error", "param":
null, "code": "invalid_api_key"}}` — whose message here echoes the whole key given (OpenAI's masks most of it),
so a test can check that beton never repeats it.
"""

from __future__ import annotations

import itertools

from tests.fakes import FakeServer, Recorded


class FakeLLM(FakeServer):
    """Answers each chat completion with `reply` (the `content` of its one choice)."""

    def __init__(self, api_key: str = "sk-test-llm-key", reply: str = "Variant test converts like control.") -> None:
        super().__init__()
        self.api_key, self.reply = api_key, reply
        self._ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def handle_ok(self, rec: Recorded):
        if rec.method != "POST" or rec.path != "/v1/chat/completions":
            return 404, _error(f"Invalid URL ({rec.method} {rec.path})", "invalid_request_error", None), {}, 0.0
        given = rec.headers.get("Authorization", "").removeprefix("Bearer ")
        if given != self.api_key:
            message = f"Incorrect API key provided: {given}. You can find your API key at https://platform.openai.com/account/api-keys."
            return 401, _error(message, "invalid_request_error", "invalid_api_key"), {}, 0.0
        body = rec.json()
        if not body.get("model") or not isinstance(body.get("messages"), list) or not body["messages"]:
            return (
                400,
                _error("you must provide a model parameter and messages", "invalid_request_error", None),
                {},
                0.0,
            )
        return (
            200,
            {
                "id": f"chatcmpl-fake{next(self._ids)}",
                "object": "chat.completion",
                "created": 1_735_689_600,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self.reply, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 120, "completion_tokens": 40, "total_tokens": 160},
                "system_fingerprint": "fp_fake",
            },
            {},
            0.0,
        )

    @property
    def bodies(self) -> list[dict]:
        return [r.json() for r in self.successes()]


def _error(message: str, kind: str, code: str | None) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}
