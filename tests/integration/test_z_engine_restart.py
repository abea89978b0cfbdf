"""Killing the vLLM child, with a stream in flight: the stream ends with an error
event (no hang) and is not metered, /ready fails, requests get 503 with Retry-After,
the supervisor restarts it, and base and adapter requests work again by themselves.
(Named to run last: it costs one engine start.)"""

from __future__ import annotations

import os
import signal
import time

import httpx
import openai
import pytest

from tests.helpers import API_KEY, chat

PROMPT = "What is the capital of France?"


def _requests_metered(server, alias: str) -> int:
    rows = server.admin("GET", "/usage", params={"tenant": "default"}).json()["data"]
    return sum(r["requests"] for r in rows if r["model"] == alias and not r["template"])


def test_killed_engine_is_restarted_and_adapters_come_back(server):
    client = server.client()
    before = {m: chat(client, m, PROMPT) for m in ("default", "a1")}
    time.sleep(2)  # the usage meter flushes every second
    metered = _requests_metered(server, "a3")
    (pid,) = [p for p in server.vllm_pids() if os.getpgid(p) == p]  # the API server, its group's leader

    stream = client.chat.completions.create(
        model="a3",
        messages=[{"role": "user", "content": "Write a long story."}],
        max_tokens=1500,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    chunks, started = 0, time.monotonic()
    with pytest.raises(openai.APIError, match="stopped while streaming"):
        for chunks, _chunk in enumerate(stream, start=1):
            if chunks == 3:
                os.kill(pid, signal.SIGKILL)
    assert chunks < 1500 and time.monotonic() - started < 60

    deadline = time.monotonic() + 30
    while httpx.get(server.url + "/ready").status_code != 503:
        assert time.monotonic() < deadline, "/ready kept saying ready with the engine dead"
        time.sleep(0.2)
    response = httpx.post(
        server.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={"model": "a1", "messages": [{"role": "user", "content": PROMPT}]},
        timeout=30,
    )
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) > 0
    assert response.json()["error"]["code"] == "upstream_unavailable"

    server.wait_ready(timeout_s=600)
    after = {m: chat(client, m, PROMPT) for m in ("default", "a1")}
    assert after == before
    assert "restarting in" in server.log()
    time.sleep(2)
    assert _requests_metered(server, "a3") == metered  # the broken stream was not metered as served
