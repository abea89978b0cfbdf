"""Are the attributions faithful? ERASER's comprehensiveness and sufficiency (DeYoung et
al., 2020) of the top-k units against k random units, on the shipped templates, with
the real engine; and what an attributed call costs next to a plain one.

For each test input: the served answer with `"explain": "attributions"` (word units),
then for k = 10%, 20% and 50% of its words (at least one):
- comprehensiveness = p(label | input) - p(label | input without the k units): high
  when the units were what the answer rested on;
- sufficiency = p(label | input) - p(label | only the k units): low when they suffice.
Random: the same k, units drawn at random (3 draws per input and k). p is the
calibrated probability of the label predicted on the whole input. A self-check, not a
proof: the attributions must beat random on both.

    .venv/bin/python benchmarks/explain_eraser.py --out benchmarks/results/explain
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from adaptserve_client import Classification, Client

from adaptserve.bench.run import free_port
from adaptserve.bench.served import KEY, Served
from adaptserve.datasets import load_dataset
from adaptserve.default_model import resolve_model
from adaptserve.templates.attribution import Unit, keep

TASKS = (("sentiment", "rotten-tomatoes", "text"), ("question-type", "trec", "question"))
FRACTIONS = (0.1, 0.2, 0.5)
DRAWS = 3
BATCH = 8
WHO = ("attributions", "random")


def answers(client: Client, template: str, inputs: list[dict], **options: object) -> tuple[list[Classification], float]:
    """Every input's answer in batches, and the seconds it took."""
    out: list[Classification] = []
    started = time.perf_counter()
    for i in range(0, len(inputs), BATCH):
        out += client.templates.run_batch(template, inputs[i : i + BATCH], **options)
    return out, time.perf_counter() - started


def erased(field: str, text: str, answer: Classification, rng: random.Random) -> list[tuple[str, str, float, dict]]:
    """(k's name, what, fraction, inputs) to score for one answered input."""
    shown = answer.attributions
    assert shown is not None
    units = [Unit(s.field, s.start, s.end) for s in shown.spans]
    every = frozenset(range(len(units)))
    ranked = sorted(every, key=lambda u: shown.spans[u].contribution, reverse=True)
    out = []
    for fraction in FRACTIONS:
        k = max(1, round(fraction * len(units)))
        picks = {"attributions": [frozenset(ranked[:k])]}
        picks["random"] = [frozenset(rng.sample(sorted(every), k)) for _ in range(DRAWS)]
        for who, sets in picks.items():
            for top in sets:
                out.append((who, "comprehensiveness", fraction, keep({field: text}, units, every - top)))
                out.append((who, "sufficiency", fraction, keep({field: text}, units, top)))
    return out


def measure(client: Client, template: str, dataset: str, field: str, n: int) -> dict:
    examples = load_dataset(dataset, "test")[:n]
    inputs = [{field: e.text} for e in examples]
    plain, plain_s = answers(client, template, inputs)
    shown, shown_s = answers(client, template, inputs, explain="attributions")
    rng = random.Random(0)
    jobs = [(i, job) for i, a in enumerate(shown) for job in erased(field, examples[i].text, a, rng)]
    scored, _ = answers(client, template, [job[3] for _, job in jobs])
    drops: dict[tuple[str, str, float], list[float]] = {}
    for (i, (who, what, fraction, _)), answer in zip(jobs, scored, strict=True):
        full = shown[i].scores[shown[i].label]
        drops.setdefault((who, what, fraction), []).append(full - answer.scores[shown[i].label])
    table = {  # averaged over the k's, as ERASER's AOPC
        what: {who: statistics.mean(statistics.mean(drops[(who, what, f)]) for f in FRACTIONS) for who in WHO}
        for what in ("comprehensiveness", "sufficiency")
    }
    by_k = {f"{who}/{what}/{f}": statistics.mean(v) for (who, what, f), v in drops.items()}
    units = [len(a.attributions.spans) for a in shown if a.attributions]
    return {
        "template": template,
        "dataset": dataset,
        "inputs": n,
        "units_median": statistics.median(units),
        "prompts": sum(a.attributions.prompts for a in shown if a.attributions),
        "seconds": {"plain": plain_s, "attributions": shown_s},
        "same_labels": sum(p.label == s.label for p, s in zip(plain, shown, strict=True)),
        "aopc": table,
        "by_k": by_k,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/explain"))
    parser.add_argument("--inputs", type=int, default=40, help="test inputs per template")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="adaptserve-eraser-"))
    base = resolve_model("default", Path.home() / ".local" / "share" / "adaptserve" / "models")
    templates = Path(__file__).resolve().parents[1] / "templates"
    served = Served(base, work, free_port(), base.parent, templates=templates)
    try:
        with Client(served.url, KEY, timeout=900) as client:
            rows = [measure(client, t, d, f, args.inputs) for t, d, f in TASKS]
    finally:
        served.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(rows, args)


def report(rows: list[dict], args: argparse.Namespace) -> None:
    lines = [
        "# Attributions: ERASER's self-checks\n",
        f"`.venv/bin/python benchmarks/explain_eraser.py --inputs {args.inputs}`: leave-one-out occlusion over "
        f"words on the first {args.inputs} test inputs of each task, the shipped templates on the default "
        "model (vLLM CPU). Comprehensiveness and sufficiency averaged over k = 10%, 20%, 50% of the words "
        f"(AOPC); random: the same k, {DRAWS} draws. Higher comprehensiveness and lower sufficiency are better.\n",
        "| template | comprehensiveness: attributions | random | sufficiency: attributions | random "
        "| words (median) | prompts per input | attributed call / plain call (time) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c, s, t = r["aopc"]["comprehensiveness"], r["aopc"]["sufficiency"], r["seconds"]
        lines.append(
            f"| {r['template']} | {c['attributions']:.3f} | {c['random']:.3f} | {s['attributions']:.3f} "
            f"| {s['random']:.3f} | {r['units_median']:.0f} | {r['prompts'] / r['inputs']:.1f} "
            f"| ×{t['attributions'] / t['plain']:.1f} ({t['attributions']:.1f} s / {t['plain']:.1f} s) |"
        )
    beats = all(
        r["aopc"]["comprehensiveness"]["attributions"] > r["aopc"]["comprehensiveness"]["random"]
        and r["aopc"]["sufficiency"]["attributions"] < r["aopc"]["sufficiency"]["random"]
        for r in rows
    )
    lines.append(f"\nAttributions beat random on both, on every template: **{'yes' if beats else 'no'}**.")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eraser.md").write_text("\n".join(lines) + "\n")
    (args.out / "eraser.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
