"""`adaptserve eval`: run a labelled set through a classify template endpoint and
report accuracy, macro-F1, per-class precision/recall, the confusion matrix, expected
calibration error, throughput and latency, as a JSON report, a PNG and a table.

A calibrated template is also scored without calibration from the same answers (the
raw label log-probabilities come back with `explain`), so one run shows both.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaptserve_client import AdaptserveError, AsyncClient, Classification, Client, Template

from adaptserve.datasets import Example
from adaptserve.errors import ConfigurationError
from adaptserve.templates.calibration import normalise


@dataclass
class Predictions:
    labels: list[str]
    gold: list[str] = field(default_factory=list)
    predicted: list[str] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    raw_predicted: list[str] = field(default_factory=list)  # argmax before calibration
    raw_confidence: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # per call
    prompt_tokens: list[int] = field(default_factory=list)


def metrics(labels: list[str], gold: list[str], predicted: list[str], confidence: list[float]) -> dict[str, Any]:
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, predicted, strict=True):
        matrix[index[g]][index[p]] += 1
    per_class = {}
    for label, i in index.items():
        tp = matrix[i][i]
        predicted_n = sum(row[i] for row in matrix)
        support = sum(matrix[i])
        precision = tp / predicted_n if predicted_n else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    present = [c for c in per_class.values() if c["support"]]
    correct = [g == p for g, p in zip(gold, predicted, strict=True)]
    return {
        "n": len(gold),
        "accuracy": sum(correct) / len(gold) if gold else 0.0,
        "macro_f1": sum(c["f1"] for c in present) / len(present) if present else 0.0,
        "ece": expected_calibration_error(confidence, correct),
        "per_class": per_class,
        "confusion": {"labels": labels, "rows_gold_cols_predicted": matrix},
    }


def expected_calibration_error(confidence: list[float], correct: list[bool], bins: int = 10) -> float:
    """Σ over equal-width confidence bins of |accuracy − mean confidence| × share of inputs."""
    total, n = 0.0, len(confidence)
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [i for i, c in enumerate(confidence) if lo < c <= hi or (b == 0 and c == 0)]
        if members:
            accuracy = sum(correct[i] for i in members) / len(members)
            mean_conf = sum(confidence[i] for i in members) / len(members)
            total += abs(accuracy - mean_conf) * len(members) / n
    return total


def reliability(confidence: list[float], correct: list[bool], bins: int = 10) -> list[dict[str, float]]:
    out = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [i for i, c in enumerate(confidence) if lo < c <= hi]
        if members:
            out.append(
                {
                    "bin": (lo + hi) / 2,
                    "accuracy": sum(correct[i] for i in members) / len(members),
                    "confidence": sum(confidence[i] for i in members) / len(members),
                    "count": len(members),
                }
            )
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


class Evaluator:
    """Sends the set in batches over `concurrency` connections (the client retries 429/503)."""

    def __init__(self, url: str, key: str, template: str, batch: int = 16, concurrency: int = 2) -> None:
        self.url, self.key, self.template = url.rstrip("/"), key, template
        self.batch, self.concurrency = batch, concurrency

    def describe(self) -> Template:
        try:
            with Client(self.url, self.key, timeout=30) as client:
                return client.templates.get(self.template)
        except AdaptserveError as exc:
            raise ConfigurationError(f"template {self.template}: {exc}") from exc

    async def run(self, examples: list[Example], input_field: str, progress: Any = None) -> Predictions:
        described = self.describe()
        if described.kind != "classify":
            raise ConfigurationError(f"template {self.template} is not a classify template")
        unknown = sorted({e.label for e in examples} - set(described.labels))
        if unknown:
            raise ConfigurationError(f"labels {unknown} are not labels of {self.template} ({described.labels})")
        inputs = [{input_field: e.text} for e in examples]
        answers, latencies = await self.explained(inputs, progress)
        out = Predictions(described.labels, latencies=latencies)
        for example, result in zip(examples, answers, strict=True):
            _add(out, example, result, described.raw.get("temperature", 1.0))
        return out

    async def explained(
        self, inputs: list[dict[str, Any]], progress: Any = None, explain: bool | str = True
    ) -> tuple[list[Classification], list[float]]:
        """Every input's answer, with `explain` (the label log-probabilities before
        calibration; `"attributions"` adds those), in order; and each call's latency."""
        chunks = [inputs[i : i + self.batch] for i in range(0, len(inputs), self.batch)]
        answers: list[list[Any]] = [[] for _ in chunks]
        latencies: list[float] = []
        gate = asyncio.Semaphore(self.concurrency)
        async with AsyncClient(self.url, self.key, timeout=600, max_retries=5) as client:

            async def one(i: int) -> None:
                async with gate:
                    started = time.perf_counter()
                    answers[i] = await client.templates.run_batch(self.template, chunks[i], explain=explain)
                    latencies.append(time.perf_counter() - started)
                    if progress is not None:
                        progress.update(len(chunks[i]))

            try:
                await asyncio.gather(*(one(i) for i in range(len(chunks))))
            except AdaptserveError as exc:
                raise ConfigurationError(f"the server refused a batch: {exc}") from exc
        out: list[Classification] = []
        for chunk, results in zip(chunks, answers, strict=True):
            for item, result in zip(chunk, results, strict=True):
                if not isinstance(result, Classification):
                    raise ConfigurationError(f"the server failed on {item}: {result}")
                out.append(result)
        return out, latencies


def _add(out: Predictions, example: Example, result: Classification, temperature: float) -> None:
    out.gold.append(example.label)
    out.predicted.append(result.label)
    out.confidence.append(result.confidence)
    explain = result.explain or {}
    if explain.get("scoring") in ("head", "encoder"):  # a head or an encoder: nothing calibrates its answer
        probs = dict(result.scores)
    else:
        raw = explain["logprobs"]  # before calibration, over the labels
        probs = dict(zip(raw, normalise(list(raw.values()), temperature), strict=True))
        out.prompt_tokens.append(explain["prompt_tokens"])
    top = max(probs, key=probs.__getitem__)
    out.raw_predicted.append(top)
    out.raw_confidence.append(probs[top])


def report(predictions: Predictions, calibrated: bool, elapsed_s: float, settings: dict[str, Any]) -> dict[str, Any]:
    p = predictions
    out: dict[str, Any] = {"settings": settings, "labels": p.labels}
    out["uncalibrated"] = metrics(p.labels, p.gold, p.raw_predicted, p.raw_confidence)
    if calibrated:
        out["calibrated"] = metrics(p.labels, p.gold, p.predicted, p.confidence)
    correct = [g == q for g, q in zip(p.gold, p.predicted, strict=True)]
    out["reliability"] = reliability(p.confidence, correct)
    out["throughput"] = {
        "inputs": len(p.gold),
        "seconds": elapsed_s,
        "inputs_per_s": len(p.gold) / elapsed_s if elapsed_s else math.nan,
        "call_latency_s": {q: percentile(p.latencies, q) for q in (50, 90, 99)},
        "mean_prompt_tokens": sum(p.prompt_tokens) / len(p.prompt_tokens) if p.prompt_tokens else 0,
    }
    return out


def against_baselines(predictions: Predictions, result: dict[str, Any]) -> dict[str, Any] | None:
    """The served answers against the baseline with the best inner (training-part)
    score, paired on the evaluated examples (`fit/verdict.py`): the difference, its 95%
    interval, McNemar's p, and "wins" only where the interval excludes 0."""
    from adaptserve.fit.verdict import compare

    found = {k: v for k, v in (result.get("baselines") or {}).items() if "predicted" in v}
    if not found or not predictions.gold:
        return None
    name = max(found, key=lambda k: _finite(found[k].get("inner_accuracy")))
    gold = predictions.gold
    served = [g == q for g, q in zip(gold, predictions.predicted, strict=True)]
    base = [g == q for g, q in zip(gold, found[name]["predicted"], strict=True)]
    template = result["settings"].get("template", "template")
    speed = result["throughput"]["inputs_per_s"]
    return compare(template, served, speed, name, base, found[name].get("inputs_per_s", math.nan)).__dict__


def _finite(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else -1.0


def table(result: dict[str, Any]) -> str:
    rows = ["| scores | accuracy | macro-F1 | ECE |", "|---|---|---|---|"]
    for name in ("uncalibrated", "calibrated"):
        if name in result:
            m = result[name]
            rows.append(f"| {name} | {m['accuracy']:.3f} | {m['macro_f1']:.3f} | {m['ece']:.3f} |")
    for name, m in (result.get("baselines") or {}).items():
        rows.append(
            f"| baseline {name} ({m['trained_on']}) | {m['accuracy']:.3f} | {m['macro_f1']:.3f} | {m['ece']:.3f} |"
        )
    if result.get("verdict"):
        rows += ["", result["verdict"]["text"]]
    best = result.get("calibrated") or result["uncalibrated"]
    rows += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for label, c in best["per_class"].items():
        rows.append(f"| {label} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |")
    t = result["throughput"]
    rows.append(
        f"\n{t['inputs']} inputs in {t['seconds']:.1f} s: {t['inputs_per_s']:.2f} inputs/s, "
        f"call latency p50 {t['call_latency_s'][50]:.2f} s, p99 {t['call_latency_s'][99]:.2f} s, "
        f"{t['mean_prompt_tokens']:.0f} prompt tokens per input"
    )
    return "\n".join(rows)


def plot(result: dict[str, Any], path: Path) -> None:
    """The confusion matrix and the reliability diagram, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = result.get("calibrated") or result["uncalibrated"]
    labels, matrix = best["confusion"]["labels"], best["confusion"]["rows_gold_cols_predicted"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8))
    left.imshow(matrix, cmap="Blues")
    left.set_xticks(range(len(labels)), labels, rotation=45)
    left.set_yticks(range(len(labels)), labels)
    left.set_xlabel("predicted")
    left.set_ylabel("gold")
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            left.text(j, i, str(count), ha="center", va="center", fontsize=8)
    left.set_title(f"confusion (accuracy {best['accuracy']:.3f})")
    bins = result["reliability"]
    right.plot([0, 1], [0, 1], "k--", linewidth=1)
    right.bar([b["bin"] for b in bins], [b["accuracy"] for b in bins], width=0.09, alpha=0.7, label="accuracy")
    right.plot([b["bin"] for b in bins], [b["confidence"] for b in bins], "o-", color="C1", label="confidence")
    right.set_xlim(0, 1)
    right.set_ylim(0, 1)
    right.set_xlabel("confidence")
    right.set_title(f"reliability (ECE {best['ece']:.3f})")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: dict[str, Any], out_dir: Path, stem: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / f"{stem}.json", out_dir / f"{stem}.png"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, png_path)
    return json_path, png_path
