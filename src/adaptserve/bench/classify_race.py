"""Scenario 4: a classify template endpoint against a chat completion that asks the same
question (the template's own messages) and parses a label from the answer. The same
inputs go to both sides, requests/s and accuracy each; rounds alternate which side goes
first (the second finds the inputs in the prefix cache) and each round has fresh inputs."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from adaptserve_client import AsyncClient

from adaptserve.datasets import Example
from adaptserve.evaluation import Evaluator, metrics, report
from adaptserve.templates.render import Renderer
from adaptserve.templates.spec import TemplateSpec
from adaptserve.training.distill import match_label


def scored(spec: TemplateSpec, examples: list[Example], predicted: list[str], elapsed: float) -> dict[str, Any]:
    """Accuracy and macro-F1 of parsed answers; an unparsed answer counts as wrong."""
    labels = [label.name for label in spec.labels]
    gold = [e.label for e in examples]
    valid = [p if p in labels else next(iter(set(labels) - {g})) for p, g in zip(predicted, gold, strict=True)]
    result = metrics(labels, gold, valid, [1.0] * len(gold))
    result["unparsed"] = sum(p not in labels for p in predicted)
    result["inputs_per_s"] = len(examples) / elapsed
    return {k: v for k, v in result.items() if k not in ("per_class", "confusion", "ece")}


async def chat_side(
    url: str, key: str, spec: TemplateSpec, examples: list[Example], field: str, conc: int, model: str = "default"
) -> dict[str, Any]:
    """Chat completions with the template's own messages (10 tokens, greedy), parsed for a label."""
    renderer, gate = Renderer(), asyncio.Semaphore(conc)
    predicted: list[str] = [""] * len(examples)
    async with AsyncClient(url, key, timeout=600) as client:

        async def one(i: int) -> None:
            async with gate:
                reply = await client.openai.chat.completions.create(
                    model=model,
                    messages=renderer.messages(spec, {field: examples[i].text}),
                    max_tokens=10,
                    temperature=0,
                )
                predicted[i] = match_label(spec, reply.choices[0].message.content or "") or "(none)"

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(len(examples))))
    return scored(spec, examples, predicted, time.perf_counter() - started)


async def template_side(
    url: str, key: str, name: str, examples: list[Example], field: str, batch: int, conc: int
) -> dict[str, Any]:
    evaluator = Evaluator(url, key, name, batch=batch, concurrency=conc)
    started = time.perf_counter()
    predictions = await evaluator.run(examples, field)
    return report(predictions, True, time.perf_counter() - started, {})


def race(
    url: str, key: str, spec: TemplateSpec, pool: list[Example], field: str, n: int, concurrency: int, rounds: int
) -> dict[str, Any]:
    """`rounds` rounds of `n` fresh inputs from the start of `pool`; its last 8 inputs
    warm both paths up first (calibration, the first log-probabilities request)."""
    asyncio.run(template_side(url, key, spec.name, pool[-8:], field, 1, 8))  # calibration, first logprobs
    asyncio.run(chat_side(url, key, spec, pool[-8:], field, 8))
    out: dict[str, Any] = {}
    for r in range(rounds):
        examples = pool[r * n : (r + 1) * n]
        classify_call = template_side(url, key, spec.name, examples, field, 1, concurrency)
        chat_call = chat_side(url, key, spec, examples, field, concurrency)
        if r % 2:
            chat, one = asyncio.run(chat_call), asyncio.run(classify_call)
        else:
            one, chat = asyncio.run(classify_call), asyncio.run(chat_call)
        out[f"round {r}"] = {
            "classify endpoint (one input per request)": {
                "inputs_per_s": one["throughput"]["inputs_per_s"],
                "accuracy": one["calibrated"]["accuracy"],
            },
            "chat completion + parse": {"inputs_per_s": chat["inputs_per_s"], "accuracy": chat["accuracy"]},
        }
    sides = next(iter(out.values())).keys()
    out["median"] = {
        side: {k: statistics.median(r[side][k] for r in out.values()) for k in ("inputs_per_s", "accuracy")}
        for side in sides
    }
    return out
