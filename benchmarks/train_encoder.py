"""`adaptserve train --method encoder` on gold labels, measured in process: all-MiniLM-L6-v2
fine-tuned on N label-balanced Rotten Tomatoes training sentences, then its accuracy on
the same 400 label-balanced test sentences as `distill_head.py` and
`distill_encoder.py` (transformers in this process, no server: the served engine gives
the same probabilities, `tests/integration/test_encoders.py`), beside the figures those
measured for the LLM template and the heads.

    .venv/bin/python benchmarks/train_encoder.py --out benchmarks/results/distill-encoder/train-256.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from adaptserve.datasets import load_dataset
from adaptserve.fit.verdict import accuracy_interval

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from distill_head import LABELS, test_sentences  # noqa: E402  (the same test sentences)


def main() -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=256, help="label-balanced training sentences")
    parser.add_argument("--test", type=int, default=400)
    parser.add_argument("--epochs", type=int, help="default: train's (3)")
    args = parser.parse_args()
    examples = list(load_dataset("rotten-tomatoes", "train"))
    rows = [e for label in LABELS for e in [x for x in examples if x.label == label][: args.train // 2]]
    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "train.jsonl", Path(tmp) / "rt-encoder"
        data.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in rows))
        cmd = [sys.executable, "-m", "adaptserve", "train", "--method", "encoder", "--data", str(data)]
        cmd += ["--name", "rt-encoder", "--out", str(out), "--batch-size", "16"]
        cmd += ["--epochs", str(args.epochs)] if args.epochs else []
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        trained = json.loads(done.stdout) | {"seconds": time.perf_counter() - started}
        texts, gold = test_sentences(args.test)
        model = AutoModelForSequenceClassification.from_pretrained(out).eval()
        tokenizer = AutoTokenizer.from_pretrained(out)
        predicted: list[str] = []
        with torch.no_grad():
            for at in range(0, len(texts), 64):
                batch = tokenizer(texts[at : at + 64], padding=True, truncation=True, return_tensors="pt")
                predicted += [model.config.id2label[int(i)] for i in model(**batch).logits.argmax(-1)]
    correct = [p == g for p, g in zip(predicted, gold, strict=True)]
    low, high = accuracy_interval(correct)
    trained.pop("models_entry", None)
    trained.pop("folder", None)
    result = {
        "command": " ".join(["benchmarks/train_encoder.py", *sys.argv[1:]]),
        "trained": trained,
        "accuracy": sum(correct) / len(correct),
        "low": low,
        "high": high,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
