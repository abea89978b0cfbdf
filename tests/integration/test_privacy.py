"""Personal data on the real engine: under `mask` the engine reads placeholders (its
own token count says so), answers and streams come back without them; under `block`
a request is refused before the engine and nothing is metered."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.helpers import new_tenant, wait_for_usage

EMAIL = "kimberly.lee.anderson@mail.example.com"  # 15 tokens; its placeholder is 8
PHONE = "+1 415-555-0132"  # 15 tokens; its placeholder is 8


def prompt_tokens(client: openai.OpenAI, model: str, content: str) -> int:
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=1, temperature=0
    )
    assert answer.usage is not None
    return answer.usage.prompt_tokens


def test_masked_requests_reach_the_engine_as_placeholders(server) -> None:
    masked = new_tenant(server, "pii-mask", {"base": True}, alias="chat")
    plain = new_tenant(server, "pii-plain", {"base": True}, alias="chat")
    assert server.admin("PUT", "/tenants/pii-mask/pii", json={"mode": "mask"}).status_code == 200
    assert server.admin("PUT", "/tenants/pii-plain/pii", json={"mode": "off"}).status_code == 200
    said = f"Repeat exactly: write to {EMAIL} or call {PHONE} today."
    as_placeholder = said.replace(EMAIL, "<EMAIL_ADDRESS_1>").replace(PHONE, "<PHONE_NUMBER_2>")
    # The engine counted the placeholder's tokens, not the address's (which differ).
    assert prompt_tokens(masked, "chat", said) == prompt_tokens(plain, "chat", as_placeholder)
    assert prompt_tokens(plain, "chat", said) != prompt_tokens(plain, "chat", as_placeholder)
    stream = masked.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": said}], max_tokens=40, temperature=0, stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text and "<EMAIL_ADDRESS_1>" not in text  # whatever the model wrote, its placeholders were restored
    answer = masked.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": said}], max_tokens=40, temperature=0
    )
    assert answer.choices[0].message.content == text  # the same answer, restored the same way


def test_blocked_requests_never_reach_the_engine(server) -> None:
    client = new_tenant(server, "pii-block", {"base": True}, alias="default")
    assert server.admin("PUT", "/tenants/pii-block/pii", json={"mode": "block"}).status_code == 200
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="default", messages=[{"role": "user", "content": f"mail {EMAIL}"}])
    assert refused.value.body["code"] == "pii_detected" and EMAIL not in str(refused.value.body)
    assert client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Say hi."}], max_tokens=4
    )
    assert sum(row["requests"] for row in wait_for_usage(server, client.api_key)) == 1  # only the clean one
    answer = httpx.post(
        f"{server.url}/v1/templates/sentiment",
        json={"inputs": {"text": f"great film, write me at {EMAIL}"}},
        headers={"Authorization": f"Bearer {client.api_key}"},
    )
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "inputs"
