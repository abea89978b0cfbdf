"""Every error is OpenAI-shaped with the right status; none is a 500. The cases change
nothing, so they share one gateway (`shared_gateway`). The body-size limit, which needs
a gateway of its own, is in `test_hostile.py`."""

from __future__ import annotations

import openai
import pytest

from tests.helpers import API_KEY, assert_openai_error

CHAT = "/v1/chat/completions"
GOOD = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}

# (case, body, status, code, param)
CASES = [
    ("missing messages", {"model": "default"}, 400, None, "messages"),
    ("empty messages", {"model": "default", "messages": []}, 400, None, "messages"),
    ("model not a string", {**GOOD, "model": 3}, 400, None, "model"),
    ("max_tokens not an int", {**GOOD, "max_tokens": "abc"}, 400, None, "max_tokens"),
    ("negative max_tokens", {**GOOD, "max_tokens": -1}, 400, None, "max_tokens"),
    ("stream not a bool", {**GOOD, "stream": "yes"}, 400, None, "stream"),
    ("message not an object", {**GOOD, "messages": ["hi"]}, 400, None, "messages[0]"),
    ("prompt_logprobs crash the CPU engine", {**GOOD, "prompt_logprobs": 1}, 400, None, "prompt_logprobs"),
    ("chat echo means prompt logprobs in vLLM", {**GOOD, "echo": True}, 400, None, "echo"),
    ("unknown model", {**GOOD, "model": "nope"}, 404, "model_not_found", "model"),
    (
        "over the context",
        {**GOOD, "messages": [{"role": "user", "content": "word " * 100}]},
        400,
        "context_length_exceeded",
        "messages",
    ),
    (
        "over the context, streamed",
        {**GOOD, "stream": True, "messages": [{"role": "user", "content": "w " * 100}]},
        400,
        "context_length_exceeded",
        "messages",
    ),
]


@pytest.mark.parametrize(("case", "body", "status", "code", "param"), CASES, ids=[c[0] for c in CASES])
def test_bad_requests(shared_gateway, case, body, status, code, param):
    assert_openai_error(shared_gateway.post(CHAT, body), status, code, param)


def test_echo_with_logprobs_is_refused_on_completions(shared_gateway):
    body = {"model": "default", "prompt": "a", "echo": True, "logprobs": 1}
    assert_openai_error(shared_gateway.post("/v1/completions", body), 400, None, "echo")


def test_context_length_on_completions_names_prompt(shared_gateway):
    body = {"model": "alpha", "prompt": "w " * 100}
    assert_openai_error(shared_gateway.post("/v1/completions", body), 400, "context_length_exceeded", "prompt")


@pytest.mark.parametrize("raw", [b"{bad", b"[1, 2]", b"\xff\xfe", b""])
def test_malformed_json_is_400(shared_gateway, raw):
    response = shared_gateway.post(CHAT, content=raw)
    assert_openai_error(response, 400)


@pytest.mark.parametrize("key", [None, "wrong"])
def test_missing_or_wrong_key_is_401(shared_gateway, key):
    assert_openai_error(shared_gateway.post(CHAT, GOOD, key=key), 401, "invalid_api_key")


def test_sdk_sees_authentication_error(shared_gateway):
    with pytest.raises(openai.AuthenticationError):
        shared_gateway.client(api_key="nope").models.list()


def test_unknown_route_is_openai_shaped_404(shared_gateway):
    assert_openai_error(shared_gateway.post("/v1/nothing", GOOD), 404, "not_found")


def test_health_needs_no_key_and_ready_reports(shared_gateway):
    import httpx

    assert httpx.get(shared_gateway.url + "/health").json() == {"status": "ok"}
    assert httpx.get(shared_gateway.url + "/ready").json() == {"ready": True, "upstreams": ["ready"]}
    assert API_KEY not in httpx.get(shared_gateway.url + "/ready").text


def test_wrong_method_is_openai_shaped_405(shared_gateway):
    import httpx

    response = httpx.get(shared_gateway.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"})
    assert_openai_error(response, 405, "method_not_allowed")
