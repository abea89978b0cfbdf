"""Adapters reduced and merged by the admin API, served by the real engine: a result that
is the same update as its source (a full-rank SVD, a cat of two halves, a dense TIES of
one source) answers as the source does, token for token up to a near-tie that bf16
rounding may break; a reduced one is served."""

from __future__ import annotations

import openai

from tests.helpers import chat

PROMPTS = ("Write one sentence about the sea.", "Name three colours and a fruit.")


def logprobs(client: openai.OpenAI, model: str, content: str) -> list[tuple[str, float, list[float]]]:
    """Each generated token, its log-probability and the two best log-probabilities there."""
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        max_tokens=16,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    return [(t.token, t.logprob, [a.logprob for a in t.top_logprobs]) for t in reply.choices[0].logprobs.content]


def assert_answers_as(got: list, reference: list, label: object) -> None:
    """The same answer token for token, each log-probability close, up to a position
    where the source's two best tokens nearly tie: there the update's bf16 factors may
    pick the other one (" Red" for " red" has been seen with the locked environment), and
    the answers part. Log-probabilities move with that rounding most where tokens nearly
    tie (0.235 measured at one position; 0.15 held with older packages)."""
    for (token, logprob, _), (expected, expected_logprob, top) in zip(got, reference, strict=True):
        if token != expected:
            assert top[0] - top[1] < 0.5, (label, token, expected, top)  # a near-tie, not another answer
            return
        assert abs(logprob - expected_logprob) < 0.3, (label, token, logprob, expected_logprob)


def test_reduced_and_merged_adapters_serve_the_update_they_carry(server) -> None:
    server.admin("POST", "/tenants", json={"name": "algebra"})
    client = server.client(server.admin("POST", "/tenants/algebra/keys").json()["key"])
    made = {
        "exact": server.admin("POST", "/adapters/a1/compress", json={"energy": 1.0, "name": "a1-exact"}),
        "halves": server.admin(
            "POST",
            "/adapters/merge",
            json={"name": "a1-halves", "method": "cat", "sources": [{"adapter": "a1", "weight": 0.5}] * 2},
        ),
        "ties": server.admin(
            "POST",
            "/adapters/merge",
            json={"name": "a1-ties", "method": "ties", "density": 1.0, "sources": [{"adapter": "a1"}]},
        ),
        "rank1": server.admin("POST", "/adapters/a1/compress", json={"rank": 1, "name": "a1-rank1"}),
    }
    for alias, response in made.items():
        assert response.status_code == 201, response.text
        target = {"adapter": response.json()["name"]}
        assert server.admin("PUT", f"/tenants/algebra/models/{alias}", json=target).status_code == 200
    assert server.admin("PUT", "/tenants/algebra/models/a1", json={"adapter": "a1"}).status_code == 200
    assert [made[k].json()["rank"] for k in made] == [8, 16, 8, 1]
    for prompt in PROMPTS:
        reference = logprobs(client, "a1", prompt)
        for alias in ("exact", "halves", "ties"):
            assert_answers_as(logprobs(client, alias, prompt), reference, (alias, prompt))
    assert chat(client, "rank1", PROMPTS[0])  # a rank-1 reduction loads and answers
    described = server.admin("GET", "/adapters/a1-rank1").json()["versions"][0]
    assert described["state"] == "ready" and described["rank"] == 1
