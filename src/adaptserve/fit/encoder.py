"""fit's opt-in `encoder` candidate (`--candidates ...,encoder`): all-MiniLM-L6-v2
fine-tuned in full as a `BertForSequenceClassification` (`training/encoder.py`'s
`fine_tune`, class-balanced, its default epochs) on each outer fold's training part.

As a LoRA candidate does, it holds out at most a quarter of each label's training
examples (`balanced_sample`) to choose on: its inner score is its accuracy there; it
trains on the rest, and is scored on the fold's test part in process (torch, batches of
32; its inputs/s is that in-process figure on this machine's CPU, not a served
engine's). It sits on the verdict's cheap side with the baselines and the heads.

It cannot be hot-served: a classify model is a `models:` entry, started with the
gateway. Where it is fit's choice, `refit` trains it on every example into
`OUT/encoder/` and says how to serve it (the `models:` entry and the `encoder:`
template); fit meanwhile serves the best candidate it can serve.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from adaptserve.datasets import balanced_sample

if TYPE_CHECKING:
    from adaptserve.fit.run import Fit

NAME = "encoder"
BATCH = 32  # texts per forward pass when scoring


def unit(fit: Fit, fold: int) -> dict[str, Any]:
    """The candidate on outer fold `fold`: fine-tuned on its training part but a
    held-out selection part, scored on the selection (inner) and the test part."""
    train, test = fit.folds.train(fold), fit.folds.test(fold)
    seed = fit.config.seed * 1000 + fold
    selection = balanced_sample(train, fit.gold, max(4, 16 // len(fit.labels)), seed, share=0.25)
    fit_on = [i for i in train if i not in set(selection)]
    folder = fit.config.out / "encoders" / f"{NAME}-f{fold}"
    facts = fine_tuned(fit, fit_on, folder, seed)
    texts = [e.text for e in fit.examples]
    chosen_on, _ = predict(folder, [texts[i] for i in selection])
    probabilities, seconds = predict(folder, [texts[i] for i in test])
    right = [int(np.argmax(row)) == fit.labels.index(fit.gold[i]) for i, row in zip(selection, chosen_on, strict=True)]
    inner = {"accuracy": sum(right) / len(right) if right else float("nan"), "n": len(selection)}
    return {
        "kind": "baseline",
        "test": test,
        "selection": selection,
        "probabilities": probabilities,
        "inputs_per_s": len(test) / seconds if seconds else float("nan"),
        "inner": inner | {"indices": selection, "chosen": {"steps": facts["steps"]}},
        "training": facts,
        "trained_on": len(fit_on),
    }


def fine_tuned(fit: Fit, indices: list[int], folder: Path, seed: int) -> dict[str, Any]:
    """MiniLM fine-tuned on the examples at `indices` (class-balanced), written to `folder`."""
    from adaptserve.default_model import resolve_encoder
    from adaptserve.engine_settings import MINILM
    from adaptserve.training.encoder import EncoderConfig, fine_tune, hard_targets, write_manifest

    base = resolve_encoder(MINILM)
    texts = [fit.examples[i].text for i in indices]
    targets = hard_targets([fit.gold[i] for i in indices], fit.labels)
    config = EncoderConfig(seed=seed)
    facts = fine_tune(base, texts, targets, fit.labels, folder, config, balanced=True)
    write_manifest(folder, base=base, texts=texts, source=f"fit {fit.config.source}", config=config, **facts)
    return facts


def predict(folder: Path, texts: list[str]) -> tuple[list[list[float]], float]:
    """The fine-tuned classifier's label probabilities (its `id2label` order: fit's
    labels) for `texts`, in process; → the rows and the seconds the forward passes took."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    rows: list[list[float]] = []
    started = time.perf_counter()
    with torch.no_grad():
        for at in range(0, len(texts), BATCH):
            encoded = tokenizer(
                texts[at : at + BATCH], padding=True, truncation=True, max_length=128, return_tensors="pt"
            )
            rows += torch.softmax(model(**encoded).logits, dim=-1).tolist()
    return rows, time.perf_counter() - started


def refit(fit: Fit, name: str) -> dict[str, Any]:
    """The encoder fine-tuned on every example into OUT/encoder/, and how to serve it:
    the `models:` entry (its own engine: a settings change and a restart) and the
    template that answers from it."""
    folder = fit.config.out / NAME
    facts = fine_tuned(fit, list(range(len(fit.examples))), folder, fit.config.seed)
    model = f"{name}-encoder"
    template = {
        "name": name,
        "kind": "classify",
        "encoder": model,
        "inputs": fit.config.document["inputs"],
        "labels": fit.config.document["labels"],
    }
    entry = {"name": model, "role": "classify", "path": str(folder.resolve())}
    return {"folder": str(folder), "refit_on": len(fit.examples), "models_entry": entry, "template": template} | {
        "training": facts
    }
