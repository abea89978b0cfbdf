"""A model's label scores and losses in-process, the way the server scores: the
loss on target tokens only, and each label's log-probability through the template's
scoring plan (`templates/classify.py`), for training, its held-out slice and reports.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from adaptserve.templates.calibration import argmax
from adaptserve.training.task import Item, Task, Tokens


def target_logprobs(model: Any, items: list[Item]) -> list[torch.Tensor]:
    """Per item, log-softmax rows over the vocabulary at the positions that predict
    its target tokens: the projection to the vocabulary runs only there. A soft
    prompt's virtual tokens go first (`soft_prompt`)."""
    inner = model.get_base_model()
    soft = soft_prompt(model)
    n = 0 if soft is None else soft.shape[0]
    width = max(len(it.prompt) + len(it.target) for it in items)
    ids = torch.zeros(len(items), width, dtype=torch.long)
    mask = torch.zeros(len(items), n + width, dtype=torch.long)
    rows: list[int] = []
    cols: list[int] = []
    for i, it in enumerate(items):
        seq = [*it.prompt, *it.target]
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : n + len(seq)] = 1
        rows += [i] * len(it.target)
        cols += range(n + len(it.prompt) - 1, n + len(seq) - 1)
    embeds = inner.get_input_embeddings()(ids.to(inner.device))
    if soft is not None:
        embeds = torch.cat([soft.to(embeds.dtype).expand(len(items), -1, -1), embeds], dim=1)
    hidden = inner.model(inputs_embeds=embeds, attention_mask=mask.to(inner.device)).last_hidden_state
    logprobs = F.log_softmax(inner.lm_head(hidden[rows, cols]).float(), dim=-1).cpu()
    return list(logprobs.split([len(it.target) for it in items]))


def soft_prompt(model: Any) -> torch.Tensor | None:
    """A prompt-tuning model's virtual tokens (n × hidden), which go before every
    prompt, as peft places them; None for an adapter of weights."""
    config = getattr(model, "active_peft_config", None)
    if config is None or not config.is_prompt_learning:
        return None
    return model.prompt_encoder[model.active_adapter].embedding.weight


def item_loss(task: Task, item: Item, rows: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of one item. With a teacher distribution over labels whose
    first tokens differ, the first position's target is that distribution (KL to the
    teacher plus a constant); the rest of the answer is the teacher's top label."""
    targets = torch.tensor(item.target)
    nll = -rows[torch.arange(len(item.target)), targets]
    if item.soft is not None and task.first_token_path:
        firsts = torch.tensor([tokens[0] for tokens in task.label_tokens])
        nll[0] = -(torch.tensor(item.soft) * rows[0, firsts]).sum()
    return nll.sum()


def evaluate(model: Any, task: Task, items: list[Item]) -> dict[str, float]:
    """Held-out loss, and for classify items the accuracy of label scoring."""
    if not items:
        return {}
    loss, scores = scan(model, task, items)
    out = {"loss": loss}
    if task.label_tokens:
        out["accuracy"] = sum(argmax(s) == it.label for s, it in zip(scores, items, strict=True)) / len(items)
    return out


@torch.no_grad()
def scan(model: Any, task: Task, items: list[Item], size: int = 16) -> tuple[float, list[list[float]]]:
    """→ (mean loss per target token, each classify item's label log-probabilities:
    at the first token, or each label's whole answer when first tokens are shared)."""
    model.eval()
    loss, tokens, scores = 0.0, 0, []
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        rows = target_logprobs(model, chunk)
        loss += sum(float(item_loss(task, it, r)) for it, r in zip(chunk, rows, strict=True))
        tokens += sum(len(it.target) for it in chunk)
        if task.label_tokens:
            scores += label_scores(model, task, chunk, rows)
    model.train()
    return loss / tokens, scores


def label_scores(model: Any, task: Task, items: list[Item], rows: list[torch.Tensor]) -> list[list[float]]:
    """The server's scoring plan, in-process: each label's answer log-probability from
    one read per distinct answer prefix. An item's own target already gives the reads
    along its answer; the other prefixes are read in one more batch."""
    plan = task.plan
    assert plan is not None
    reads: list[dict[Tokens, torch.Tensor]] = [{} for _ in items]
    needed: list[tuple[int, Tokens]] = []
    for i, (item, row) in enumerate(zip(items, rows, strict=True)):
        for prefix in plan.prefixes:
            if len(prefix) < len(item.target) and item.target[: len(prefix)] == prefix:
                reads[i][prefix] = row[len(prefix)]
            else:
                needed.append((i, prefix))
    for start in range(0, len(needed), 32):
        part = needed[start : start + 32]
        extra = target_logprobs(model, [Item((*items[i].prompt, *prefix), (0,)) for i, prefix in part])
        for (i, prefix), row in zip(part, extra, strict=True):
            reads[i][prefix] = row[0]
    out: list[list[float]] = []
    for per_prefix in reads:
        at = [{t: float(per_prefix[p][t]) for t in plan.token_ids} for p in plan.prefixes]
        out.append(plan.label_logprobs(at))
    return out
