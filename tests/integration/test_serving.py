"""The real engine behind the gateway, through the official openai SDK."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.helpers import ADAPTERS, API_KEY, BAD_ADAPTERS, chat

CAPITAL = "What is the capital of France?"


def test_base_model_knows_the_capital_of_france(server):
    assert "Paris" in chat(server.client(), "SmolLM2-135M-Instruct", CAPITAL)
    assert "Paris" in chat(server.client(), "default", CAPITAL)


def test_completions_endpoint(server):
    reply = server.client().completions.create(
        model="default", prompt="The capital of France is", max_tokens=5, temperature=0
    )
    assert reply.model == "default"
    assert "Paris" in reply.choices[0].text


def test_models_lists_the_base_and_the_good_adapters_only(server):
    ids = {m.id for m in server.client().models.list()}
    assert ids == {"SmolLM2-135M-Instruct", "default", *ADAPTERS}


def test_each_adapter_changes_the_output(server):
    client = server.client()
    outputs = {m: chat(client, m, "Name three colours of the rainbow.") for m in ("default", *ADAPTERS)}
    assert len(set(outputs.values())) == len(outputs), outputs


@pytest.mark.parametrize("model", ["default", "a2"])
def test_stream_joins_to_the_non_streamed_text(server, model):
    client = server.client()
    whole = chat(client, model, CAPITAL, max_tokens=32)
    chunks = list(
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": CAPITAL}], max_tokens=32, temperature=0, stream=True
        )
    )
    assert {c.model for c in chunks} == {model}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole


@pytest.mark.parametrize("name", BAD_ADAPTERS)
def test_bad_adapters_are_not_served_and_the_log_says_why(server, name):
    with pytest.raises(openai.NotFoundError) as err:
        chat(server.client(), name, CAPITAL)
    assert err.value.code == "model_not_found"
    assert f"adapter {name} (" in server.log()


def test_error_contract_through_the_sdk(server):
    client = server.client()
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="wrong").models.list()
    with pytest.raises(openai.NotFoundError):
        chat(client, "no-such-model", "hi")
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}], max_tokens="many")  # type: ignore[arg-type]
    assert err.value.body["param"] == "max_tokens"


@pytest.mark.parametrize(("endpoint", "stream"), [("chat", False), ("chat", True), ("completions", False)])
def test_prompt_over_the_context_is_400_context_length_exceeded(server, endpoint, stream):
    client = server.client()
    long_text = "hello " * 3000
    with pytest.raises(openai.BadRequestError) as err:
        if endpoint == "chat":
            client.chat.completions.create(model="a1", messages=[{"role": "user", "content": long_text}], stream=stream)
        else:
            client.completions.create(model="default", prompt=long_text, stream=stream)
    assert err.value.code == "context_length_exceeded"
    assert err.value.body["param"] == ("messages" if endpoint == "chat" else "prompt")


def test_engine_crashing_request_shapes_are_refused(server):
    with pytest.raises(openai.BadRequestError) as err:
        server.client().completions.create(model="a1", prompt=["a", "b"], max_tokens=1, echo=True, logprobs=1)
    assert err.value.body["param"] == "echo"
    assert httpx.get(server.url + "/ready").status_code == 200


def running_requests(vllm_url: str) -> float:
    metrics = httpx.get(vllm_url + "/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith("vllm:num_requests_running")
    )


def test_client_disconnect_aborts_the_engine_request(server):
    body = {
        "model": "a3",
        "messages": [{"role": "user", "content": "Write a long story."}],
        "max_tokens": 1500,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=300, headers=headers) as r:
        # vLLM's gauge can lag the first tokens on a busy machine: read on until it shows the request.
        seen, deadline = False, time.monotonic() + 30
        for _line in r.iter_lines():
            if running_requests(server.vllm_url()) >= 1:
                seen = True
                break
            assert time.monotonic() < deadline, "the engine never reported the request as running"
        assert seen
    deadline = time.monotonic() + 20
    while running_requests(server.vllm_url()) > 0:
        assert time.monotonic() < deadline, "the engine kept generating for a client that left"
        time.sleep(0.25)
