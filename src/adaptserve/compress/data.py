"""The text a pruning run reads and the token batches it feeds the model: calibration
and healing text from a bundled dataset's training split or a file (never a test split:
held-out perplexity is measured there), one row per text for scoring and perplexity,
packed windows for healing, and the order healing reads them in."""

from __future__ import annotations

import functools
import hashlib
import json
import random
from collections.abc import Iterator
from typing import Any

import torch

from adaptserve.datasets import DATASETS, load_dataset
from adaptserve.quantize.env import calibration_lines

HELD_OUT_DATASET = "rotten-tomatoes"  # a file's texts have no test split: perplexity is measured here
Batch = tuple[torch.Tensor, torch.Tensor]  # input ids, attention mask


def texts(source: str, limit: int | None = None) -> list[str]:
    """A bundled dataset's training split, or a file's texts (text lines, or JSONL of
    {"text"} or {"messages"}, whose contents are joined), in a fixed order."""
    lines = calibration_lines(source, limit if limit is not None else 10**9)
    return ["\n".join(str(m["content"]) for m in line["messages"]) for line in lines]


def held_out(source: str, count: int) -> tuple[str, list[str]]:
    """(dataset, texts): the last `count` of the calibration dataset's test split (the
    texts benchmarks/quantize_report.py reads), or of rotten-tomatoes' for a file."""
    name = source if source in DATASETS else HELD_OUT_DATASET
    test = load_dataset(name, "test")
    return name, [e.text for e in test[max(0, len(test) - count) :]]


def digest(items: list[str]) -> str:
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def pad_id(tokenizer: Any) -> int:
    for token in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token is not None:
            return int(token)
    return 0


def rows(tokenizer: Any, items: list[str], max_length: int) -> list[list[int]]:
    """One row of token ids per text (cut at `max_length`); rows of one token, which
    predict nothing, are left out."""
    encoded = tokenizer(items, truncation=True, max_length=max_length)["input_ids"]
    return [list(row) for row in encoded if len(row) >= 2]


def windows(tokenizer: Any, items: list[str], max_length: int) -> list[list[int]]:
    """The texts' tokens end to end, each text closed by the end-of-sequence token, cut
    into windows of `max_length`: no padding, except in the last window."""
    stream: list[int] = []
    close = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for row in tokenizer(items)["input_ids"]:
        stream += [*row, *close]
    cut = [stream[i : i + max_length] for i in range(0, len(stream), max_length)]
    return [w for w in cut if len(w) >= 2]


def padded(batch: list[list[int]], pad: int) -> Batch:
    """Right-padded ids and their attention mask (1 on tokens, 0 on padding)."""
    width = max(len(row) for row in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, row in enumerate(batch):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def batches(all_rows: list[list[int]], size: int, pad: int) -> Iterator[Batch]:
    for start in range(0, len(all_rows), size):
        yield padded(all_rows[start : start + size], pad)


def batch_at(step: int, count: int, size: int, seed: int) -> list[int]:
    """The window indices of healing step `step` (from 0): the windows in a seeded
    shuffle, shuffled again on every pass. A function of the step alone, so a resumed
    run reads exactly what an uninterrupted one would."""
    picked = []
    for position in range(step * size, (step + 1) * size):
        epoch, index = divmod(position, count)
        picked.append(_order(seed, epoch, count)[index])
    return picked


@functools.lru_cache(maxsize=4)
def _order(seed: int, epoch: int, count: int) -> tuple[int, ...]:
    order = list(range(count))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return tuple(order)
