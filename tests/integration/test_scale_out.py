"""Scale-out against real engines: an engine's /metrics give the picker its queue, its
/v1/models tell placement what it holds, a gateway finds it through DNS, two gateway
processes on one PostgreSQL enforce one tenant quota together, and a gateway in front
of two engines loses no non-streamed request when one is killed under load, which gets
its adapters back before their traffic when it returns. The killed engine's own gateway
ends its stream in flight with an error event (not metered), answers 503 with
Retry-After and fails /ready while it is down, and serves the same answers once its
supervisor has restarted it. A gateway whose `models:` names the session's engine as a
generate model (a second LLM base) answers through it as the base model does, and
serves an adapter pushed for it on it."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import openai
import pytest
import yaml

from adaptserve.default_model import DEFAULT_MODEL_NAME
from adaptserve.upstream.client import Upstream
from tests.helpers import (
    API_KEY,
    MAX_LORAS,
    chat,
    gateway_metric,
    new_tenant,
    running_server,
    tar_gz,
    upload,
    wait_for,
)

PROMPT = "What is the capital of France?"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def scrape(url: str) -> Upstream:
    async def run() -> Upstream:
        upstream = Upstream(url, 30.0)
        await upstream.scrape()
        await upstream.aclose()
        return upstream

    return asyncio.run(run())


def listed(url: str) -> set[str]:
    async def run() -> set[str]:
        upstream = Upstream(url, 30.0)
        try:
            return set((await upstream.listed_models()).names)
        finally:
            await upstream.aclose()

    return asyncio.run(run())


def test_the_engines_metrics_show_its_requests_and_its_models_list_its_adapters(server):
    assert {"a1", "a2", "a3"} <= {name.split("--")[0] for name in listed(server.vllm_url())}  # start-up adapters
    done = threading.Event()

    def long_stream() -> None:
        stream = server.client().chat.completions.create(
            model="a1",
            messages=[{"role": "user", "content": "Count slowly."}],
            max_tokens=400,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        for _ in stream:
            if done.is_set():
                break
        stream.close()

    reader = threading.Thread(target=long_stream)
    reader.start()
    try:
        wait_for(lambda: scrape(server.vllm_url()).engine.running >= 1, 60, "the engine never reported it running")
        engine = scrape(server.vllm_url()).engine
        assert 0.0 <= engine.kv_cache <= 1.0
        assert engine.max_loras == MAX_LORAS  # vllm:lora_requests_info: the batch's adapters
        assert [name.split("--")[0] for name in engine.running_adapters] == ["a1"]
    finally:
        done.set()
        reader.join(timeout=120)
    wait_for(lambda: scrape(server.vllm_url()).engine.running == 0, 60, "the aborted stream stayed running")


def test_a_gateway_finds_the_engine_through_dns_and_serves_through_it(server, base_model, adapter_dirs, tmp_path):
    port = server.vllm_url().rsplit(":", 1)[1]
    args = ["--upstream-dns", f"http://localhost:{port}", "--model", str(base_model)]
    with running_server(tmp_path / "dns", args) as gateway:
        assert "Paris" in chat(gateway.client(), "default", "What is the capital of France?")
        assert upload(gateway, "dnsad", adapter_dirs["a2"]).status_code == 201
        client = new_tenant(gateway, "dnstenant", {"adapter": "dnsad"}, alias="m")
        assert chat(client, "m", "Say hi.")
        assert gateway_metric(gateway, "adaptserve_upstream_up", upstream=f"http://127.0.0.1:{port}") == 1
    assert "discovered upstream http://127.0.0.1:" in gateway.log()


def test_a_generate_model_of_models_answers_as_the_base_model(server, base_model, tmp_path):
    """`models:` role generate, remote: the session's engine under the name it serves. The
    openai SDK's chat (streamed and not) and completions through it get the base alias's
    greedy text, under the entry's name, metered as it."""
    entry = {"name": "llm2", "role": "generate", "upstreams": [server.vllm_url()]}
    config = tmp_path / "llm2.yaml"
    config.write_text(yaml.safe_dump({"models": [entry | {"served_model_name": DEFAULT_MODEL_NAME}]}))
    args = ["--upstream", server.vllm_url(), "--model", str(base_model), "--config", str(config)]
    with running_server(tmp_path / "llm2", args) as gateway:
        ours, base = gateway.client(), server.client()
        assert "llm2" in {m.id for m in ours.models.list()}
        messages = [{"role": "user", "content": PROMPT}]
        want = chat(base, "default", PROMPT, max_tokens=16)
        assert "Paris" in want and chat(ours, "llm2", PROMPT, max_tokens=16) == want
        with ours.chat.completions.create(
            model="llm2", messages=messages, max_tokens=16, temperature=0, stream=True
        ) as chunks:
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
        prompt = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
        done = ours.completions.create(model="llm2", **prompt)
        assert (
            done.model == "llm2"
            and done.choices[0].text == base.completions.create(model="default", **prompt).choices[0].text
        )

        # A stream is counted when the gateway's relay has finished with it, which can be a
        # moment after the client read its last chunk: wait for the three, then no more.
        def served() -> float:
            return gateway_metric(gateway, "adaptserve_requests_total", model="llm2", status="200")

        wait_for(lambda: served() >= 3, what="the three requests were never all counted under llm2")
        assert served() == 3 and gateway_metric(gateway, "adaptserve_upstream_up", model="llm2") == 1


def test_an_adapter_pushed_for_a_generate_model_answers_on_its_engine(server, base_model, adapter_dirs, tmp_path):
    """`models:` role generate with `adapters: true`, remote: the session's engine (LoRA
    enabled) under the name it serves. One adapter pushed twice, for the entry (`base`)
    and for the base model: the openai SDK's greedy answer through the entry's alias is
    the base model's alias's, and not the entry's own plain answer. The same weights as a
    settings-file adapter of the entry (`{path, base}`): loaded on its engine before the
    gateway is ready, and its default alias answers the same."""
    entry = {"name": "llm2", "role": "generate", "adapters": True, "upstreams": [server.vllm_url()]}
    config = tmp_path / "llm2.yaml"
    settings_adapter = {"set2": {"path": str(adapter_dirs["a4"]), "base": "llm2"}}
    config.write_text(
        yaml.safe_dump({"models": [entry | {"served_model_name": DEFAULT_MODEL_NAME}], "adapters": settings_adapter})
    )
    args = ["--upstream", server.vllm_url(), "--model", str(base_model), "--config", str(config)]
    files = {"file": ("a4.tar.gz", tar_gz(adapter_dirs["a4"]))}
    with running_server(tmp_path / "llm2a", args) as gateway:
        assert any(n.startswith("set2--") for n in listed(server.vllm_url())), gateway.troubles()
        pushed = gateway.admin("POST", "/adapters", data={"name": "tone", "base": "llm2"}, files=files)
        assert pushed.status_code == 201 and pushed.json()["base"] == "llm2", pushed.text
        assert gateway.admin("POST", "/adapters", data={"name": "tone0"}, files=files).status_code == 201
        for alias, adapter in (("toned", "tone"), ("toned0", "tone0")):
            pointed = gateway.admin("PUT", f"/tenants/default/models/{alias}", json={"adapter": adapter})
            assert pointed.status_code == 200
        ours = gateway.client()
        prompt = "Write one sentence about the sea."
        want = chat(ours, "toned0", prompt, max_tokens=16)
        assert chat(ours, "toned", prompt, max_tokens=16) == want
        assert chat(ours, "llm2", prompt, max_tokens=16) != want
        assert f"tone--{pushed.json()['version']}" in listed(server.vllm_url())
        assert gateway_metric(gateway, "adaptserve_requests_total", model="toned", status="200") == 1
        assert chat(ours, "set2", prompt, max_tokens=16) == want
        assert gateway.admin("GET", "/adapters/set2").json()["base"] == "llm2"
        for alias, adapter in (("toned", "tone"), ("toned0", "tone0"), ("set2", "set2")):  # the engine as it was
            assert gateway.admin("DELETE", f"/tenants/default/models/{alias}").status_code == 204
            assert gateway.admin("DELETE", f"/adapters/{adapter}").status_code == 204


def test_two_gateways_on_postgresql_share_a_tenants_quota(server, base_model, tmp_path):
    url = os.environ.get("ADAPTSERVE_TEST_DATABASE_URL")
    if not url:
        pytest.skip("no PostgreSQL server given (scripts/test-postgres.sh starts one; CI does)")
    config = tmp_path / "shared.yaml"
    config.write_text(yaml.safe_dump({"database_url": url, "quota_sync_interval_s": 0.2}))
    args = ["--upstream", server.vllm_url(), "--model", str(base_model), "--config", str(config)]
    with running_server(tmp_path / "one", args) as one, running_server(tmp_path / "two", args) as two:
        one.admin("POST", "/tenants", json={"name": "pgshared"})
        one.admin("PUT", "/tenants/pgshared/models/chat", json={"base": True})
        assert one.admin("PUT", "/tenants/pgshared/quotas", json={"requests_per_minute": 6}).status_code == 200
        key = one.admin("POST", "/tenants/pgshared/keys").json()["key"]
        admitted = 0
        for i in range(12):
            try:
                chat((one, two)[i % 2].client(api_key=key), "chat", "Say hi.", max_tokens=4)
                admitted += 1
            except openai.RateLimitError:
                pass
            time.sleep(0.3)
        # Each alone would admit 6 (12 in all); together the bound is one sync of the other's traffic.
        assert 6 <= admitted <= 7, admitted


def test_a_killed_engine_loses_no_request_and_gets_its_adapters_back(server, base_model, adapter_dirs, tmp_path):
    """Two engines (the session's and one more, with its own gateway), one gateway in
    front of both. The second engine is killed under load, with a stream of its own
    gateway's in flight."""
    engine = tmp_path / "engine.yaml"
    engine.write_text(yaml.safe_dump({"vllm": {"max_loras": 2, "max_lora_rank": 16, "kv_cache_gib": 1}}))
    with running_server(tmp_path / "second", ["--model", str(base_model), "--config", str(engine)]) as second:
        urls = [server.vllm_url(), second.vllm_url()]
        args = ["--model", str(base_model), "--upstream", urls[0], "--upstream", urls[1]]
        with running_server(tmp_path / "front", args) as front:
            _kill_under_load(front, second, adapter_dirs)


def _kill_under_load(front, second, adapter_dirs) -> None:
    wait_for(lambda: gateway_metric(front, "adaptserve_upstream_up") == 2, 60, "both engines in service")
    for name in ("ka", "kb"):
        assert upload(front, name, adapter_dirs["a1" if name == "ka" else "a2"]).status_code == 201
    client = new_tenant(front, "fleet", {"adapter": "ka"}, alias="ka")
    assert front.admin("PUT", "/tenants/fleet/models/kb", json={"adapter": "kb"}).status_code == 200
    assert front.admin("PUT", "/tenants/fleet/models/chat", json={"base": True}).status_code == 200
    calls = [m for m in ("ka", "kb", "chat") for _ in range(8)]
    for model in ("ka", "kb"):  # in use, so placed on a replica that comes up
        chat(client, model, "Say hi.", max_tokens=4)
    before = chat(second.client(), "default", PROMPT)
    # Waited for, not slept (the meter flushes every second, later on a loaded machine).
    wait_for(lambda: _base_requests_metered(second) >= 1, 60, "the base request was never metered")
    metered = _base_requests_metered(second)
    (pid,) = [p for p in second.vllm_pids() if os.getpgid(p) == p]  # its API server, the group's leader
    streaming, ended = _stream_in_flight(second)

    def call(i_model: tuple[int, str]) -> str:
        if i_model[0] == 6:
            assert streaming.wait(120), "the second gateway's stream never started"
            os.kill(pid, signal.SIGKILL)  # under load: requests are in flight on both engines
            _its_own_gateway_says_so(second, ended)
        return chat(client, i_model[1], "Write one sentence about the sea.", max_tokens=16)

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(call, enumerate(calls)))  # any failed request raises here
    assert len(answers) == len(calls) and all(answers)

    killed = second.vllm_url()
    wait_for(lambda: gateway_metric(front, "adaptserve_upstream_up", upstream=killed) == 1, 600, "the engine came back")
    held = {name.split("--")[0] for name in listed(killed)}
    assert {"ka", "kb"} <= held  # placed before it took their traffic (both replicas are their home)
    assert gateway_metric(front, "adaptserve_upstream_restarts_total", upstream=killed) == 1
    second.wait_ready(timeout_s=600)
    assert chat(second.client(), "default", PROMPT) == before and "restarting in" in second.log()
    # The broken stream ended before the engine restarted (its usage, had it been metered,
    # flushed within a second or so of that); this answer's is waited for, then nothing more may be there.
    wait_for(lambda: _base_requests_metered(second) > metered, 60, "the answer was never metered")
    assert _base_requests_metered(second) == metered + 1  # this answer; the broken stream was not metered


def _stream_in_flight(second) -> tuple[threading.Event, Future[str]]:
    """A long stream through the second engine's own gateway, read in a thread: the
    event is set once it is under way, the future says how it ended."""
    streaming = threading.Event()

    def read() -> str:
        stream = second.client().chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "Write a long story."}],
            max_tokens=1500,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        chunks = 0
        try:
            for chunks, _chunk in enumerate(stream, start=1):
                if chunks == 3:
                    streaming.set()
        except openai.APIError as exc:
            return str(exc)
        return f"the stream ended normally after {chunks} chunks"

    reader = ThreadPoolExecutor(1)
    ended = reader.submit(read)
    reader.shutdown(wait=False)  # its thread ends with the stream
    return streaming, ended


def _its_own_gateway_says_so(second, ended: Future[str]) -> None:
    """With its engine just killed: the stream in flight ended with an error event (no
    hang), /ready fails, and a request gets 503 with Retry-After."""
    assert "stopped while streaming" in ended.result(timeout=60)
    wait_for(lambda: httpx.get(second.url + "/ready").status_code == 503, 30, "/ready kept saying ready")
    body = {"model": "default", "messages": [{"role": "user", "content": PROMPT}]}
    response = httpx.post(second.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=30)
    assert response.status_code == 503 and int(response.headers["Retry-After"]) > 0
    assert response.json()["error"]["code"] == "upstream_unavailable"


def _base_requests_metered(gateway) -> int:
    rows = gateway.admin("GET", "/usage", params={"tenant": "default"}).json()["data"]
    return sum(r["requests"] for r in rows if r["model"] == "default" and not r["template"])
