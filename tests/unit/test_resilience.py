"""Upstream faults: down and back, lost adapters, refused adapters, broken and
abandoned streams."""

from __future__ import annotations

import asyncio
import logging

import httpx
import openai
import pytest

from adaptserve.bench.fake_engine import create_fake_vllm
from adaptserve.errors import UpstreamUnavailableError
from adaptserve.upstream.client import KEEPALIVE_EXPIRY_S, State, Upstream
from tests.helpers import ServerThread, make_adapter, wait_for

QUESTION = [{"role": "user", "content": "hello there"}]


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


def test_a_busy_upstream_is_not_down_until_its_probes_fail_in_a_row(start_gateway, fake, caplog):
    """A slow or failing /health (an engine busy on a loaded machine) is counted, and
    the upstream stays in service until `health_failures` probes in a row failed; a
    refused connection (no server there) takes it out at once."""
    gw = start_gateway(health_failures=4)
    with caplog.at_level(logging.WARNING, logger="adaptserve.upstream.pool"):
        probes = fake.health_calls
        fake.healthy = False
        wait_for(lambda: httpx.get(gw.url + "/ready").status_code == 503)
        failed = fake.health_calls - probes
        # Down at the 4th: the three warnings before it say so exactly. Probes go on every
        # 0.5 s while down, and a loaded machine may take a while to look, hence the room above.
        assert 4 <= failed <= 8, failed
        assert len([r for r in caplog.records if "failed a health probe" in r.message]) == 3
        fake.healthy = True
        gw.wait_ready()
        assert gw.client().chat.completions.create(model="default", messages=QUESTION).choices

        caplog.clear()
        fake.server.stop()  # refused: down at the first probe, with no probe counted first
        wait_for(lambda: httpx.get(gw.url + "/ready").status_code == 503)
        assert not [r for r in caplog.records if "failed a health probe" in r.message]


def unsent_then_answered(failures: int, calls: list[int]) -> httpx.MockTransport:
    """A transport whose first `failures` sends die writing the request (a pooled
    connection the server had just closed), then answers."""

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) <= failures:
            raise httpx.WriteError("[Errno 32] Broken pipe")
        return httpx.Response(200, json={"id": "ok"})

    return httpx.MockTransport(handle)


def test_a_request_lost_on_a_closing_pooled_connection_is_sent_once_more():
    """vLLM closes connections idle for 5 s; the gateway's pool lets them go at 2 s, and a
    request that still dies before the server read it is sent again, not answered 503."""
    assert KEEPALIVE_EXPIRY_S < 5

    async def scenario(failures: int) -> tuple[Upstream, list[int], object]:
        calls: list[int] = []
        upstream = Upstream("http://engine", 5.0, transport=unsent_then_answered(failures, calls))
        upstream.state = State.READY
        try:
            answer: object = await upstream.post_json("/v1/chat/completions", {"model": "m"})
        except UpstreamUnavailableError as exc:
            answer = exc
        finally:
            await upstream.aclose()
        return upstream, calls, answer

    upstream, calls, answer = asyncio.run(scenario(1))
    assert answer == {"id": "ok"} and len(calls) == 2
    assert upstream.state is State.READY and upstream.inflight == 0
    upstream, calls, answer = asyncio.run(scenario(2))  # twice in a row: the engine is not there
    assert isinstance(answer, UpstreamUnavailableError) and len(calls) == 2 and upstream.state is State.DOWN

    async def load() -> tuple[Upstream, list[int]]:  # an adapter load takes the same path
        calls: list[int] = []
        upstream = Upstream("http://engine", 5.0, transport=unsent_then_answered(1, calls))
        upstream.state = State.READY
        try:
            await upstream.load_adapter("alpha", "/adapters/alpha")
        finally:
            await upstream.aclose()
        return upstream, calls

    upstream, calls = asyncio.run(load())
    assert len(calls) == 2 and upstream.state is State.READY


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
    # Held back for a while, not gone: listed, and 503 + Retry-After (a 404 is final to clients).
    assert {m.id for m in gw.client().models.list()} == {"tiny-base", "default", "alpha", "beta"}
    with pytest.raises(openai.InternalServerError) as held:
        gw.client().chat.completions.create(model="beta", messages=QUESTION)
    assert held.value.status_code == 503 and int(held.value.response.headers["Retry-After"]) >= 1
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
    # The count is what tells an aborted stream from one left to run out (200 tokens, 10 s),
    # so the wait may leave a loaded machine room.
    wait_for(lambda: fake.streams_open == 0, timeout_s=30)
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
