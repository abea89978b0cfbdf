"""The benchmark harness's parts: the workload (seeded, Zipf or uniform), the load
generator's timing records through the real gateway and the fake vLLM, open-loop
arrivals on schedule, and percentiles. (The transformers + peft baseline runs the real
model: tests/integration/test_peft_baseline.py.)"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter

import pytest

from adaptserve.bench.fake_engine import FakeState
from adaptserve.bench.loadgen import Record, Request, Run, closed_loop, percentile, poisson, popularity, workload
from tests.helpers import API_KEY, RunningGateway


def test_workloads_are_seeded_and_zipf_favours_the_first_adapters() -> None:
    models = [("k", f"a{j}") for j in range(16)]
    first = workload(models, 400, input_words=8, max_tokens=4, popularity_kind="zipf", seed=3)
    assert first == workload(models, 400, input_words=8, max_tokens=4, popularity_kind="zipf", seed=3)
    counts = Counter(r.model for r in first)
    assert counts["a0"] > counts["a1"] > counts["a7"] and counts["a0"] > 400 / 16 * 3
    uniform = Counter(popularity(16, "uniform", random.Random(0), 1600))
    assert len(uniform) == 16 and max(uniform.values()) < 2 * min(uniform.values())
    assert len(first[0].prompt.split()) == 8 + 3  # "Continue this text:" + 8 words
    drawn = workload(models, 50, input_words=8, max_tokens=4, prompts=["one text", "another"], seed=1)
    assert {r.prompt for r in drawn} == {"one text", "another"}  # dataset prompts, not synthetic ones
    with pytest.raises(ValueError, match="uniform or zipf"):
        popularity(4, "pareto", random.Random(0), 1)


def test_percentiles_and_summaries() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0 and percentile([1.0, 2.0, 3.0, 4.0], 99) == 4.0
    records = [
        Record("m", 0.0, ttft=0.1, token_times=[0.1, 0.2, 0.4], end=0.4, output_tokens=3),
        Record("m", 0.0, error="500 boom"),
    ]
    summary = Run(records, wall_s=2.0).summary()
    assert summary["errors"] == 1 and summary["first_error"] == "500 boom"
    assert summary["output_tokens_per_s"] == 1.5 and summary["requests_per_s"] == 0.5
    assert summary["itl_p50_ms"] == pytest.approx(100) and summary["itl_p99_ms"] == pytest.approx(200)


def test_the_load_generator_times_streams_through_the_gateway(start_gateway, fake: FakeState) -> None:
    gateway: RunningGateway = start_gateway()
    fake.token_delay_s = 0.1
    requests = [Request(API_KEY, "default", f"a long enough prompt number {i}", 5) for i in range(6)]
    run = asyncio.run(closed_loop(gateway.url, requests, concurrency=2))
    assert [r.error for r in run.records] == [None] * 6
    for record in run.records:
        assert record.output_tokens == 5 and len(record.token_times) == 5 and record.prompt_tokens > 0
        # Tokens 100 ms apart, each timed on its own (times taken at the end would span
        # nothing): a stall of a loaded machine may bunch some of them, but only one longer
        # than half the stream (0.2 s) brings the five within half their gaps (at 20 ms
        # apart, a 40 ms stall of the client's thread could). None comes before the one before it.
        assert 0 < record.ttft <= record.end - record.start and all(gap >= 0 for gap in record.itl)
        assert record.token_times[-1] - record.token_times[0] >= 0.2
    assert run.summary()["output_tokens_per_s"] == pytest.approx(30 / run.wall_s)
    sent = [r for r in fake.requests if r.get("stream")]
    assert all(r["ignore_eos"] and r["min_tokens"] == r["max_tokens"] == 5 for r in sent)


def test_open_loop_arrivals_keep_their_schedule_whatever_the_server_does(start_gateway, fake: FakeState) -> None:
    gateway: RunningGateway = start_gateway()
    fake.token_delay_s = 0.1  # each request (0.4 s) takes far longer than the gap between arrivals
    requests = [Request(API_KEY, "default", "x", 4) for _ in range(8)]
    run = asyncio.run(poisson(gateway.url, requests, rate=40.0, seed=5))
    rng, due = random.Random(5), list[float]()
    for _ in requests:
        due.append((due[-1] if due else 0.0) + rng.expovariate(40.0))
    records = sorted(run.records, key=lambda r: r.start)
    # Never early, and (a loaded CI machine may run a task late: over 0.5 s was seen) far less late
    # than a closed loop, whose last request would start after the seven before it had taken
    # 0.4 s each (2.8 s in, 2.5 s after it is due).
    assert all(d - 0.01 <= r.start < d + 1.0 for r, d in zip(records, due, strict=True))
    # Not waiting for answers: each request is sent before the one before it has finished.
    assert all(later.start < (earlier.end or 0.0) for earlier, later in itertools.pairwise(records))
    assert max(r.end for r in run.records) > due[-1] + 0.15
