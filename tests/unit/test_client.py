"""The Python client (`clients/python`) against the real gateway in front of the fake
vLLM: the same calls blocking and asyncio, typed answers and errors, the admin
namespace, retries that honour Retry-After, and the configured openai SDK."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest
from adaptserve_client import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Classification,
    Client,
    ConflictError,
    Generation,
    NotFoundError,
    RateLimitError,
)
from adaptserve_client.errors import APIConnectionError, APIStatusError, InternalServerError

from adaptserve.bench.fake_engine import FakeState
from tests.helpers import ADMIN_KEY, API_KEY, CONTACT, SENTIMENT, RunningGateway, make_adapter


@pytest.fixture
def gateway(start_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    gw = start_gateway()
    with Client(gw.url, ADMIN_KEY) as admin:
        admin.admin.templates.apply("sent", SENTIMENT)
        admin.admin.templates.apply("contact", CONTACT)
    return gw


def test_blocking_and_async_clients_give_the_same_typed_answers(gateway: RunningGateway, fake: FakeState) -> None:
    fake.json_reply = {"email": "kim@example.com"}
    texts = ["positive positive", "negative negative", "positive"]
    with Client(gateway.url + "/v1", API_KEY) as client:  # with or without /v1
        listed = {t.name: t.kind for t in client.templates.list()}
        described = client.templates.get("sent")
        one = client.classify("sent", text="positive positive")
        batch = client.templates.run_batch("sent", [{"text": t} for t in texts], explain=True)
        extracted = client.generate("contact", message="Kim, kim@example.com")

    async def same_calls() -> tuple:
        async with AsyncClient(gateway.url, API_KEY) as client:
            return (
                await client.classify("sent", text="positive positive"),
                await client.templates.run_batch("sent", [{"text": t} for t in texts], explain=True),
                await client.generate("contact", message="Kim, kim@example.com"),
            )

    assert listed == {"sent": "classify", "contact": "generate"}
    assert described.labels == ["negative", "positive"] and described.inputs["required"] == ["text"]
    assert isinstance(one, Classification) and one.label == "positive" and one.version == 1
    assert one.confidence == pytest.approx(max(one.scores.values())) and sum(one.scores.values()) == pytest.approx(1)
    assert one.usage.prompt_tokens > 0 and one.usage.total_tokens == one.usage.prompt_tokens + 1
    assert [r.label for r in batch] == ["positive", "negative", "positive"] and batch[0].explain["logprobs"]
    assert isinstance(extracted, Generation) and extracted.output == {"email": "kim@example.com"}
    assert asyncio.run(same_calls()) == (one, batch, extracted)  # one definition, two transports


def test_errors_are_typed_and_carry_the_openai_fields(gateway: RunningGateway, fake: FakeState) -> None:
    with Client(gateway.url, API_KEY) as client:
        with pytest.raises(NotFoundError) as missing:
            client.classify("nope", text="x")
        with pytest.raises(BadRequestError) as bad:
            client.classify("sent", txt="x")
        with pytest.raises(Exception, match="not a generation template"):
            client.generate("sent", text="x")
        fake.json_reply = {"phone": "123"}  # does not match the schema: this item fails, not the batch
        mixed = client.templates.run_batch("contact", [{"message": "a"}])
    with Client(gateway.url, "sk-wrong") as stranger, pytest.raises(AuthenticationError) as denied:
        stranger.templates.list()
    assert missing.value.status == 404 and missing.value.code == "template_not_found"
    assert bad.value.status == 400 and bad.value.param is not None and "txt" in bad.value.message
    assert denied.value.code == "invalid_api_key" and denied.value.type == "invalid_request_error"
    assert isinstance(mixed[0], APIStatusError) and mixed[0].code == "invalid_output"


def test_admin_namespace_sets_up_a_tenant_end_to_end(gateway: RunningGateway, fake: FakeState, tmp_path) -> None:
    with Client(gateway.url, ADMIN_KEY) as admin:
        admin.admin.tenants.create("acme")
        key = admin.admin.keys.create("acme")["key"]
        stored = admin.admin.adapters.push(make_adapter(tmp_path / "s1", seed=3), "support")
        admin.admin.aliases.set("acme", "helper", adapter="support")
        admin.admin.templates.apply("sent", SENTIMENT | {"model": "helper"}, tenant="acme")
        admin.admin.tenants.set_quotas("acme", requests_per_minute=100)
        with pytest.raises(ConflictError):
            admin.admin.adapters.delete("support")  # acme's alias uses it
        assert [a["alias"] for a in admin.admin.aliases.list("acme")] == ["helper"]
        assert stored["version"] in {v["version"] for v in admin.admin.adapters.get("support")["versions"]}
    with Client(gateway.url, key) as tenant:
        reply = tenant.openai.chat.completions.create(model="helper", messages=[{"role": "user", "content": "hi"}])
        assert fake.requests[-1]["model"] == f"support--{stored['version']}" and reply.model == "helper"
        assert tenant.classify("sent", text="positive").label == "positive"  # acme's own copy, on its adapter
        assert fake.requests[-1]["model"] == f"support--{stored['version']}"
        rows = tenant.usage()
        with pytest.raises(AuthenticationError):
            tenant.admin.tenants.list()  # a tenant key is not an admin key
    assert {(r.model, r.template) for r in rows} == {("helper", None), ("helper", "sent")}
    assert all(r.requests >= 1 and r.prompt_tokens > 0 for r in rows)


def flaky(statuses: list[int], retry_after: str | None, seen: list[float]) -> httpx.MockTransport:
    """Answers each status in turn, then a template list."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(time.monotonic())
        if len(seen) <= len(statuses):
            headers = {"retry-after": retry_after} if retry_after is not None else {}
            error = {"error": {"message": "busy", "type": "rate_limit_error", "param": None, "code": "busy"}}
            return httpx.Response(statuses[len(seen) - 1], headers=headers, json=error)
        return httpx.Response(200, json={"object": "list", "data": []})

    return httpx.MockTransport(handle)


def test_retries_honour_retry_after_and_give_up_when_told_to_wait_too_long() -> None:
    seen: list[float] = []
    with Client("http://x", "k", transport=flaky([429, 503], "0.3", seen)) as client:
        assert client.templates.list() == []
    assert len(seen) == 3 and seen[1] - seen[0] >= 0.3 and seen[2] - seen[1] >= 0.3
    seen.clear()
    with Client("http://x", "k", transport=flaky([429], "3600", seen)) as client, pytest.raises(RateLimitError) as e:
        client.templates.list()
    assert len(seen) == 1 and e.value.retry_after == 3600  # not waited for an hour: raised with the hint
    seen.clear()
    client = Client("http://x", "k", max_retries=1, transport=flaky([503, 503], "0", seen))
    with client, pytest.raises(InternalServerError):
        client.templates.list()
    assert len(seen) == 2
    seen.clear()

    async def async_retry() -> list:
        async with AsyncClient("http://x", "k", transport=flaky([503], None, seen)) as client:
            return await client.templates.list()

    assert asyncio.run(async_retry()) == [] and len(seen) == 2  # no Retry-After: back-off


def test_a_server_that_is_not_there_is_a_connection_error() -> None:
    with Client("http://127.0.0.1:9", "k", max_retries=1, timeout=2) as client, pytest.raises(APIConnectionError):
        client.templates.list()


def test_the_openai_sdk_gets_the_clients_timeouts_as_its_own_type() -> None:
    """openai 3 runs on httpx2, which cannot read an `httpx.Timeout`: the SDK must be handed
    plain seconds in its own `openai.Timeout`, whichever form the client was given."""
    import openai

    for given, connect, read in [(None, 5.0, 60.0), (7.5, 7.5, 7.5), (httpx.Timeout(30.0, connect=2.0), 2.0, 30.0)]:
        with Client("http://x", "k", timeout=given) as client:
            timeout = client.openai.timeout
            assert isinstance(timeout, openai.Timeout)
            assert (timeout.connect, timeout.read, timeout.write, timeout.pool) == (connect, read, read, read)

    async def async_timeout() -> object:
        async with AsyncClient("http://x", "k", timeout=9.0) as client:
            return client.openai.timeout

    assert asyncio.run(async_timeout()).read == 9.0  # type: ignore[attr-defined]
