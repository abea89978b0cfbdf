"""What `fit` found, for people: the choice (the best LLM candidate, and whether a
baseline beats it, by how much), a Markdown table, and an HTML page with a PNG.

Candidates are compared by accuracy on the folds every candidate ran (LoRA may have
run on fewer folds than the cheap candidates, within the budget); ties go to the higher
macro-F1 over each candidate's own folds.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Decision:
    llm: str | None  # the best LLM candidate: the one served
    baseline: str | None  # the best baseline
    margin: float  # the LLM's accuracy minus the baseline's, on the common folds
    verdict: str


def decide(rows: list[dict[str, Any]]) -> Decision:
    def key(row: dict[str, Any]) -> tuple[float, float]:
        return (row["accuracy_common_folds"], row["macro_f1"])

    llm = max((r for r in rows if r["kind"] == "llm"), key=key, default=None)
    base = max((r for r in rows if r["kind"] == "baseline"), key=key, default=None)
    if llm is None:
        return Decision(None, base["candidate"] if base else None, math.nan, "no LLM candidate ran")
    if base is None:
        return Decision(llm["candidate"], None, math.nan, f"{llm['candidate']} is the best (no baseline ran)")
    a, b = llm["accuracy_common_folds"], base["accuracy_common_folds"]
    margin = a - b
    if margin >= 0:
        verdict = (
            f"{llm['candidate']} ({a:.3f}) matches or beats the best baseline, {base['candidate']} "
            f"({b:.3f}), by {margin * 100:.1f} points"
        )
    else:
        verdict = (
            f"the baseline {base['candidate']} ({b:.3f}) beats the best LLM candidate, {llm['candidate']} "
            f"({a:.3f}), by {-margin * 100:.1f} points: on this task an LLM is not worth it yet"
        )
    return Decision(llm["candidate"], base["candidate"], margin, verdict)


def _fmt(value: float, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _scoring(row: dict[str, Any]) -> str:
    chosen = [s for s in row["scoring"] if s]
    if not chosen:
        return ""
    first = chosen[0]
    return f"{first['calibration'] or 'none'}, T={first['temperature']:g}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| candidate | folds | n | accuracy | accuracy (common folds) | macro-F1 | ECE | inputs/s | "
        "latency p50 (s) | calibration (fold 0) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: -r["accuracy_common_folds"]):
        lines.append(
            f"| {r['candidate']} | {','.join(map(str, r['folds']))} | {r['n']} | {_fmt(r['accuracy'])} | "
            f"{_fmt(r['accuracy_common_folds'])} | {_fmt(r['macro_f1'])} | {_fmt(r['ece'])} | "
            f"{_fmt(r['inputs_per_s'], 1)} | {_fmt(r['latency_p50_s'], 2)} | {_scoring(r)} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = sorted(rows, key=lambda r: r["accuracy_common_folds"])
    colors = ["C0" if r["kind"] == "llm" else "C7" for r in ordered]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(ordered) + 1.2))
    ax.barh([r["candidate"] for r in ordered], [r["accuracy_common_folds"] for r in ordered], color=colors)
    for i, r in enumerate(ordered):
        ax.text(r["accuracy_common_folds"] + 0.005, i, f"{r['accuracy_common_folds']:.3f}", va="center", fontsize=8)
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("held-out accuracy on the folds every candidate ran (blue: LLM, grey: baseline)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(out: Path, manifest: dict[str, Any]) -> list[Path]:
    """report.md, report.html (with the PNG inline), report.png and fit-manifest.json."""
    rows, decision = manifest["candidates"], manifest["decision"]
    png = out / "report.png"
    plot(rows, png)
    md = "\n\n".join([f"# fit: {manifest['data']['source']}", decision["verdict"], table(rows), _served(manifest)])
    (out / "report.md").write_text(md + "\n")
    image = base64.b64encode(png.read_bytes()).decode()
    page = (
        "<!doctype html><meta charset=utf-8><title>adaptserve fit</title>"
        f"<h1>fit: {html.escape(manifest['data']['source'])}</h1><p>{html.escape(decision['verdict'])}</p>"
        f"{_html_table(rows)}<p>{html.escape(_served(manifest))}</p>"
        f'<img alt="accuracy per candidate" src="data:image/png;base64,{image}">'
    )
    (out / "report.html").write_text(page)
    (out / "fit-manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return [out / "report.md", out / "report.html", png, out / "fit-manifest.json"]


def _served(manifest: dict[str, Any]) -> str:
    served = manifest.get("served")
    if not served:
        return "Nothing was served."
    return (
        f"Served: template `{served['template']}` for tenant `{served['tenant']}` ({served['candidate']}, "
        f"model `{served['model']}`). Fold 0 through the served endpoint: accuracy "
        f"{served['fold0_accuracy_served']:.3f} (fit measured {served['fold0_accuracy_measured']:.3f}; "
        f"the same label on {served['fold0_agreement'] * 100:.0f}% of inputs)."
    )


def _html_table(rows: list[dict[str, Any]]) -> str:
    lines = table(rows).splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    body = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table border=1 cellpadding=4><tr>{cells}</tr>{trs}</table>"
