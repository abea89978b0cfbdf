"""The isolation and metering audit on the real engine: a stream the client cuts is
metered, tenants never read each other's prefix cache, a deleted template never
answers for a new one, tokens_per_minute caps tokens, deletions last across a gateway
restart, and the engine's processes hold none of the gateway's settings."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import (
    API_KEY,
    chat,
    common_prefix,
    follows_another,
    gateway_metric,
    running_server,
    upload,
    usage,
    wait_for_usage,
)

# About 700 tokens: several of vLLM's 128-token cache blocks.
LONG = "Here is a long note about the weather in the mountains, with many details. " * 45


def tenant(server, name: str, **quotas: int) -> str:
    assert server.admin("POST", "/tenants", json={"name": name}).status_code == 201
    assert server.admin("PUT", f"/tenants/{name}/models/default", json={"base": True}).status_code == 200
    if quotas:
        assert server.admin("PUT", f"/tenants/{name}/quotas", json=quotas).status_code == 200
    return server.admin("POST", f"/tenants/{name}/keys").json()["key"]


def cached_tokens(server, key: str, prompt: str) -> int:
    body = {"model": "default", "messages": [{"role": "user", "content": prompt}], "max_tokens": 1}
    response = httpx.post(
        server.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=300
    )
    assert response.status_code == 200, response.text
    return (response.json()["usage"].get("prompt_tokens_details") or {}).get("cached_tokens") or 0


def test_a_stream_the_client_cuts_is_metered_up_to_the_cut(server):
    key = tenant(server, "iso-cutter")
    body = {
        "model": "default",
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream(
        "POST", server.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=300
    ) as response:
        assert response.status_code == 200
        seen = 0
        for line in response.iter_lines():
            seen += line.startswith("data:")
            if seen == 5:
                break
    [row] = wait_for_usage(server, key)
    assert row["requests"] == 1 and row["prompt_tokens"] > 0
    assert 4 <= row["completion_tokens"] < 400  # up to the cut (the first chunk has only the role)


def test_tenants_never_read_each_others_prefix_cache(server):
    first, second = tenant(server, "iso-salt-a"), tenant(server, "iso-salt-b")
    prompt = "Summarise this note. " + LONG
    assert cached_tokens(server, first, prompt) == 0
    assert cached_tokens(server, first, prompt) >= 128  # its own repeat hits its own cache
    assert cached_tokens(server, second, prompt) == 0  # another tenant: a miss, whatever it sends
    hit = cached_tokens(server, second, prompt)
    assert hit >= 128
    # the gateway counts the hits it was told, per tenant and alias
    assert gateway_metric(server, "adaptserve_tokens_total", tenant="iso-salt-b", kind="cached") == hit


def test_a_new_template_never_answers_with_a_deleted_ones_contents(server):
    keys = {name: tenant(server, name) for name in ("iso-tpl-a", "iso-tpl-b")}
    secret = {
        "name": "iso-secret",
        "kind": "classify",
        "tenant": "iso-tpl-a",
        "instruction": "Is this review positive or negative? " + "Weigh every word of it carefully. " * 50,
        "inputs": {"text": {}},
        "labels": [{"name": "negative"}, {"name": "positive"}],
        "calibration": False,
    }
    assert server.admin("PUT", "/templates/iso-secret", content=json.dumps(secret)).status_code == 201
    first = _run(server, "iso-secret", keys["iso-tpl-a"])
    assert first["explain"]["prompt_tokens"] > 300
    assert server.admin("DELETE", "/templates/iso-secret?tenant=iso-tpl-a").status_code == 204
    mine = {
        "name": "iso-mine",
        "kind": "classify",
        "tenant": "iso-tpl-b",
        "instruction": "Is this a question?",
        "inputs": {"text": {}},
        "labels": [{"name": "no"}, {"name": "yes"}],
        "calibration": False,
    }
    assert server.admin("PUT", "/templates/iso-mine", content=json.dumps(mine)).status_code == 201
    answer = _run(server, "iso-mine", keys["iso-tpl-b"])
    assert set(answer["scores"]) == {"no", "yes"} and answer["explain"]["prompt_tokens"] < 100


def _run(server, name: str, key: str) -> dict:
    response = httpx.post(
        f"{server.url}/v1/templates/{name}",
        json={"inputs": {"text": "a fine film"}, "explain": True},
        headers={"Authorization": f"Bearer {key}"},
        timeout=300,
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_tokens_per_minute_caps_concurrent_requests(server):
    limit = 600
    key = tenant(server, "iso-tpm", tokens_per_minute=limit)
    body = {"model": "default", "messages": [{"role": "user", "content": "Count to ten."}], "max_tokens": 96}

    def one(_: int) -> int:
        return httpx.post(
            server.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=300
        ).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(one, range(8)))
    assert statuses.count(200) >= 1 and statuses.count(429) >= 1, statuses
    # Every admitted request, not the first flush's (answers ending apart may straddle one).
    rows = wait_for_usage(server, key, requests=statuses.count(200))
    charged = sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows)
    assert 0 < charged <= limit


def test_a_tenant_without_a_base_alias_cannot_reach_the_base(server):
    assert server.admin("POST", "/tenants", json={"name": "iso-adapters-only"}).status_code == 201
    assert server.admin("PUT", "/tenants/iso-adapters-only/models/mine", json={"adapter": "a1"}).status_code == 200
    key = server.admin("POST", "/tenants/iso-adapters-only/keys").json()["key"]
    client = server.client(api_key=key)
    assert chat(client, "mine", "Say hi.")
    with pytest.raises(openai.NotFoundError):
        chat(client, "default", "Say hi.")
    response = httpx.post(
        server.url + "/v1/templates/sentiment",
        json={"inputs": {"text": "a fine film"}},
        headers={"Authorization": f"Bearer {key}"},
        timeout=300,
    )
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


def test_the_engine_holds_none_of_the_gateways_settings(server):
    for pid in server.vllm_pids():
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        names = {entry.split(b"=", 1)[0].decode() for entry in environ if entry}
        ours = {n for n in names if n.startswith("ADAPTSERVE_")}
        assert ours <= {"ADAPTSERVE_ENGINE_PLUGIN", "ADAPTSERVE_ENGINE_PLUGIN_STATUS"}, ours  # the plugin's switch
        assert API_KEY.encode() not in b"\0".join(environ)


def test_deletions_last_across_a_gateway_restart(server, base_model, tmp_path):
    """A second gateway in front of the same engine, restarted on its own data."""
    data, args = tmp_path / "second", ["--upstream", server.vllm_url(), "--model", str(base_model)]
    with running_server(data, args) as gateway:
        assert "Paris" in chat(gateway.client(), "default", "What is the capital of France?")
        old = tenant(gateway, "acme")
        chat(gateway.client(api_key=old), "default", "Say hi.")
        wait_for_usage(gateway, old)
        assert gateway.admin("DELETE", "/tenants/default/keys/key_default").status_code == 204
        assert gateway.admin("DELETE", "/tenants/acme").status_code == 204
    with running_server(data, args) as gateway:  # the same data and the same configured key
        with pytest.raises(openai.AuthenticationError):
            gateway.client().models.list()
        with pytest.raises(openai.AuthenticationError):
            gateway.client(api_key=old).models.list()
        new = tenant(gateway, "acme")
        assert usage(gateway, new) == []


def test_a_tenant_admin_serves_its_own_adapter_and_sees_nothing_of_another_tenant(server, adapter_dirs):
    """Tenant admin keys against the real engine: each tenant's admin uploads an adapter
    and points an alias at it; its API key is served by it; the other tenant's admin
    sees none of it; the audit trail names each key id."""
    admins = {}
    for name, folder in (("ta-one", "a1"), ("ta-two", "a2")):
        assert server.admin("POST", "/tenants", json={"name": name}).status_code == 201
        admins[name] = server.admin("POST", f"/tenants/{name}/keys", json={"role": "admin"}).json()
        assert upload(server, f"{name}-lora", adapter_dirs[folder], key=admins[name]["key"]).status_code == 201
        alias = server.admin(
            "PUT", f"/tenants/{name}/models/m", key=admins[name]["key"], json={"adapter": f"{name}-lora"}
        )
        assert alias.status_code == 200
    one = admins["ta-one"]["key"]
    api_key = server.admin("POST", "/tenants/ta-one/keys", key=one).json()["key"]
    prompt = "Write one sentence about the sea."
    solo = {m: chat(server.client(), m, prompt) for m in ("a1", "a2")}  # its adapter's files are a1's
    got = chat(server.client(api_key=api_key), "m", prompt)
    assert common_prefix(got, solo["a1"]) >= 24 and not follows_another(got, solo["a1"], [solo["a2"]])
    assert server.admin("GET", "/adapters/ta-two-lora", key=one).status_code == 404
    assert server.admin("GET", "/tenants/ta-two/models", key=one).status_code == 404
    assert server.admin("PUT", "/tenants/ta-one/models/x", key=one, json={"adapter": "ta-two-lora"}).status_code == 404
    entries = server.admin("GET", "/audit", key=one).json()["data"]
    assert {e["tenant"] for e in entries} == {"ta-one"}
    assert f"ta-one/{admins['ta-one']['id']}" in {e["actor"] for e in entries}
