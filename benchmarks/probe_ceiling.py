"""How much of a label the frozen base model can see: a linear probe (logistic
regression on the last hidden state at the answer position of the template's prompt)
trained on N labelled examples, for several N, on the same held-out inputs as
`adaptation_report.py`. If the probe with thousands of examples is no better than a
256-example adapter, the ceiling is the base model's representation, not the recipe.

    python benchmarks/probe_ceiling.py [--sizes 64 256 1024 4096] [--n-test 500] [--datasets rotten-tomatoes trec]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch
from served import MODELS_DIR, ROOT
from template_ladder import TASKS  # dataset -> (zero-shot, few-shot template, input field)

from adaptserve.datasets import load_dataset
from adaptserve.default_model import resolve_model
from adaptserve.templates.spec import load_document
from adaptserve.training.task import Task


@torch.no_grad()
def features(model, task: Task, field: str, texts: list[str], size: int = 32) -> torch.Tensor:
    """The final hidden state at the last prompt position (where the answer starts)."""
    out = []
    for start in range(0, len(texts), size):
        prompts = [task.prompt({field: t}) for t in texts[start : start + size]]
        width = max(map(len, prompts))
        ids = torch.zeros(len(prompts), width, dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, : len(p)], mask[i, : len(p)] = torch.tensor(p), 1
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        out.append(hidden[torch.arange(len(prompts)), mask.sum(1) - 1].float())
    return torch.cat(out)


def probe(x: torch.Tensor, y: torch.Tensor, classes: int, test_x: torch.Tensor, test_y: torch.Tensor) -> float:
    """L2-regularised logistic regression (LBFGS) on standardised features."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, test_x = (x - mean) / std, (test_x - mean) / std
    weights = torch.zeros(x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, bias], max_iter=300)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weights + bias, y) + 1e-2 * weights.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(((test_x @ weights + bias).argmax(1) == test_y).float().mean())


def main() -> None:
    from transformers import AutoModelForCausalLM

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024, 4096])
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--datasets", nargs="+", default=["rotten-tomatoes"], choices=list(TASKS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "probe_ceiling.json")
    args = parser.parse_args()
    base = resolve_model("default", MODELS_DIR)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    results = {}
    for dataset in args.datasets:
        name, _, field = TASKS[dataset]
        spec = load_document((ROOT / "templates" / f"{name}.yaml").read_text())
        task, labels = Task.load(base, spec), [label.name for label in spec.labels]
        train = load_dataset(dataset, "train")[: max(args.sizes)]
        test = load_dataset(dataset, "test")[: args.n_test]
        started = time.perf_counter()
        train_x = features(model, task, field, [e.text for e in train])
        test_x = features(model, task, field, [e.text for e in test])
        train_y = torch.tensor([labels.index(e.label) for e in train])
        test_y = torch.tensor([labels.index(e.label) for e in test])
        rows = {}
        for n in args.sizes:
            n = min(n, len(train))
            rows[str(n)] = probe(train_x[:n], train_y[:n], len(labels), test_x, test_y)
        results[dataset] = {"probe_accuracy_by_examples": rows, "seconds": time.perf_counter() - started}
        print(dataset, json.dumps(results[dataset]), flush=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"settings": settings, "commit": commit, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
