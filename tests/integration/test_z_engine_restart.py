"""Killing the vLLM child: /ready fails, requests get 503 with Retry-After, the
supervisor restarts it, and base and adapter requests work again by themselves.
(Named to run last: it costs one engine start.)"""

from __future__ import annotations

import os
import signal
import time

import httpx

from tests.integration.conftest import API_KEY, chat

PROMPT = "What is the capital of France?"


def test_killed_engine_is_restarted_and_adapters_come_back(server):
    client = server.client()
    before = {m: chat(client, m, PROMPT) for m in ("default", "a1")}
    (pid,) = [p for p in server.vllm_pids() if os.getpgid(p) == p]  # the API server, its group's leader

    os.kill(pid, signal.SIGKILL)

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
