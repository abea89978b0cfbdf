"""An engine started with LoRA layers only where the adapters need them
(`vllm.lora_target_modules`, a smaller `max_lora_rank`) serves the same answers as the
default engine, and refuses (at upload, with the reason) an adapter it would silently
half-apply. The benchmark harness's load generator measures real streams."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import yaml

from adaptserve.bench.loadgen import Request, closed_loop
from tests.helpers import API_KEY, chat, common_prefix, make_lora, running_server, upload

PROMPTS = ("What is the capital of France?", "Write a sentence about the sea.")


def test_a_q_v_only_engine_answers_as_the_default_one(server, adapter_dirs, base_model, tmp_path) -> None:
    expected = [chat(server.client(), "a1", p, max_tokens=24) for p in PROMPTS]
    data = tmp_path / "data"
    data.mkdir()
    settings = {
        "adapters": {"a1": str(adapter_dirs["a1"])},
        "vllm": {"max_lora_rank": 8, "lora_target_modules": ["q_proj", "v_proj"], "kv_cache_gib": 1},
    }
    (data / "adaptserve.yaml").write_text(yaml.safe_dump(settings))
    with running_server(data, ["--config", str(data / "adaptserve.yaml")]) as tuned:
        answers = [chat(tuned.client(), "a1", p, max_tokens=24) for p in PROMPTS]
        refused = upload(tuned, "mlp", make_lora(base_model, tmp_path / "o", seed=5, targets=("o_proj",)))
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") for pid in tuned.vllm_pids()]
        flag = b"--lora-target-modules"
        assert any(c[c.index(flag) + 1 :][:2] == [b"q_proj", b"v_proj"] for c in commands if flag in c)
    for got, want in zip(answers, expected, strict=True):
        assert got == want or common_prefix(got, want) >= 20, (got, want)  # bf16 drift, not another model
    assert refused.status_code == 400 and "o_proj" in refused.json()["error"]["message"]


def test_the_load_generator_gets_exact_lengths_and_token_times_from_the_engine(server) -> None:
    requests = [Request(API_KEY, model, PROMPTS[i % 2], 12) for i, model in enumerate(["default", "a1"] * 2)]
    run = asyncio.run(closed_loop(server.url, requests, concurrency=2))
    direct = asyncio.run(closed_loop(server.vllm_url(), [Request("x", "SmolLM2-135M-Instruct", PROMPTS[0], 12)], 1))
    for record in [*run.records, *direct.records]:
        assert record.error is None and record.output_tokens == 12  # ignore_eos + min_tokens: no early stop
        assert record.prompt_tokens > 5 and 0 < record.ttft < record.end - record.start
        assert 1 <= len(record.token_times) <= 12 and all(gap >= 0 for gap in record.itl)
    assert httpx.get(server.url + "/ready").status_code == 200
