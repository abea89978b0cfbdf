"""The OpenAI surface through the official SDK, against a fake vLLM."""

from __future__ import annotations

import threading

import openai
import pytest

from adaptserve.bench.fake_engine import BASE

QUESTION = [{"role": "user", "content": "what is the capital of France"}]


def test_models_list_shows_base_and_adapters(gateway):
    ids = [m.id for m in gateway.client().models.list()]
    assert sorted(ids) == sorted([BASE, "default", "alpha", "beta"])


@pytest.mark.parametrize("model", [BASE, "default", "alpha", "beta"])
def test_chat_routes_to_the_named_model_and_answers_under_its_name(gateway, fake, model):
    reply = gateway.client().chat.completions.create(model=model, messages=QUESTION, max_tokens=20)
    assert reply.model == model
    served_by = fake.requests[-1]["model"]
    expected = BASE if model in (BASE, "default") else model
    assert served_by.startswith(expected + "--")  # a content-addressed internal name
    assert reply.choices[0].message.content == f"[{served_by}] echo: what is the capital of France"


def test_base_requests_go_through_the_zero_adapter_unless_disabled(start_gateway, fake):
    gw = start_gateway(base_via_zero_adapter=False)
    gw.client().chat.completions.create(model="default", messages=QUESTION)
    assert fake.requests[-1]["model"] == BASE
    assert fake.load_calls == []


def test_completions(gateway, fake):
    reply = gateway.client().completions.create(model="alpha", prompt="one two three", max_tokens=5)
    assert reply.model == "alpha"
    assert reply.choices[0].text.endswith("echo: one two three")


@pytest.mark.parametrize("model", ["default", "beta"])
def test_stream_joins_to_the_non_streamed_text(gateway, model):
    client = gateway.client()
    whole = client.chat.completions.create(model=model, messages=QUESTION).choices[0].message.content
    chunks = list(client.chat.completions.create(model=model, messages=QUESTION, stream=True))
    assert {c.model for c in chunks} == {model}
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole


def test_streamed_completions(gateway):
    chunks = list(gateway.client().completions.create(model="alpha", prompt="a b", stream=True))
    assert "".join(c.choices[0].text for c in chunks).endswith("echo: a b")


def test_every_field_but_model_passes_through_unchanged(gateway, fake):
    extra = {
        "structured_outputs": {"choice": ["yes", "no"]},
        "top_k": 3,
        "seed": 7,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    }
    gateway.client().chat.completions.create(
        model="alpha", messages=QUESTION, temperature=0.5, stream_options=None, extra_body=extra
    )
    sent = fake.requests[-1]
    assert {k: sent[k] for k in extra} == extra
    assert sent["temperature"] == 0.5 and sent["messages"] == QUESTION


def test_adapters_load_once_at_startup_and_not_per_request(gateway, fake):
    loads = list(fake.load_calls)
    assert len(loads) == 3  # the zero adapter, alpha, beta
    for _ in range(3):
        gateway.client().chat.completions.create(model="alpha", messages=QUESTION)
    assert fake.load_calls == loads


def test_concurrent_first_requests_after_an_upstream_restart_load_once(gateway, fake):
    fake.restart()  # vLLM lost every adapter, and the gateway does not know yet
    errors: list[Exception] = []

    def call() -> None:
        try:
            gateway.client().chat.completions.create(model="beta", messages=QUESTION)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert fake.load_calls.count(next(n for n in fake.loaded if n.startswith("beta--"))) == 2  # startup + one reload


def test_unknown_model_is_404_model_not_found(gateway):
    with pytest.raises(openai.NotFoundError) as err:
        gateway.client().chat.completions.create(model="gamma", messages=QUESTION)
    assert err.value.code == "model_not_found"
    assert err.value.body["param"] == "model"


def test_internal_names_are_not_addressable(gateway, fake):
    internal = next(n for n in fake.loaded if n.startswith("alpha--"))
    with pytest.raises(openai.NotFoundError):
        gateway.client().chat.completions.create(model=internal, messages=QUESTION)
