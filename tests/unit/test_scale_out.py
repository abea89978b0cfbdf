"""Several replicas behind one gateway: a replica that fails before answering is passed
over (retried once elsewhere), a restarted one gets its adapters back before it takes
traffic, replicas follow DNS, the pool's state shows in the metrics, and requests are
held to the smallest context the replicas in service report."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import httpx
import pydantic
import pytest

from adaptserve.bench.fake_engine import BASE, create_fake_vllm
from adaptserve.config import Settings
from adaptserve.errors import UpstreamUnavailableError
from adaptserve.serving.picker import rendezvous
from adaptserve.upstream.client import ModelList, State, Upstream
from adaptserve.upstream.discovery import Discovery
from adaptserve.upstream.pool import PoolTiming, UpstreamPool
from tests.helpers import (
    API_KEY,
    ServerThread,
    assert_openai_error,
    gateway_metric,
    new_tenant,
    upload,
    usage,
    wait_for,
    wait_for_usage,
)

Q = [{"role": "user", "content": "hello there"}]


def two_replicas(start_gateway, fake, second_fake, **settings):
    gw = start_gateway(upstreams=[fake.url, second_fake.url], base_via_zero_adapter=False, **settings)
    wait_for(lambda: gateway_metric(gw, "adaptserve_upstream_up") == 2)
    return gw


def test_a_replica_that_fails_before_answering_is_passed_over(start_gateway, fake, second_fake) -> None:
    gw = two_replicas(start_gateway, fake, second_fake, health_interval_s=60)  # no probe notices in this test
    body = {"model": "default", "messages": Q, "max_tokens": 4}
    ranked = rendezvous("", [Upstream(fake.url, 1.0), Upstream(second_fake.url, 1.0)])
    first = fake if ranked[0].url == fake.url else second_fake  # where idle base traffic goes first
    first.unavailable_next = 4  # answers 503: it took none of them
    for stream in (False, True, False, True):
        assert gw.post("/v1/chat/completions", body | {"stream": stream}).status_code == 200
    assert gateway_metric(gw, "adaptserve_upstream_retries_total") == 4 and first.unavailable_next == 0

    first.server.stop()  # refused: the health probe has not seen it yet
    answers = [gw.post("/v1/chat/completions", body).status_code for _ in range(6)]
    assert answers == [200] * 6
    assert gateway_metric(gw, "adaptserve_upstream_up") == 1  # a refused connection took it out at once


def test_with_one_replica_a_failure_is_the_clients_answer(start_gateway, fake) -> None:
    gw = start_gateway(base_via_zero_adapter=False)
    fake.fail_next = 1
    response = gw.post("/v1/chat/completions", {"model": "default", "messages": Q})
    assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_error"
    assert gateway_metric(gw, "adaptserve_upstream_retries_total") == 0


def test_a_restarted_replica_gets_its_adapters_back_before_their_traffic(
    start_gateway, fake, second_fake, adapters
) -> None:
    gw = two_replicas(start_gateway, fake, second_fake)
    assert upload(gw, "alpha", adapters["alpha"]).status_code == 201  # loaded on demand, not at start-up
    assert gw.admin("PUT", "/tenants/default/models/alpha", json={"adapter": "alpha"}).status_code == 200
    assert gw.post("/v1/chat/completions", {"model": "alpha", "messages": Q}).status_code == 200
    holder = next(f for f in (fake, second_fake) if any(n.startswith("alpha--") for n in f.loaded))

    holder.server.stop()
    wait_for(lambda: gateway_metric(gw, "adaptserve_upstream_up") == 1)
    holder.restart()  # a new engine process: it knows no adapters
    holder.requests.clear()
    holder.server = ServerThread(create_fake_vllm(holder), port=holder.server.port).start()
    wait_for(lambda: gateway_metric(gw, "adaptserve_upstream_up") == 2)
    assert any(n.startswith("alpha--") for n in holder.loaded)  # placed before it took traffic
    assert not holder.requests  # and before any request reached it
    assert gateway_metric(gw, "adaptserve_upstream_restarts_total", upstream=holder.url) == 1


def test_a_replica_that_comes_back_unchanged_keeps_its_adapters(start_gateway, fake, adapters) -> None:
    """A probe flap (a busy engine) is not a restart: its engine still lists them."""
    gw = start_gateway(adapters=adapters, health_failures=1)
    loads = len(fake.load_calls)
    fake.healthy = False
    wait_for(lambda: httpx.get(gw.url + "/ready").status_code == 503)
    fake.healthy = True
    gw.wait_ready()
    assert len(fake.load_calls) == loads  # nothing loaded again
    assert gateway_metric(gw, "adaptserve_upstream_restarts_total") == 0
    assert gw.client().chat.completions.create(model="alpha", messages=Q).model == "alpha"


def test_quota_rejections_and_time_to_first_token_are_counted(start_gateway, fake) -> None:
    gw = start_gateway(base_via_zero_adapter=False)
    assert gw.admin("PUT", "/tenants/default/quotas", json={"requests_per_minute": 1}).status_code == 200
    body = {"model": "default", "messages": Q, "stream": True}
    assert gw.post("/v1/chat/completions", body, key=API_KEY).status_code == 200
    assert gw.post("/v1/chat/completions", body, key=API_KEY).status_code == 429
    assert gateway_metric(gw, "adaptserve_quota_rejections_total", tenant="default", limit="requests_per_minute") == 1
    assert gateway_metric(gw, "adaptserve_time_to_first_token_seconds_count", tenant="default") == 1


class Listed(Discovery):
    """DNS answers the test sets."""

    answers: list[list[str] | None]

    async def resolve(self) -> list[str] | None:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def test_the_pool_follows_dns_as_replicas_come_and_go(fake, second_fake) -> None:
    came_up: list[str] = []

    async def on_up(upstream: Upstream, ready: list[Upstream]) -> None:
        came_up.append(upstream.url)

    async def scenario() -> None:
        discovery = Listed("http://engines:8000", 0.05, lambda url: Upstream(url, 5.0))
        discovery.answers = [[fake.url]]
        pool = UpstreamPool([], on_up, PoolTiming(interval_s=0.05), discovery)
        pool.start()
        try:
            await _until(lambda: [u.url for u in pool.ready_upstreams()] == [fake.url])
            discovery.answers = [None, [fake.url, second_fake.url]]  # a failed lookup changes nothing
            await _until(lambda: len(pool.ready_upstreams()) == 2)
            gone = pool.upstreams[0]
            discovery.answers = [[second_fake.url]]
            await _until(lambda: [u.url for u in pool.upstreams] == [second_fake.url])
            assert gone.state is State.DOWN and pool.ready()
            assert came_up == [fake.url, second_fake.url]
        finally:
            await pool.stop()

    asyncio.run(scenario())


async def _until(check, timeout_s: float = 30.0) -> None:  # a loaded machine's probes can be slow
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0.02)


def test_dns_names_resolve_to_one_url_per_address() -> None:
    async def resolve(url: str) -> list[str] | None:
        return await Discovery(url, 1.0, lambda u: Upstream(u, 5.0)).resolve()

    found = asyncio.run(resolve("http://localhost:8123"))
    assert found is not None and "http://127.0.0.1:8123" in found
    assert all(re.fullmatch(r"http://(\d+\.\d+\.\d+\.\d+|\[[0-9a-f:]+\]):8123", u) for u in found)
    assert asyncio.run(resolve("http://no-such-host.invalid:8000")) is None


def test_upstream_settings_are_checked_at_start() -> None:
    with pytest.raises(pydantic.ValidationError, match="upstream_dns needs a URL"):
        Settings(upstream_dns="vllm-engines:8000")
    with pytest.raises(pydantic.ValidationError, match="not both"):
        Settings(upstream_dns="http://vllm-engines:8000", upstreams=["http://a:8000"])
    assert Settings(upstream_dns="http://vllm-engines:8000/").upstream_dns == "http://vllm-engines:8000"


def test_a_4xx_from_a_replica_is_the_clients_answer_not_retried(start_gateway, fake, second_fake) -> None:
    gw = two_replicas(start_gateway, fake, second_fake)
    long = [{"role": "user", "content": "word " * 70}]  # over the fake engine's 64-word context
    response = gw.post("/v1/chat/completions", {"model": "default", "messages": long})
    assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"
    assert gateway_metric(gw, "adaptserve_upstream_retries_total") == 0


def test_an_upstream_that_left_answers_unavailable_not_a_crash(fake) -> None:
    """A request that picked a replica just before DNS took it away is retried elsewhere."""

    async def scenario() -> None:
        upstream = Upstream(fake.url, 5.0)
        await upstream.aclose()
        with pytest.raises(UpstreamUnavailableError):
            await upstream.post_json("/v1/chat/completions", {"model": BASE, "messages": Q})
        with pytest.raises(UpstreamUnavailableError):
            await upstream.load_adapter("x--v1", "/nowhere")

    asyncio.run(scenario())


def first_for_base(fake, second_fake):
    """The replica idle base traffic goes to first (the rendezvous order breaks the tie)."""
    ranked = rendezvous("", [Upstream(fake.url, 1.0), Upstream(second_fake.url, 1.0)])
    return (fake, second_fake) if ranked[0].url == fake.url else (second_fake, fake)


def reservation(max_tokens: int) -> tuple[int, int]:
    """What a chat of Q reserves: its prompt's bound (the JSON's bytes) and max_tokens."""
    return len(json.dumps({"messages": Q}).encode()), max_tokens


def test_a_request_a_replica_refuses_is_not_replayed_on_another(start_gateway, fake, second_fake) -> None:
    gw = two_replicas(start_gateway, fake, second_fake)
    first, other = first_for_base(fake, second_fake)
    first.refuse_next = "this request is malformed"  # 400: the request's own fault
    response = gw.post("/v1/chat/completions", {"model": "default", "messages": Q, "max_tokens": 4})
    assert response.status_code == 400
    assert (len(first.requests), len(other.requests)) == (1, 0)
    assert gateway_metric(gw, "adaptserve_upstream_retries_total") == 0


def test_a_request_an_engine_failed_on_is_not_replayed_and_is_charged(start_gateway, fake, second_fake) -> None:
    """A 500 is the engine failing on this request (a request that crashes one engine
    would crash the next): the client's answer, charged its reservation like a give-up."""
    gw = two_replicas(start_gateway, fake, second_fake)
    key = new_tenant(gw, "crasher", {"base": True}, alias="default").api_key
    assert gw.admin("PUT", "/tenants/crasher/pii", json={"mode": "off"}).status_code == 200  # no scrubbing to wait for
    first, other = first_for_base(fake, second_fake)
    first.fail_next = 1
    response = gw.post("/v1/chat/completions", {"model": "default", "messages": Q, "max_tokens": 4}, key=key)
    assert response.status_code == 502
    assert (len(first.requests), len(other.requests)) == (1, 0)
    assert gateway_metric(gw, "adaptserve_upstream_retries_total") == 0
    [row] = wait_for_usage(gw, key)
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (1, *reservation(4))


def test_a_retried_request_is_metered_for_each_attempt_that_reached_an_engine(start_gateway, fake, second_fake) -> None:
    """The first engine drops the connection after reading the request (it died on it,
    or under it): the request is retried on the other, and the tenant is charged the
    dropped attempt's reservation (vLLM never said what it did) plus the answer's usage."""
    gw = two_replicas(start_gateway, fake, second_fake, health_interval_s=60)
    key = new_tenant(gw, "unlucky", {"base": True}, alias="default").api_key
    first, other = first_for_base(fake, second_fake)
    first.drop_next = 1
    response = gw.post("/v1/chat/completions", {"model": "default", "messages": Q, "max_tokens": 4}, key=key)
    assert response.status_code == 200, response.text
    assert (len(first.requests), len(other.requests)) == (1, 1)
    assert gateway_metric(gw, "adaptserve_upstream_retries_total") == 1
    answered = response.json()["usage"]
    [row] = wait_for_usage(gw, key)
    prompt, completion = reservation(4)
    expected = (1, prompt + answered["prompt_tokens"], completion + answered["completion_tokens"])
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == expected
    assert usage(gw, key) == [row]


CHAT = "/v1/chat/completions"


def test_requests_are_held_to_the_context_the_engine_reports(start_gateway, fake, caplog) -> None:
    """The setting says 2048, the engine 512: over 512 is the same 400 an engine's own
    refusal gives (`test_errors.py`, "over the context"), before anything reaches it."""
    fake.max_model_len = 512
    with caplog.at_level(logging.WARNING, logger="adaptserve.server.backends"):
        gw = start_gateway(health_failures=1)  # vllm.max_model_len: 2048, the default
        assert gw.settings.vllm.max_model_len == 2048
        fake.requests.clear()
        refused = gw.post(CHAT, {"model": "default", "messages": Q, "max_tokens": 600})
        assert_openai_error(refused, 400, "context_length_exceeded", "max_tokens")
        ids = {"model": "default", "prompt": list(range(10, 40))}  # 30 token ids: counted exactly
        assert_openai_error(
            gw.post("/v1/completions", ids | {"max_tokens": 490}), 400, "context_length_exceeded", "max_tokens"
        )
        assert fake.requests == []  # the gateway refused them itself
        assert gw.post(CHAT, {"model": "default", "messages": Q, "max_tokens": 500}).status_code == 200
        assert gw.post("/v1/completions", ids | {"max_tokens": 480}).status_code == 200

        fake.healthy = False  # down and up again: the disagreement is not logged twice
        wait_for(lambda: httpx.get(gw.url + "/ready").status_code == 503)
        fake.healthy = True
        gw.wait_ready()
    warnings = [r for r in caplog.records if "reports a context of 512" in r.getMessage()]
    assert len(warnings) == 1 and "2048" in warnings[0].getMessage()


def test_an_engine_that_does_not_say_is_held_to_the_setting(start_gateway, fake) -> None:
    gw = start_gateway(vllm={"max_model_len": 512})  # the fake's cards carry no max_model_len
    fake.requests.clear()
    body = {"model": "default", "messages": Q, "max_tokens": 600}
    assert_openai_error(gw.post(CHAT, body), 400, "context_length_exceeded", "max_tokens")
    assert fake.requests == []
    assert gw.post(CHAT, body | {"max_tokens": 500}).status_code == 200


def test_the_smallest_context_in_service_bounds_requests(start_gateway, fake, second_fake) -> None:
    fake.max_model_len, second_fake.max_model_len = 512, 1024
    gw = two_replicas(start_gateway, fake, second_fake, health_failures=1)
    body = {"model": "default", "messages": Q, "max_tokens": 600}
    assert_openai_error(gw.post(CHAT, body), 400, "context_length_exceeded", "max_tokens")
    fake.healthy = False  # the 512 engine leaves: the 1024 one alone is in service
    wait_for(lambda: gateway_metric(gw, "adaptserve_upstream_up") == 1)
    assert gw.post(CHAT, body).status_code == 200
    assert_openai_error(gw.post(CHAT, body | {"max_tokens": 1100}), 400, "context_length_exceeded", "max_tokens")


def test_the_context_is_the_smallest_the_model_cards_state() -> None:
    cards = [{"id": "base", "max_model_len": 4096}, {"id": "a1", "max_model_len": 2048}, {"id": "a2"}]
    assert ModelList.parse({"data": cards}) == ModelList(frozenset({"base", "a1", "a2"}), 2048)
    assert ModelList.parse({"data": [{"id": "base"}]}).max_model_len is None
    assert ModelList.parse({"data": [{"id": "base", "max_model_len": True}]}).max_model_len is None
