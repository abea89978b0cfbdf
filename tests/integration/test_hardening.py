"""Hostile requests against the real engine, each sent twice at once (so shapes that
only break a batch of two get their batch): every answer is a clear 4xx (or a normal
answer), and the vLLM process that served the first is the one that serves the last.
Also: the engine listens on loopback only."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psutil
import pytest

from tests.helpers import API_KEY, chat

HI = [{"role": "user", "content": "Say hi."}]
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def _chat(**fields: Any) -> tuple[str, dict[str, Any]]:
    return CHAT, {"model": "a1", "messages": HI, "max_tokens": 4, **fields}


def _completion(**fields: Any) -> tuple[str, dict[str, Any]]:
    return COMPLETIONS, {"model": "a1", "prompt": "Paris is", "max_tokens": 4, **fields}


def _nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"x": schema}, "required": ["x"]}
    return schema


HOSTILE = {
    "max_tokens past the context": _chat(max_tokens=10**9),
    "max_tokens past int64": _chat(max_tokens=2**64 + 5),
    "top_logprobs 100000": _chat(logprobs=True, top_logprobs=100_000),
    "completions logprobs 1000000": _completion(logprobs=1_000_000),
    "logit_bias out of the vocabulary": _chat(logit_bias={"999999999": 100}),
    "logit_bias negative id": _chat(logit_bias={"-5": 100}),
    "seed past int64": _chat(seed=2**70),
    "min_tokens over max_tokens": _chat(min_tokens=100),
    "top_k negative": _chat(top_k=-5),
    "repetition_penalty 0": _chat(repetition_penalty=0),
    "temperature 1e308": _chat(temperature=1e308),
    "an invalid regex": _chat(structured_outputs={"regex": "(((("}),
    "a nonsense JSON schema": _chat(structured_outputs={"json": {"type": "nonsense"}}),
    "logprob_token_ids out of the vocabulary": _chat(logprobs=True, logprob_token_ids=[999_999_999]),
    "an unknown role": _chat(messages=[{"role": "nonsense", "content": "hi"}]),
    "an image URL on a text model": _chat(
        messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:1/x.png"}}]}
        ]
    ),
    "a request chat_template": _chat(chat_template="{% for i in range(10**9) %}x{% endfor %}"),
    "tool_choice required without tools": _chat(tool_choice="required"),
    "chat echo (prompt logprobs)": _chat(echo=True),
    "prompt_logprobs": _chat(prompt_logprobs=1),
    "completions echo with logprobs": _completion(prompt=["a", "b"], echo=True, logprobs=1),
    "token ids out of the vocabulary": _completion(prompt=[[999_999_999]]),
    "negative token ids": _completion(prompt=[[-1, 5]]),
    "an empty prompt list": _completion(prompt=[]),
    "an empty prompt": _completion(prompt=""),
    "a suffix": _completion(suffix="x"),
    "a priority without priority scheduling": _chat(priority=10),
    "n 128 with a long answer": _chat(n=128, max_tokens=10**6),
    "request_id not a string": _chat(request_id={"a": 1}),
    # Work bounds (serving/bounds.py): refused before the engine sees them.
    "prompts × n past the bound": _completion(prompt=["a"] * 200, n=2),
    "beam search": _chat(use_beam_search=True, n=4),
    "logprobs of a long batch held whole": _completion(prompt=["a"] * 64, max_tokens=200, logprobs=20),
    "a schema of 5000 alternatives": _chat(structured_outputs={"json": {"anyOf": [{"const": i} for i in range(5000)]}}),
    "a schema nested 40 deep": _chat(
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": _nested(40)}}
    ),
    "a grammar of 5000 alternatives": _chat(
        structured_outputs={"grammar": "root ::= " + " | ".join(f'"w{i}"' for i in range(5000))}
    ),
    "a choice of 5000 strings": _chat(structured_outputs={"choice": [f"c{i}" for i in range(5000)]}),
    "a client's own cache_salt": _chat(cache_salt="another-tenants-salt"),
    "a stream that holds its chunks back": _chat(stream=True, stream_interval=10**9),
    "a repetition of a million": _chat(structured_outputs={"json": {"type": "array", "minItems": 10**6}}),
}


def _post(server, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120)


@pytest.fixture(scope="module")
def engine_pid(server) -> int:
    return _api_server_pid(server)


def _api_server_pid(server) -> int:
    (pid,) = [p for p in server.vllm_pids() if os.getpgid(p) == p]  # the API server leads its group
    return pid


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_request_is_answered_and_the_engine_survives(server, engine_pid, case):
    path, body = HOSTILE[case]
    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda _: _post(server, path, body), range(2)))
    print(f"\n{case}: {[r.status_code for r in responses]} {responses[0].text[:160]}")
    for response in responses:
        assert response.status_code < 500, f"{case}: {response.status_code} {response.text[:300]}"
        if response.status_code >= 400:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert _api_server_pid(server) == engine_pid, f"{case} restarted the engine"
    assert httpx.get(server.url + "/ready").status_code == 200


def test_the_engine_still_answers_after_the_hostile_requests(server, engine_pid):
    assert "Paris" in chat(server.client(), "default", "What is the capital of France?")
    assert _api_server_pid(server) == engine_pid


def test_the_engine_listens_on_loopback_only(server):
    listening = []
    for pid in server.vllm_pids():
        process = psutil.Process(pid)
        for proc in [process, *process.children(recursive=True)]:
            with_sockets = proc.net_connections(kind="inet")
            listening += [c.laddr for c in with_sockets if c.status == psutil.CONN_LISTEN]
    assert listening, "found no listening socket of the engine"
    assert {addr.ip for addr in listening} <= {"127.0.0.1", "::1"}, listening
