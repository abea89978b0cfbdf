"""The third security audit's hostile shapes against the real engine (SECURITY.md): a
template call whose scoring plan passes the request bounds is refused before the engine
and a template that can never fit is refused when saved; a backtracking pattern is
refused at upload while the gateway keeps answering; personal data in a field the engine
reads but a placeholder cannot stand in is refused under `mask`, and masked where it can.
Each leaves the engine process it found."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.helpers import chat, new_tenant

EMAIL = "kimberly.lee.anderson@mail.example.com"


def _engine_pid(server) -> int:
    (pid,) = [p for p in server.vllm_pids() if os.getpgid(p) == p]  # the API server leads its group
    return pid


def _labelled(name: str, count: int) -> dict:
    """A classify template whose label answers share a first word and then run on for
    several tokens: the scoring plan has at least 3 prompts per label for each input."""
    labels = [{"name": f"l{i}", "verbalizer": f"x w{i} a b c"} for i in range(count)]
    return {
        "name": name,
        "kind": "classify",
        "instruction": "Pick one.",
        "inputs": {"text": {"type": "string"}},
        "labels": labels,
        "calibration": False,
    }


def _put(server, document: dict, tenant: str | None = None) -> httpx.Response:
    params = {"tenant": tenant} if tenant else None
    return server.admin("PUT", f"/templates/{document['name']}", content=json.dumps(document), params=params)


def test_template_calls_are_bounded_on_the_engine(server) -> None:
    pid = _engine_pid(server)
    never = _put(server, _labelled("never-fits", 300))  # ≥ 300 prompts for one input, over 256
    assert never.status_code == 400 and never.json()["error"]["param"] == "labels", never.text
    assert _put(server, _labelled("many-labels", 12)).status_code == 201  # one input: ≤ 74 prompts
    key = server.admin("POST", "/tenants/default/keys").json()["key"]
    headers = {"Authorization": f"Bearer {key}"}
    inputs = [{"text": f"review number {i}"} for i in range(16)]  # 16 × ≥ 38 prompts
    refused = httpx.post(f"{server.url}/v1/templates/many-labels", json={"inputs": inputs}, headers=headers)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "inputs", refused.text
    one = httpx.post(f"{server.url}/v1/templates/many-labels", json={"inputs": inputs[0]}, headers=headers, timeout=300)
    assert one.status_code == 200 and one.json()["label"].startswith("l"), one.text
    assert _engine_pid(server) == pid


def test_a_backtracking_pattern_is_refused_while_the_gateway_answers(server) -> None:
    document = {
        "name": "gen-hostile",
        "kind": "generate",
        "instruction": "Answer.",
        "inputs": {"t": {}},
        "schema": {"type": "string", "pattern": "^(a+)+$"},
        "examples": [{"inputs": {"t": "x"}, "output": "a" * 27 + "!"}],  # the audit's 27 characters
    }
    with ThreadPoolExecutor(2) as pool:
        upload = pool.submit(_put, server, document)
        answer = pool.submit(chat, server.client(), "default", "What is the capital of France?")
        assert "Paris" in answer.result(timeout=300)
        response = upload.result(timeout=60)
    assert response.status_code == 400 and "pattern" in response.json()["error"]["message"], response.text


@pytest.mark.parametrize(
    "field",
    [
        {"messages": [{"role": f"user {EMAIL}", "content": "hi"}]},
        {"stop": [EMAIL]},
        {"structured_outputs": {"choice": ["yes", EMAIL]}},
        {"chat_template_kwargs": {EMAIL: True}},
    ],
    ids=["role", "stop", "structured_outputs.choice", "chat_template_kwargs key"],
)
def test_personal_data_where_no_placeholder_can_stand_is_refused_under_mask(server, field) -> None:
    name = "pii-fixed-" + next(iter(field)).replace("_", "-")
    client = new_tenant(server, name, {"base": True}, alias="chat")
    assert server.admin("PUT", f"/tenants/{name}/pii", json={"mode": "mask"}).status_code == 200
    body = {"model": "chat", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, **field}
    headers = {"Authorization": f"Bearer {client.api_key}"}
    refused = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers, timeout=60)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "pii_detected" and EMAIL not in refused.text


def test_a_message_name_is_masked_and_the_engine_answers(server) -> None:
    client = new_tenant(server, "pii-name", {"base": True}, alias="chat")
    assert server.admin("PUT", "/tenants/pii-name/pii", json={"mode": "mask"}).status_code == 200
    answer = client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "name": EMAIL, "content": "Say hi."}],
        max_tokens=4,
        temperature=0,
    )
    assert answer.choices[0].message.content is not None
