"""The template accuracy ladder and the classify-vs-chat comparison, in one run against
a running server (`adaptserve serve --templates templates`).

For each bundled dataset (`--split test`: the first N of the test split, in the loader's
fixed order; `--split dev`: N training examples, none a shipped template's, where the
templates' choices are made, so that the test split only measures):
zero-shot, few-shot k=4 and k=8 templates, each scored uncalibrated and calibrated
from the same answers, and the plain `transformers` zero-shot baseline (generate an
answer with the same prompt, then match a label in it). Then, on the same inputs,
requests per second and accuracy of the classify endpoint against a chat completion
that asks the same question and parses the answer.

    python benchmarks/template_ladder.py --url http://127.0.0.1:8000 --key KEY --admin-key ADMIN [--n 300]
    python benchmarks/template_ladder.py ... --split dev --parts ladder \
        --out benchmarks/results/template_ladder_dev.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from adaptserve.bench.classify_race import race, scored, template_side
from adaptserve.datasets import Example, load_dataset
from adaptserve.default_model import resolve_model
from adaptserve.templates.render import Renderer
from adaptserve.templates.spec import TemplateSpec, load_document
from adaptserve.training.distill import match_label

ROOT = Path(__file__).parents[1]
TASKS = {  # dataset -> (zero-shot template, few-shot template, input field)
    "rotten-tomatoes": ("sentiment", "sentiment-fewshot", "text"),
    "trec": ("question-type", "question-type-fewshot", "question"),
}


def apply(url: str, admin_key: str, spec: TemplateSpec) -> None:
    response = httpx.put(
        f"{url}/admin/templates/{spec.name}",
        content=json.dumps(spec.document()),
        headers={"Authorization": f"Bearer {admin_key}"},
        timeout=30,
    )
    response.raise_for_status()


def transformers_baseline(spec: TemplateSpec, examples: list[Example], field: str) -> dict[str, Any]:
    """The tutorial way: the same chat prompt, greedy generate, find a label in the text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model("default", Path.home() / ".local/share/adaptserve/models")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.bfloat16).eval()
    renderer, predicted = Renderer(), []
    started = time.perf_counter()
    for example in examples:
        messages = renderer.messages(spec, {field: example.text})
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        reply = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        predicted.append(match_label(spec, reply) or "(none)")
    elapsed = time.perf_counter() - started
    return scored(spec, examples, predicted, elapsed)


def held_out(dataset: str, split: str, n: int, shipped: list[TemplateSpec], field: str) -> list[Example]:
    """The inputs a ladder scores. `test`: the first n of the test split (what the
    reports measure on). `dev`: n of the train split drawn with a fixed seed, none of
    them a shipped template's example or calibration input: where the templates'
    choices (calibration, shots) are made, so the test split only measures."""
    if split == "test":
        return load_dataset(dataset, "test")[:n]
    inputs = [i for spec in shipped for i in [*(spec.calibration_inputs or []), *(x.inputs for x in spec.examples)]]
    used = {str(i.get(field)) for i in inputs}
    pool = [e for e in load_dataset(dataset, "train") if e.text not in used]
    return random.Random(0).sample(pool, n)


def ladder(args: argparse.Namespace, dataset: str) -> dict[str, Any]:
    zero_name, few_name, field = TASKS[dataset]
    zero = load_document((ROOT / "templates" / f"{zero_name}.yaml").read_text())
    few = load_document((ROOT / "templates" / f"{few_name}.yaml").read_text())
    examples = held_out(dataset, args.split, args.n, [zero, few], field)
    k4 = few.model_copy(update={"name": f"{few_name}-k4", "examples": few.examples[:4]})
    variants = [("zero-shot", zero), ("few-shot k=4", k4), ("few-shot k=8", few)]
    if zero.calibration_inputs:  # the shipped template's own calibration set vs Zhao et al.'s
        free = zero.model_copy(update={"name": f"{zero_name}-content-free", "calibration_inputs": None})
        variants.append(("zero-shot, content-free calibration", free))
    rows: dict[str, Any] = {}
    for label, spec in variants:
        apply(args.url, args.admin_key, spec)
        result = asyncio.run(
            template_side(args.url, args.key, spec.name, examples, field, args.batch, args.concurrency)
        )
        rows[label] = {k: result[k] for k in ("uncalibrated", "calibrated", "throughput")}
        for part in ("uncalibrated", "calibrated"):
            rows[label][part] = {k: v for k, v in rows[label][part].items() if k not in ("per_class", "confusion")}
        print(dataset, label, {p: round(rows[label][p]["accuracy"], 3) for p in ("uncalibrated", "calibrated")})
    if args.split == "test":  # the generate-and-match baseline: a measurement, not a choice
        rows["transformers zero-shot (generate + match)"] = transformers_baseline(zero, examples, field)
    return {"n": len(examples), "split": args.split, "rows": rows}


def endpoint_vs_chat(args: argparse.Namespace) -> dict[str, Any]:
    zero_name, _, field = TASKS["rotten-tomatoes"]
    pool = load_dataset("rotten-tomatoes", "test")
    spec = load_document((ROOT / "templates" / f"{zero_name}.yaml").read_text())
    return race(args.url, args.key, spec, pool, field, args.n_speed, args.concurrency * 8, args.rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--key", required=True)
    parser.add_argument("--admin-key", required=True)
    parser.add_argument("--n", type=int, default=300, help="held-out inputs per dataset")
    parser.add_argument(
        "--split",
        choices=("dev", "test"),
        default="test",
        help="dev: a sample of the train split where the templates' choices are made; test: where they are measured",
    )
    parser.add_argument("--n-speed", type=int, default=128, help="inputs for the endpoint-vs-chat comparison")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the speed comparison")
    parser.add_argument("--parts", default="speed,ladder", help="which parts to run (the others are kept)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "template_ladder.json")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    result: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    parts = set(args.parts.split(","))
    stamp = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("key", "admin_key", "out")},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "commit": commit,
    }
    if "speed" in parts:
        result["speed"] = endpoint_vs_chat(args) | {"run": stamp}
    if "ladder" in parts:
        result["ladder"] = {dataset: ladder(args, dataset) for dataset in TASKS} | {"run": stamp}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(yaml.safe_dump(result, sort_keys=False)[:4000])


if __name__ == "__main__":
    main()
