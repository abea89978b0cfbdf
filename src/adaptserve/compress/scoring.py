"""What the pruning run measures on a model: each decoder layer's importance (ShortGPT's
block influence) and perplexity on held-out text. Models are loaded in float32: the
scores and the distillation teacher are exact, whatever dtype the folder stores."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from adaptserve.compress.data import Batch


def load_model(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model.eval()


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def block_influence(model: Any, batches: Iterable[Batch]) -> list[float]:
    """Layer i's importance: the mean over real tokens (padding excluded) of
    1 − cos(h_i, h_{i+1}), h_i the hidden state entering layer i. A layer that barely
    turns its input scores near 0 and is the cheapest to drop (Men et al., 2024).

    transformers' last hidden state is taken after the final norm, whose per-channel
    weights turn it; the last layer's own output is read before that norm (a pre-hook),
    so the last layer is scored like the others."""
    decoder = model.model
    count = len(decoder.layers)
    before_norm: list[torch.Tensor] = []
    hook = decoder.norm.register_forward_pre_hook(lambda _module, args: before_norm.append(args[0]))
    totals = torch.zeros(count, dtype=torch.float64)
    tokens = 0
    try:
        for ids, mask in batches:
            before_norm.clear()
            with torch.no_grad():
                out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            states = [*out.hidden_states[:-1], before_norm[-1]]
            assert len(states) == count + 1, f"{len(states)} hidden states for {count} layers"
            real = mask.bool()
            for i in range(count):
                cos = F.cosine_similarity(states[i][real].double(), states[i + 1][real].double(), dim=-1)
                totals[i] += (1.0 - cos).sum()
            tokens += int(real.sum())
    finally:
        hook.remove()
    if not tokens:
        raise ValueError("no calibration tokens to score the layers on")
    return (totals / tokens).tolist()


def lowest(scores: list[float], n: int) -> list[int]:
    """The `n` least important layers, in layer order (ties: the earlier layer)."""
    ranked = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    return sorted(ranked[:n])


def perplexity(model: Any, batches: Iterable[Batch]) -> float:
    """exp(mean negative log-likelihood per predicted token) over the batches' rows:
    each row's first token is given, the rest are predicted."""
    nll, count = 0.0, 0
    for ids, mask in batches:
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        logprobs = F.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
        real = mask[:, 1:].bool()
        nll -= float(logprobs[real].double().sum())
        count += int(real.sum())
    return math.exp(nll / count) if count else math.nan
