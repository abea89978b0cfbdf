"""Scenario `embeddings` of `adaptserve bench` (bench/embeddings.py) on fake engines: the
gateway and the engine direct get the same batches and the ratios are the measured
medians', the cosine is right on known vectors, and the head template is trained,
pushed and raced against an LLM template on the same inputs."""

from __future__ import annotations

import statistics
import threading

import numpy as np
import pytest

from adaptserve.bench import embeddings as bench
from adaptserve.bench.embeddings import Endpoint
from adaptserve.bench.fake_engine import FakeState, fake_embedding
from adaptserve.datasets import Example
from tests.helpers import ADMIN_KEY, API_KEY, FAKE_ENCODER, RunningGateway

WORDS = ["good", "great", "fine", "bad", "awful", "dull", "plot", "cast", "music", "film"]


def _texts(n: int) -> list[str]:
    return [" ".join(WORDS[(i + k) % len(WORDS)] for k in range(1 + i % 4)) + f" n{i}" for i in range(n)]


def test_both_sides_embed_the_same_batches_and_the_ratio_is_the_medians(
    embed_gateway: RunningGateway, encoder: FakeState
) -> None:
    texts = _texts(20)
    gateway, direct = Endpoint(embed_gateway.url, "embedder", API_KEY), Endpoint(encoder.url, FAKE_ENCODER)  # type: ignore[attr-defined]
    result = bench.compare_embeddings(gateway, direct, texts, batch=8, rounds=3)

    batches = [texts[:8], texts[8:16], texts[16:]]
    seen = [tuple(r["input"]) for r in encoder.requests]
    assert all(r["model"] == FAKE_ENCODER for r in encoder.requests)
    # warm-up: the first two batches on each side; then every batch on each side each round,
    # one at a time and then by four callers at once
    assert sorted(seen) == sorted([tuple(b) for b in batches] * 12 + [tuple(b) for b in batches[:2]] * 2)

    rounds, median = result["rounds"], result["median"]
    assert len(rounds) == 3
    for side in ("gateway", "direct"):
        for r in rounds:  # inputs over the side's own request time, one request a batch
            assert len(r[side]["latencies_ms"]) == 3
            assert r[side]["inputs_per_s"] == pytest.approx(20 / (sum(r[side]["latencies_ms"]) / 1000), rel=0.05)
        assert median[side]["inputs_per_s"] == statistics.median(r[side]["inputs_per_s"] for r in rounds)
        assert median[side]["latency_p50_ms"] == statistics.median(r[side]["latency_p50_ms"] for r in rounds)
    ratio = result["ratio"]
    assert ratio["inputs_per_s"] == median["gateway"]["inputs_per_s"] / median["direct"]["inputs_per_s"]
    assert ratio["latency_p50"] == median["gateway"]["latency_p50_ms"] / median["direct"]["latency_p50_ms"]

    at_once = result["concurrent"]
    assert at_once["clients"] == 4 and len(at_once["rounds"]) == 3
    for side in ("gateway", "direct"):
        assert at_once["inputs_per_s"][side] == statistics.median(r[side] for r in at_once["rounds"])
    assert at_once["ratio"] == at_once["inputs_per_s"]["gateway"] / at_once["inputs_per_s"]["direct"]

    expected = np.array([fake_embedding(t.split()) for t in texts])
    np.testing.assert_allclose(result["vectors"], expected, atol=1e-6)  # float32 on the wire
    assert result["max_abs_difference_gateway_vs_direct"] == 0.0


def test_concurrent_sends_every_batch_once_a_side_with_that_many_callers_at_once() -> None:
    clients, batches = 3, [[f"b{i}"] * (1 + i % 2) for i in range(9)]
    together = {side: threading.Barrier(clients, timeout=30) for side in ("a", "b")}
    seen: dict[str, list[list[str]]] = {"a": [], "b": []}
    lock = threading.Lock()

    def call(side: str) -> bench.Call:
        def send(batch: list[str]) -> list[str]:
            with lock:
                seen[side].append(batch)
                first = len(seen[side]) <= clients
            if first:  # the first `clients` batches are in flight together, or this times out
                together[side].wait()
            return batch

        return send

    rates = bench.concurrent({"a": call("a"), "b": call("b")}, batches, clients, start=1)
    for side in ("a", "b"):
        assert sorted(seen[side]) == sorted(batches)
        assert not together[side].broken
    assert list(rates) == ["a", "b"] and all(r > 0 for r in rates.values())


def test_cosines_on_known_vectors() -> None:
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    b = np.array([[3.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    got = bench.cosines(a, b)
    assert got["min"] == pytest.approx(1 / np.sqrt(2))
    assert got["median"] == pytest.approx(1.0)
    assert got["n"] == 3
    with pytest.raises(ValueError, match="shape"):
        bench.cosines(a, b[:2])


def test_a_head_is_trained_pushed_and_raced_against_an_llm_template(
    embed_gateway: RunningGateway, encoder: FakeState
) -> None:
    positive, negative = ["good", "great", "fine"], ["bad", "awful", "dull"]
    examples = [
        Example(
            f"{(positive if i % 2 else negative)[i % 3]} {WORDS[6 + i % 4]} x{i}", "positive" if i % 2 else "negative"
        )
        for i in range(48)
    ]
    gateway = Endpoint(embed_gateway.url, "embedder", API_KEY)
    facts = bench.push_head(gateway, ADMIN_KEY, bench.balanced(examples[:32], 32), seed=0)
    assert facts["labels"] == ["negative", "positive"] and facts["examples"] == 32
    labels = [{"name": "negative"}, {"name": "positive"}]
    llm = {"name": "llm", "kind": "classify", "instruction": "Good or bad?", "inputs": {"text": {}}, "labels": labels}
    assert embed_gateway.admin("PUT", "/templates/llm", json=llm).status_code == 201

    encoder.requests.clear()
    pool = examples[32:]
    result = bench.compare_classify(
        embed_gateway.url, API_KEY, {"head": bench.HEAD, "llm": "llm"}, pool, n=8, batch=4, rounds=2
    )

    # the head's side: one embeddings request per batch, the round's inputs in order
    embedded = [r["input"] for r in encoder.requests]
    assert [e.text for e in pool[-4:]] == embedded[0]  # warm-up
    assert embedded[1:] == [[e.text for e in pool[i : i + 4]] for i in (0, 4, 8, 12)]
    for r, round_ in enumerate(result["rounds"]):  # accuracy: the labels of one-input calls, against the gold
        for side, template in (("head", bench.HEAD), ("llm", "llm")):
            answers = [
                embed_gateway.post(f"/v1/templates/{template}", {"inputs": {"text": e.text}})
                for e in pool[r * 8 : r * 8 + 8]
            ]
            right = [a.json()["label"] == e.label for a, e in zip(answers, pool[r * 8 :], strict=False)]
            assert round_[side]["accuracy"] == sum(right) / 8
    median = result["median"]
    assert result["ratio"]["inputs_per_s"] == median["head"]["inputs_per_s"] / median["llm"]["inputs_per_s"]
    for side in ("head", "llm"):
        scores = [r[side]["accuracy"] for r in result["rounds"]]
        assert median[side]["accuracy"] == statistics.median(scores)
        assert all(r[side]["inputs"] == 8 for r in result["rounds"])


def test_the_profile_splits_a_head_inputs_time_between_engine_and_gateway() -> None:
    embeddings = {"median": {"direct": {"inputs_per_s": 160.0}}}
    classify = {"median": {"head": {"inputs_per_s": 80.0}}}
    sweep = {16: {"inputs_per_s": 160.0, "latency_p50_ms": 100.0}}
    got = bench.profile(embeddings, classify, sweep)
    assert got["engine_ms_per_input"] == pytest.approx(6.25)
    assert got["head_ms_per_input"] == pytest.approx(12.5)
    assert got["gateway_share_of_head"] == pytest.approx(0.5)
    assert got["engine_by_batch"] == {"16": sweep[16]}


def test_the_engine_url_is_read_from_the_gateways_log() -> None:
    log = (
        "2026-12-07 00:55:30,123 INFO adaptserve starting vLLM on http://127.0.0.1:4001\n"
        "2026-12-07 00:55:30,124 INFO adaptserve starting vLLM for model minilm (embed) on http://127.0.0.1:4002 ...\n"
    )
    assert bench.engine_url(log) == "http://127.0.0.1:4002"
    with pytest.raises(RuntimeError, match="bge"):
        bench.engine_url(log, "bge")


def test_balanced_takes_as_many_of_each_label() -> None:
    examples = [Example(f"t{i}", "a" if i < 10 else "b") for i in range(13)]
    picked = bench.balanced(examples, 6)
    assert [e.label for e in picked] == ["a", "b"] * 3
    assert [e.text for e in picked] == ["t0", "t10", "t1", "t11", "t2", "t12"]
