"""Tenants on the real engine: isolation, routing correctness while an adapter is
uploaded, and a hot-swap that keeps in-flight streams and then unloads the old weights."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.helpers import chat, follows_another, new_tenant, upload, wait_for_usage

PROMPTS = ("Name three colours of the rainbow.", "Write one sentence about the sea.")


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
    swapped = threading.Event()  # the reader pauses after its first piece until the swap is done
    failures: list[BaseException] = []

    def stream() -> None:
        try:
            read()
        except BaseException as exc:  # shown by the checks below, not lost in the thread
            failures.append(exc)

    def read() -> None:
        # A paused reader holds the stream open whatever the engine's speed: its chunks
        # (each with 20 logprobs, megabytes in all) fill the socket buffers and the
        # gateway waits to send the rest, its admission (the old version's lease) held.
        with client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=1900,
            temperature=0,
            stream=True,
            logprobs=True,
            top_logprobs=20,
            extra_body={"ignore_eos": True},
        ) as chunks:
            for chunk in chunks:
                pieces.append((chunk.choices[0].delta.content or "") if chunk.choices else "")
                swapped.wait(timeout=50)  # under the gateway's 60 s stall timeout
                if len("".join(pieces)) > len(solo["a1"]):
                    break

    reader = threading.Thread(target=stream)
    reader.start()
    while not pieces and reader.is_alive():
        time.sleep(0.02)
    new = server.admin("POST", "/adapters", json={"name": "swap", "path": str(adapter_dirs["a2"])}).json()["version"]
    assert server.admin("POST", "/adapters/swap/activate", json={"version": new}).status_code == 200
    assert not follows_another(chat(client, "m", prompt, max_tokens=48), solo["a2"], [solo["a1"]])
    still = reader.is_alive(), len("".join(pieces)), failures, server.troubles()
    assert "swap--" + old in httpx.get(server.vllm_url() + "/v1/models").text, still  # still streaming on it
    swapped.set()
    reader.join(timeout=300)
    assert not failures
    streamed = "".join(pieces)[: len(solo["a1"])]  # past the solo answer's end it runs on past EOS
    assert not follows_another(streamed, solo["a1"], [solo["a2"]])

    deadline = time.monotonic() + 60  # a busy CPU engine may be slow to unload; one never unloaded stays
    while "swap--" + old in httpx.get(server.vllm_url() + "/v1/models").text:
        assert time.monotonic() < deadline, "the retired version stayed loaded after its last request"
        time.sleep(0.2)
    rows = wait_for_usage(server, client.api_key, requests=2)
    assert [r["requests"] for r in rows] == [2] and rows[0]["completion_tokens"] > 0
