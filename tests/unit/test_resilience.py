"""Upstream faults: down and back, lost adapters, refused adapters, broken and
abandoned streams."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.fakes.fake_vllm import create_fake_vllm
from tests.servers import ServerThread
from tests.unit.factories import make_adapter

QUESTION = [{"role": "user", "content": "hello there"}]


def wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.05)


def test_upstream_down_gives_503_with_retry_after_then_recovers(gateway, fake):
    fake.server.stop()
    wait_for(lambda: httpx.get(gateway.url + "/ready").status_code == 503)
    response = gateway.post("/v1/chat/completions", {"model": "alpha", "messages": QUESTION})
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) > 0
    assert response.json()["error"]["code"] == "upstream_unavailable"
    with pytest.raises(openai.InternalServerError):
        gateway.client().chat.completions.create(model="default", messages=QUESTION)

    fake.restart()  # a new vLLM process knows no adapters
    fake.server = ServerThread(create_fake_vllm(fake), port=fake.server.port).start()
    gateway.wait_ready()
    for model in ("default", "alpha", "beta"):
        reply = gateway.client().chat.completions.create(model=model, messages=QUESTION)
        assert reply.choices[0].message.content.endswith("echo: hello there")


def test_bad_adapters_are_skipped_and_the_rest_serve(start_gateway, fake, tmp_path, adapters):
    bad = {
        "not-a-folder": tmp_path / "missing",
        "too-big-rank": make_adapter(tmp_path / "r64", r=64),
        "wrong-base": make_adapter(tmp_path / "wrong", hidden=48),
        "corrupt": make_adapter(tmp_path / "corrupt"),
    }
    (bad["corrupt"] / "adapter_model.safetensors").write_bytes(b"\x00garbage")
    gw = start_gateway(adapters={**adapters, **bad})
    assert {m.id for m in gw.client().models.list()} == {"tiny-base", "default", "alpha", "beta"}
    for name in bad:
        with pytest.raises(openai.NotFoundError):
            gw.client().chat.completions.create(model=name, messages=QUESTION)
    assert gw.client().chat.completions.create(model="alpha", messages=QUESTION).model == "alpha"


def test_adapter_refused_by_the_engine_fails_alone(start_gateway, fake, adapters, tmp_path):
    adapters["beta"] = make_adapter(tmp_path / "refused", fake_refuse=True)
    gw = start_gateway(adapters=adapters)
    assert {m.id for m in gw.client().models.list()} == {"tiny-base", "default", "alpha"}
    with pytest.raises(openai.NotFoundError):
        gw.client().chat.completions.create(model="beta", messages=QUESTION)
    assert gw.client().chat.completions.create(model="alpha", messages=QUESTION).model == "alpha"


def test_client_disconnect_aborts_the_upstream_stream(gateway, fake):
    fake.token_delay_s = 0.05
    body = {"model": "alpha", "messages": QUESTION, "max_tokens": 200, "stream": True}
    with httpx.stream(
        "POST", gateway.url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-test-key"}
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                break
    wait_for(lambda: fake.streams_open == 0, timeout_s=5)
    assert fake.streams_cancelled == 1


def test_upstream_dying_mid_stream_ends_with_an_error_event(gateway, fake):
    fake.token_delay_s = 0.1
    long = [{"role": "user", "content": "word " * 40}]  # the fake echoes it: 4 s of stream left to cut
    stream = gateway.client().chat.completions.create(model="alpha", messages=long, max_tokens=40, stream=True)
    chunks = 0
    with pytest.raises(openai.APIError, match="stopped while streaming"):
        for chunks, _chunk in enumerate(stream, start=1):
            if chunks == 2:
                fake.server.server.force_exit = True
                fake.server.stop()
    assert chunks < 40
