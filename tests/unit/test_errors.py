"""Every error is OpenAI-shaped with the right status; none is a 500."""

from __future__ import annotations

import openai
import pytest

from tests.unit.conftest import API_KEY

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


def assert_openai_error(response, status, code=None, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and isinstance(error["type"], str)
    assert error["code"] == code and error["param"] == param
    return error


@pytest.mark.parametrize(("case", "body", "status", "code", "param"), CASES, ids=[c[0] for c in CASES])
def test_bad_requests(gateway, case, body, status, code, param):
    assert_openai_error(gateway.post(CHAT, body), status, code, param)


def test_echo_with_logprobs_is_refused_on_completions(gateway):
    body = {"model": "default", "prompt": "a", "echo": True, "logprobs": 1}
    assert_openai_error(gateway.post("/v1/completions", body), 400, None, "echo")


def test_context_length_on_completions_names_prompt(gateway):
    body = {"model": "alpha", "prompt": "w " * 100}
    assert_openai_error(gateway.post("/v1/completions", body), 400, "context_length_exceeded", "prompt")


@pytest.mark.parametrize("raw", [b"{bad", b"[1, 2]", b"\xff\xfe", b""])
def test_malformed_json_is_400(gateway, raw):
    response = gateway.post(CHAT, content=raw)
    assert_openai_error(response, 400)


def test_body_over_the_limit_is_413(start_gateway):
    gw = start_gateway(max_request_bytes=2048)
    body = {**GOOD, "messages": [{"role": "user", "content": "x" * 4096}]}
    assert_openai_error(gw.post(CHAT, body), 413, "request_too_large")


@pytest.mark.parametrize("key", [None, "wrong"])
def test_missing_or_wrong_key_is_401(gateway, key):
    assert_openai_error(gateway.post(CHAT, GOOD, key=key), 401, "invalid_api_key")


def test_sdk_sees_authentication_error(gateway):
    with pytest.raises(openai.AuthenticationError):
        gateway.client(api_key="nope").models.list()


def test_unknown_route_is_openai_shaped_404(gateway):
    assert_openai_error(gateway.post("/v1/nothing", GOOD), 404, "not_found")


def test_health_needs_no_key_and_ready_reports(gateway):
    import httpx

    assert httpx.get(gateway.url + "/health").json() == {"status": "ok"}
    assert httpx.get(gateway.url + "/ready").json() == {"ready": True, "upstreams": ["ready"]}
    assert API_KEY not in httpx.get(gateway.url + "/ready").text


def test_wrong_method_is_openai_shaped_405(gateway):
    import httpx

    response = httpx.get(gateway.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"})
    assert_openai_error(response, 405, "method_not_allowed")
