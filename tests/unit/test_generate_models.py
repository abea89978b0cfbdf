"""A second LLM base behind the gateway (`models:` role generate) against fake engines:
the settings and its supervised child's command (the base model's, less LoRA); chat and
completions, streamed and not, sent to its own engine under its served name; tenants,
usage, metrics, `/v1/models`, its own context (worked out where its supervised engine's
is), the 400s where it is named as what it is not (an embedding model, a template's
model, an alias), and the 502 of an engine that stops serving its name."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from adaptserve.bench.fake_engine import BASE, FakeState
from adaptserve.config import Settings
from adaptserve.engine_plugin import ENABLE_ENV
from adaptserve.engine_settings import MINILM, ModelEntry
from adaptserve.serving.engines import Engines
from adaptserve.upstream.supervisor import GenerateSupervisor, Supervisor
from tests.helpers import (
    API_KEY,
    RunningGateway,
    assert_openai_error,
    gateway_metric,
    new_tenant,
    wait_for,
    wait_for_usage,
)

SECOND = "second-llm"  # the name the second fake engine serves (the entry's served_model_name)
HI = [{"role": "user", "content": "hello there"}]


def _entry(engine: FakeState, **extra: Any) -> dict[str, Any]:
    return {"name": "llm2", "role": "generate", "upstreams": [engine.url], "served_model_name": SECOND} | extra


@pytest.fixture
def second_llm(second_fake: FakeState) -> FakeState:
    second_fake.served = [SECOND]
    return second_fake


@pytest.fixture
def gen_gateway(start_gateway: Callable[..., RunningGateway], second_llm: FakeState) -> RunningGateway:
    return start_gateway(models=[_entry(second_llm)])


def _llm_folder(path: Path) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    return path


def _chats(engine: FakeState) -> list[dict[str, Any]]:
    return [r for r in engine.requests if "messages" in r or "prompt" in r]


# -- settings ------------------------------------------------------------------------------
def test_a_generate_entry_is_supervised_or_remote_and_takes_no_labels(tmp_path: Path) -> None:
    remote = ModelEntry(name="llm2", role="generate", upstreams=["http://llm2:8000/"], served_model_name="m")
    assert remote.upstreams == ["http://llm2:8000"] and remote.engine_name == "m"
    with pytest.raises(ValidationError, match=r"give path .* or upstreams"):
        ModelEntry(name="llm2", role="generate")
    with pytest.raises(ValidationError, match="labels are for role classify"):
        ModelEntry(name="llm2", role="generate", upstreams=["http://x:1"], labels=["a", "b"])
    with pytest.raises(ValidationError, match="an LLM's folder"):
        ModelEntry(name="llm2", role="generate", path=MINILM)
    with pytest.raises(ValidationError, match="no digest"):
        ModelEntry(name="llm2", role="generate", upstreams=["http://x:1"], digest="0" * 64)
    with pytest.raises(ValidationError, match="taken"):
        Settings(data_dir=tmp_path, models=[{"name": "default", "role": "generate", "upstreams": ["http://x:1"]}])
    folder = _llm_folder(tmp_path / "llm")
    engines = Engines.build(
        Settings(data_dir=tmp_path, models=[{"name": "llm2", "role": "generate", "path": str(folder)}])
    )
    engine = engines.get("llm2")
    assert engine is not None and isinstance(engine.supervisor, GenerateSupervisor)
    assert engine.context_length() == Settings(data_dir=tmp_path).vllm.max_model_len  # none reported yet


def test_the_supervised_child_is_the_base_models_command_less_lora(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "5")  # the base model's engine's, from the gateway's environment
    vllm = Settings(data_dir=tmp_path, vllm={"block_size": 32, "max_cpu_loras": 8, "extra_args": ["--lora-x"]}).vllm
    base = Supervisor(vllm, tmp_path / "base", "base", tmp_path / "vllm.log")
    entry = ModelEntry(name="llm2", role="generate", path=str(tmp_path / "llm"), kv_cache_gib=3, cpus="2-3")
    child = GenerateSupervisor(vllm, entry, tmp_path / "llm", tmp_path / "vllm-llm2.log")
    command = child.command()
    assert not [arg for arg in command if "lora" in arg]  # the base model's extra_args are its own, too
    assert command[command.index("--served-model-name") + 1] == "llm2"
    assert command[command.index("--dtype") + 1] == vllm.dtype == "bfloat16"
    assert command[command.index("--max-model-len") + 1] == str(vllm.max_model_len)
    assert command[command.index("--block-size") + 1] == "32" and "--enable-prompt-tokens-details" in command
    lora = {"--enable-lora", "--max-lora-rank", "--max-loras", "--max-cpu-loras", "--lora-x"}
    shared = [arg for arg in base.command() if arg not in lora and not arg.isdigit()]
    assert [arg for arg in command if not arg.isdigit()] == [
        str(tmp_path / "llm") if arg == str(tmp_path / "base") else "llm2" if arg == "base" else arg for arg in shared
    ]
    env = child.environment()
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in env and ENABLE_ENV not in env
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "2-3" and env["TORCHDYNAMO_DISABLE"] == "1"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert base.environment()["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert base.environment()["VLLM_CPU_KVCACHE_SPACE"] == "5"
    own = ModelEntry(name="llm2", role="generate", path="x", dtype="float32", max_model_len=512, extra_args=["--a"])
    command = GenerateSupervisor(vllm, own, tmp_path / "llm", tmp_path / "log").command()
    assert command[command.index("--dtype") + 1] == "float32" and command[-1] == "--a"
    assert command[command.index("--max-model-len") + 1] == "512"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in GenerateSupervisor(vllm, own, tmp_path, tmp_path / "l").environment()


def test_an_entrys_context_and_dtype_are_worked_out_in_one_place(tmp_path: Path) -> None:
    """The context a generate entry's requests are held to (where its engines report
    none) is its supervised engine's --max-model-len, and both, like its --dtype, fall
    back to the base model's `vllm` settings; an encoder's to the model's own and float32."""
    folder = _llm_folder(tmp_path / "llm")
    for own in ({}, {"max_model_len": 512, "dtype": "float16"}):
        entry = {"name": "llm2", "role": "generate", "path": str(folder), **own}
        settings = Settings(data_dir=tmp_path, models=[entry])
        engine = Engines.build(settings).get("llm2")
        assert engine is not None and engine.supervisor is not None
        command = engine.supervisor.command()
        context = own.get("max_model_len", settings.vllm.max_model_len)
        assert int(command[command.index("--max-model-len") + 1]) == engine.context_length() == context
        assert command[command.index("--dtype") + 1] == own.get("dtype", settings.vllm.dtype)
    encoder = ModelEntry(name="enc", role="embed", path=MINILM)
    vllm = Settings(data_dir=tmp_path).vllm
    assert encoder.context(vllm) is None and encoder.engine_dtype(vllm) == "float32"
    assert encoder.model_copy(update={"max_model_len": 128}).context(vllm) == 128


# -- serving -------------------------------------------------------------------------------
def test_chat_and_completions_reach_the_second_engine_under_its_served_name(
    gen_gateway: RunningGateway, fake: FakeState, second_llm: FakeState
) -> None:
    client = gen_gateway.client()
    before = len(_chats(fake))
    chat = client.chat.completions.create(model="llm2", messages=HI, max_tokens=8)
    assert chat.model == "llm2" and chat.choices[0].message.content == f"[{SECOND}] echo: hello there"
    done = client.completions.create(model="llm2", prompt="one two", max_tokens=8)
    assert done.model == "llm2" and done.choices[0].text == f"[{SECOND}] echo: one two"
    sent = _chats(second_llm)
    assert [r["model"] for r in sent] == [SECOND, SECOND]
    assert all(r["cache_salt"] for r in sent)  # the tenant's prefix-cache salt, as on the base model
    assert len(_chats(fake)) == before  # the base model's engine saw none of it
    base = client.chat.completions.create(model=BASE, messages=HI, max_tokens=8)
    assert base.choices[0].message.content.startswith(f"[{BASE}") and len(_chats(second_llm)) == 2


def test_streams_reach_the_second_engine(gen_gateway: RunningGateway, fake: FakeState, second_llm: FakeState) -> None:
    client = gen_gateway.client()
    before = len(_chats(fake))
    chunks = list(client.chat.completions.create(model="llm2", messages=HI, max_tokens=8, stream=True))
    assert {c.model for c in chunks} == {"llm2"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"[{SECOND}] echo: hello there"
    pieces = list(client.completions.create(model="llm2", prompt="a b", max_tokens=8, stream=True))
    assert "".join(p.choices[0].text for p in pieces if p.choices) == f"[{SECOND}] echo: a b"
    assert [r["model"] for r in _chats(second_llm)] == [SECOND, SECOND]
    assert all(r["stream"] for r in _chats(second_llm)) and len(_chats(fake)) == before


def test_usage_metrics_and_models_carry_the_model(gen_gateway: RunningGateway) -> None:
    client = gen_gateway.client()
    client.chat.completions.create(model="llm2", messages=HI, max_tokens=8)
    client.completions.create(model="llm2", prompt="one two", max_tokens=8)
    rows = wait_for_usage(gen_gateway, API_KEY, requests=2)
    mine = [r for r in rows if r["model"] == "llm2"]
    assert sum(r["requests"] for r in mine) == 2 and sum(r["completion_tokens"] for r in mine) > 0
    assert gateway_metric(gen_gateway, "adaptserve_requests_total", model="llm2", endpoint="chat") == 1
    assert gateway_metric(gen_gateway, "adaptserve_requests_total", model="llm2", endpoint="completions") == 1
    assert gateway_metric(gen_gateway, "adaptserve_tokens_total", model="llm2", kind="completion") > 0
    assert gateway_metric(gen_gateway, "adaptserve_upstream_up", model="llm2") == 1
    assert "llm2" in [m.id for m in client.models.list().data]
    assert httpx.get(gen_gateway.url + "/ready").json()["models"] == {"llm2": ["ready"]}


def test_only_its_tenants_may_call_it(start_gateway: Callable[..., RunningGateway], second_llm: FakeState) -> None:
    gw = start_gateway(models=[_entry(second_llm, tenants=["acme"])])
    refused = gw.post("/v1/chat/completions", {"model": "llm2", "messages": HI})
    assert_openai_error(refused, 404, "model_not_found", "model")  # as a name that does not exist
    assert_openai_error(gw.post("/v1/completions", {"model": "llm2", "prompt": "x"}), 404, "model_not_found", "model")
    assert "llm2" not in [m.id for m in gw.client().models.list().data]
    acme = new_tenant(gw, "acme")
    assert [m.id for m in acme.models.list().data] == ["llm2"]
    assert acme.chat.completions.create(model="llm2", messages=HI, max_tokens=4).model == "llm2"
    assert len(_chats(second_llm)) == 1  # the refused calls never reached it


def test_requests_are_held_to_its_own_context(
    start_gateway: Callable[..., RunningGateway], second_llm: FakeState
) -> None:
    second_llm.max_model_len = 64  # what its engine reports; the base model's is 2048
    gw = start_gateway(models=[_entry(second_llm)])
    body = {"messages": HI, "max_tokens": 100}
    refused = gw.post("/v1/chat/completions", {"model": "llm2", **body})
    assert (
        "maximum context length is 64"
        in assert_openai_error(refused, 400, "context_length_exceeded", "max_tokens")["message"]
    )
    assert gw.post("/v1/chat/completions", {"model": BASE, **body}).status_code == 200
    assert gw.post("/v1/chat/completions", {"model": "llm2", "messages": HI, "max_tokens": 16}).status_code == 200


def test_it_is_no_embedding_model_alias_or_template_model(gen_gateway: RunningGateway) -> None:
    on_embeddings = gen_gateway.post("/v1/embeddings", {"model": "llm2", "input": "x"})
    assert_openai_error(on_embeddings, 400, "model_not_embedding", "model")
    alias = gen_gateway.admin("PUT", "/tenants/default/models/llm2", json={"base": True})
    assert "generate model" in assert_openai_error(alias, 400, "model_not_adaptable", "alias")["message"]
    doc = {"name": "echo", "kind": "generate", "instruction": "Repeat.", "inputs": {"text": {}}, "model": "llm2"}
    template = gen_gateway.admin("PUT", "/templates/echo", json=doc)
    assert_openai_error(template, 400, "model_not_adaptable", "model")
    assert gen_gateway.admin("PUT", "/templates/echo", json=doc | {"model": "default"}).status_code == 201


def test_a_template_naming_it_is_refused_when_called_and_tenants_that_may_not_call_it_learn_nothing(
    start_gateway: Callable[..., RunningGateway], second_llm: FakeState, tmp_path: Path
) -> None:
    """Saved through the admin API such a template is refused (above); one read from
    `templates_dir` (or saved before the entry existed) is refused when called, and never
    reaches the engine. A tenant that may not call the model may name an alias or a
    template after it (its own names: the model does not exist for it)."""
    folder = tmp_path / "templates"
    folder.mkdir()
    doc = {"name": "echo", "kind": "generate", "instruction": "Repeat.", "inputs": {"text": {}}, "model": "llm2"}
    (folder / "echo.json").write_text(json.dumps(doc))
    gw = start_gateway(models=[_entry(second_llm, tenants=["default"])], templates_dir=folder)
    called = gw.post("/v1/templates/echo", {"inputs": {"text": "hi"}})
    assert_openai_error(called, 400, "model_not_adaptable", "model")
    assert _chats(second_llm) == []
    new_tenant(gw, "other")
    assert gw.admin("PUT", "/tenants/other/models/llm2", json={"base": True}).status_code == 200
    assert gw.admin("PUT", "/templates/echo", params={"tenant": "other"}, json=doc).status_code == 201


def test_pii_and_quotas_hold_it_as_the_base_model(gen_gateway: RunningGateway, second_llm: FakeState) -> None:
    assert gen_gateway.admin("PUT", "/tenants/default/pii", json={"mode": "mask"}).status_code == 200
    said = [{"role": "user", "content": "write to kim.lee@example.com"}]
    answer = gen_gateway.client().chat.completions.create(model="llm2", messages=said, max_tokens=16)
    sent = _chats(second_llm)[-1]["messages"][0]["content"]
    assert "kim.lee@example.com" not in sent and answer.choices[0].message.content.endswith("kim.lee@example.com")
    assert gen_gateway.admin("PUT", "/tenants/default/pii", json={"mode": "off"}).status_code == 200
    assert gen_gateway.admin("PUT", "/tenants/default/quotas", json={"tokens_per_minute": 200}).status_code == 200
    calls = len(_chats(second_llm))
    too_many = gen_gateway.post("/v1/completions", {"model": "llm2", "prompt": "x", "max_tokens": 500})
    assert_openai_error(too_many, 400, "tokens_over_limit", "max_tokens")
    assert len(_chats(second_llm)) == calls  # refused before its engine


def test_its_engine_down_is_its_503_not_the_base_models(gen_gateway: RunningGateway, second_llm: FakeState) -> None:
    second_llm.healthy = False
    wait_for(lambda: httpx.get(gen_gateway.url + "/ready").status_code == 503, what="/ready stayed 200")
    refused = gen_gateway.post("/v1/chat/completions", {"model": "llm2", "messages": HI})
    assert_openai_error(refused, 503, "upstream_unavailable")
    assert gen_gateway.post("/v1/chat/completions", {"model": BASE, "messages": HI}).status_code == 200


def test_a_replica_that_does_not_serve_its_name_is_passed_over_for_one_that_does(
    start_gateway: Callable[..., RunningGateway], fake: FakeState, second_llm: FakeState
) -> None:
    """Of two replicas, one restarted under another name: nothing ran there, so each
    request it gets goes on to the other, and no client sees the misconfiguration."""
    fake.served = [*fake.served, SECOND]  # the base model's engine is the entry's second replica
    gateway = start_gateway(models=[_entry(second_llm, upstreams=[second_llm.url, fake.url])])
    second_llm.served = ["renamed"]
    asked = len(_chats(second_llm))
    statuses = [gateway.post("/v1/chat/completions", {"model": "llm2", "messages": HI}).status_code for _ in range(6)]
    assert statuses == [200] * 6
    assert len(_chats(second_llm)) > asked  # it was asked, and passed over


def test_an_engine_that_does_not_serve_its_name_is_a_configuration_502_not_an_adapter_load(
    gen_gateway: RunningGateway, second_llm: FakeState
) -> None:
    """An engine in service that answers "does not exist" for a generate model (it was
    restarted under another --served-model-name between health checks) has nothing to
    load: the client gets a 502 naming the configuration problem, once, not the 503 of
    an adapter that could not be loaded."""
    second_llm.served = ["renamed"]  # what its engine serves now
    for path, body in (("/v1/chat/completions", {"messages": HI}), ("/v1/completions", {"prompt": "x"})):
        before = len(_chats(second_llm))
        refused = gen_gateway.post(path, {"model": "llm2", **body})
        error = assert_openai_error(refused, 502, "engine_model_not_served")
        assert "served_model_name" in error["message"] and "'llm2'" in error["message"]
        assert SECOND not in error["message"] and "load" not in error["message"]
        assert len(_chats(second_llm)) == before + 1  # asked once: no reload, no second try
    streamed = gen_gateway.post("/v1/chat/completions", {"model": "llm2", "messages": HI, "stream": True})
    assert_openai_error(streamed, 502, "engine_model_not_served")
    assert gen_gateway.post("/v1/chat/completions", {"model": BASE, "messages": HI}).status_code == 200
