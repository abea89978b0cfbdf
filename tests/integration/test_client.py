"""The Python client against the real server: an admin sets up a tenant with an
adapter, the tenant classifies, extracts and chats through the client (blocking and
asyncio), errors arrive typed, and usage reads back what was sent."""

from __future__ import annotations

import asyncio

import pytest
from adaptserve_client import AsyncClient, BadRequestError, Client, NotFoundError

from tests.helpers import ADMIN_KEY, API_KEY

MESSAGE = "Hello, this is Dana Whitfield from Northwind Traders. Email me at dana@northwind.example."
REVIEWS = [
    "a gorgeous , moving and brilliantly acted film . one of the best of the year .",
    "a dull , tedious mess . i wanted my money back .",
]


def test_the_client_drives_templates_chat_and_admin_on_the_real_engine(server, adapter_dirs) -> None:
    with Client(server.url, ADMIN_KEY, timeout=300) as admin:
        admin.admin.tenants.create("client-co")
        key = admin.admin.keys.create("client-co")["key"]
        pushed = admin.admin.adapters.push(adapter_dirs["a4"], "client-a4")
        admin.admin.aliases.set("client-co", "tuned", adapter="client-a4")
        admin.admin.aliases.set("client-co", "plain", base=True)
    with Client(server.url, key, timeout=300) as tenant, pytest.raises(NotFoundError):
        tenant.classify("no-such-template", text=REVIEWS[0])
    with Client(server.url, API_KEY, timeout=300) as client:
        labels = [r.label for r in client.templates.run_batch("sentiment", [{"text": t} for t in REVIEWS])]
        contact = client.generate("extract-contact", message=MESSAGE)
        with pytest.raises(BadRequestError) as bad:
            client.classify("sentiment", review="x")
        rows = client.usage()
    assert labels == ["positive", "negative"]
    assert "northwind" in (contact.output["email"] or "").lower() and contact.usage.completion_tokens > 0
    assert bad.value.param is not None
    assert {"sentiment", "extract-contact"} <= {r.template for r in rows}
    with Client(server.url, key, timeout=300) as tenant:
        reply = tenant.openai.chat.completions.create(
            model="plain",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=24,
            temperature=0,
        )
        tuned = tenant.openai.chat.completions.create(
            model="tuned", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
    assert "Paris" in reply.choices[0].message.content and tuned.model == "tuned"
    assert pushed["version"]


def test_the_async_client_classifies_concurrently_in_order(server) -> None:
    async def classify_all() -> list[str]:
        async with AsyncClient(server.url, API_KEY, timeout=300) as client:
            answers = await asyncio.gather(*(client.classify("sentiment", text=t) for t in REVIEWS * 3))
            return [a.label for a in answers]

    assert asyncio.run(classify_all()) == ["positive", "negative"] * 3
