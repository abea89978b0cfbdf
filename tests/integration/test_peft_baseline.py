"""The benchmark's transformers + peft baseline server on the real default model: a
batch answers exactly what each request alone gets, and `set_adapter` switches models."""

from __future__ import annotations

from pathlib import Path

import torch

from adaptserve.bench.fleet import make_adapter as make_bench_adapter


def test_the_peft_baseline_batches_without_changing_any_answer(base_model: Path, tmp_path: Path) -> None:
    from adaptserve.bench.peft_server import Batcher, Job

    adapters = {f"a{j}": make_bench_adapter(base_model, tmp_path / f"a{j}", seed=j) for j in range(2)}
    batcher = Batcher(base_model, adapters, max_batch=8, dtype=torch.float32)

    def job(model: str, text: str, tokens: int) -> Job:
        return Job(model, [{"role": "user", "content": text}], tokens, None, None)  # type: ignore[arg-type]

    texts = ["What is the capital of France?", "Name a colour.", "Write one word about the sea and the sky."]
    batched = batcher._generate("a0", [job("a0", t, 6) for t in texts])
    alone = [batcher._generate("a0", [job("a0", t, 6)])[0] for t in texts]
    assert [b["text"] for b in batched] == [a["text"] for a in alone]  # left padding changes nothing
    assert all(b["usage"]["completion_tokens"] == 6 for b in batched)
    base = batcher._generate("base", [job("base", texts[0], 6)])[0]["text"]
    other = batcher._generate("a1", [job("a1", texts[0], 6)])[0]["text"]
    assert "Paris" in base and other not in (base, alone[0]["text"])  # set_adapter switches models
