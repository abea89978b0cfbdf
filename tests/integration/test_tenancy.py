"""Tenants on the real engine: isolation, routing correctness while an adapter is
uploaded, and a hot-swap that keeps in-flight streams and then unloads the old weights."""

from __future__ import annotations

import io
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.integration.conftest import chat, follows_another

PROMPTS = ("Name three colours of the rainbow.", "Write one sentence about the sea.")


def new_tenant(server, name: str, body: dict, alias: str = "support"):
    assert server.admin("POST", "/tenants", json={"name": name}).status_code == 201
    assert server.admin("PUT", f"/tenants/{name}/models/{alias}", json=body).status_code == 200
    return server.client(api_key=server.admin("POST", f"/tenants/{name}/keys").json()["key"])


def upload(server, name: str, folder) -> httpx.Response:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=name)
    return server.admin("POST", "/adapters", data={"name": name}, files={"file": ("a.tar.gz", buffer.getvalue())})


def test_each_tenant_gets_its_own_adapter_while_another_is_uploaded(server, adapter_dirs):
    base_client = server.client()
    models = ("default", "a1", "a2", "a3")
    reference = {(m, p): chat(base_client, m, p) for m in models for p in PROMPTS}
    tenants = {"t0": "default", "t1": "a1", "t2": "a2", "t3": "a3"}
    clients = {
        t: new_tenant(server, t, {"base": True} if m == "default" else {"adapter": m}) for t, m in tenants.items()
    }
    jobs = [(t, p) for t in tenants for p in PROMPTS] * 2

    with ThreadPoolExecutor(max_workers=len(jobs) + 1) as pool:
        futures = [pool.submit(chat, clients[t], "support", p) for t, p in jobs]
        uploaded = pool.submit(upload, server, "a4", adapter_dirs["a4"])
        answers = [f.result() for f in futures]
    assert uploaded.result().status_code == 201

    wrong = [
        (t, p, a)
        for (t, p), a in zip(jobs, answers, strict=True)
        if follows_another(a, reference[tenants[t], p], [reference[m, p] for m in models])
    ]
    assert not wrong, wrong
    t4 = new_tenant(server, "t4", {"adapter": "a4"})
    assert chat(t4, "support", PROMPTS[0]) not in {reference[m, PROMPTS[0]] for m in models}


@pytest.mark.parametrize("name", ["a1", "a2", "default", "SmolLM2-135M-Instruct", "support--x", "a4"])
def test_a_tenant_reaches_nothing_but_its_aliases(server, name):
    client = new_tenant(server, f"iso-{abs(hash(name)) % 10**6}", {"adapter": "a3"})
    assert [m.id for m in client.models.list()] == ["support"]
    with pytest.raises(Exception) as err:
        chat(client, name, "hi")
    assert getattr(err.value, "status_code", None) == 404 and err.value.code == "model_not_found"


def test_hot_swap_keeps_the_stream_and_unloads_the_old_version(server, adapter_dirs):
    prompt = "Write one sentence about the sea."
    old = server.admin("POST", "/adapters", json={"name": "swap", "path": str(adapter_dirs["a1"])}).json()["version"]
    client = new_tenant(server, "swapper", {"adapter": "swap"}, alias="m")
    solo = {m: chat(server.client(), m, prompt, max_tokens=48) for m in ("a1", "a2")}
    pieces: list[str] = []

    def stream() -> None:  # long enough to still be generating when the swap happens (the engine plugin is fast)
        for chunk in client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=1200,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        ):
            pieces.append((chunk.choices[0].delta.content or "") if chunk.choices else "")

    reader = threading.Thread(target=stream)
    reader.start()
    while not "".join(pieces):
        time.sleep(0.02)
    new = server.admin("POST", "/adapters", json={"name": "swap", "path": str(adapter_dirs["a2"])}).json()["version"]
    assert server.admin("POST", "/adapters/swap/activate", json={"version": new}).status_code == 200
    assert not follows_another(chat(client, "m", prompt, max_tokens=48), solo["a2"], [solo["a1"]])
    assert "swap--" + old in httpx.get(server.vllm_url() + "/v1/models").text  # still streaming on it
    reader.join(timeout=300)
    streamed = "".join(pieces)[: len(solo["a1"])]  # past the solo answer's end it runs on past EOS
    assert not follows_another(streamed, solo["a1"], [solo["a2"]])

    deadline = time.monotonic() + 15
    while "swap--" + old in httpx.get(server.vllm_url() + "/v1/models").text:
        assert time.monotonic() < deadline, "the retired version stayed loaded after its last request"
        time.sleep(0.2)
    usage = httpx.get(server.url + "/v1/usage", headers={"Authorization": f"Bearer {client.api_key}"}).json()
    assert usage["data"][0]["requests"] == 2 and usage["data"][0]["completion_tokens"] > 0
