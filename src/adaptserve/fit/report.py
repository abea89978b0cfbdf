"""What `fit` found, for people: the decision, a Markdown table, and an HTML page
with a PNG.

The decision (`decide`) compares fit's own picks, made the nested way
(`nested.py`): in each outer fold the LLM candidate and the baseline with the best
score inside the fold's training part, both scored on that fold's test examples. The
two picks are compared on the examples both answered, paired (`verdict.py`): "wins"
only where the 95% interval of the difference excludes 0; otherwise the cheaper one
is the choice. The per-candidate rows are each candidate's own held-out accuracy, with
its interval: read them as a candidate's estimate, not the best row as the winner's.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptserve.fit.verdict import accuracy_interval, compare


@dataclass(frozen=True)
class Decision:
    llm: str | None  # the LLM candidate fit would serve: the best inner score on all the data
    baseline: str | None  # the baseline the same rule picks
    choice: str | None  # "llm" or "baseline": the winner, else the cheaper one
    verdict: str
    n: int = 0  # the paired examples the verdict rests on
    difference: float = math.nan  # the LLM pick's accuracy minus the baseline pick's, on those examples
    low: float = math.nan  # its paired bootstrap 95% interval
    high: float = math.nan
    p: float = math.nan  # exact McNemar
    more_examples: int | None = None


def decide(selection: dict[str, dict[str, Any]]) -> Decision:
    """The LLM pick against the baseline pick, on the examples both answered."""
    llm, base = selection["llm"], selection["baseline"]
    if llm["final"] is None:
        return Decision(None, base["final"], "baseline" if base["final"] else None, "no LLM candidate ran")
    if base["final"] is None:
        return Decision(llm["final"], None, "llm", f"{llm['final']} is the LLM choice (no baseline ran)")
    common = sorted(set(llm["correct"]) & set(base["correct"]))
    if not common:
        return Decision(llm["final"], base["final"], None, "the LLM and baseline picks share no test fold")
    names = (_pick_name(llm), _pick_name(base))
    v = compare(
        names[0],
        [llm["correct"][i] for i in common],
        llm["inputs_per_s"],
        names[1],
        [base["correct"][i] for i in common],
        base["inputs_per_s"],
    )
    choice = "llm" if v.choice == names[0] else "baseline"
    text = v.text + _coverage(llm, common)
    return Decision(llm["final"], base["final"], choice, text, v.n, v.difference, v.low, v.high, v.p, v.more_examples)


def _coverage(llm: dict[str, Any], common: list[int]) -> str:
    """Where the served LLM candidate is not every fold's pick (e.g. LoRA ran fold 0
    only), say which folds its own number rests on."""
    folds = sorted(f for f, c in llm["picks"].items() if c == llm["final"])
    if folds == sorted(llm["picks"]):
        return ""
    return (
        f" (the LLM candidate fit would serve, {llm['final']}, was the pick in folds "
        f"{', '.join(map(str, folds)) or 'none'} of {len(llm['picks'])}; the comparison covers "
        f"{len(common)} examples of every fold's pick)"
    )


def _pick_name(side: dict[str, Any]) -> str:
    """e.g. "zero-shot", or "lora-r8/zero-shot" where the folds picked differently."""
    return "/".join(sorted(set(side["picks"].values())))


def pick_rows(selection: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The table's rows for fit's two nested picks."""
    out = []
    for kind, side in selection.items():
        correct = list(side["correct"].values())
        if not correct:
            continue
        low, high = accuracy_interval(correct)
        picks = ", ".join(f"{f}: {c}" for f, c in sorted(side["picks"].items()))
        out.append(
            {"name": f"fit's {kind} pick (nested; folds {picks})", "n": len(correct)}
            | {"accuracy": sum(correct) / len(correct), "low": low, "high": high}
        )
    return out


def _fmt(value: float, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _scoring(row: dict[str, Any]) -> str:
    if row["kind"] == "baseline":
        first = next((c for c in row.get("chosen") or [] if c), None)
        return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in (first or {}).items())
    chosen = [s for s in row["scoring"] if s]
    if not chosen:
        return ""
    first = chosen[0]
    return f"{first['calibration'] or 'none'}, T={first['temperature']:g}"


def _interval(low: float, high: float) -> str:
    return "—" if math.isnan(low) else f"{low:.3f}–{high:.3f}"


HEADER = (
    "Each candidate's row: its accuracy on the held-out folds it ran (95% bootstrap interval), "
    "its score inside the training parts (what selection sees), the folds where fit picked it. "
    "Fit's picks: the candidate picked in each fold by its inner score, scored on that fold's test examples "
    "(folds that did not choose it): the numbers to quote for fit's choice."
)


def table(rows: list[dict[str, Any]], picks: list[dict[str, Any]] | None = None) -> str:
    lines = [
        "| candidate | folds | n | accuracy | 95% interval | macro-F1 | ECE | inner score | picked in folds | "
        "inputs/s | latency p50 (s) | chosen setting (fold 0) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: -r["accuracy"]):
        lines.append(
            f"| {r['candidate']} | {','.join(map(str, r['folds']))} | {r['n']} | {_fmt(r['accuracy'])} | "
            f"{_interval(r['accuracy_low'], r['accuracy_high'])} | {_fmt(r['macro_f1'])} | {_fmt(r['ece'])} | "
            f"{_fmt(r['inner_accuracy'])} | {','.join(map(str, r['picked_in_folds']))} | "
            f"{_fmt(r['inputs_per_s'], 1)} | {_fmt(r['latency_p50_s'], 2)} | {_scoring(r)} |"
        )
    for p in picks or []:
        lines.append(
            f"| {p['name']} | | {p['n']} | {_fmt(p['accuracy'])} | {_interval(p['low'], p['high'])} | | | | | | | |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = sorted(rows, key=lambda r: r["accuracy"])
    colors = ["C0" if r["kind"] == "llm" else "C7" for r in ordered]
    accuracy = [r["accuracy"] for r in ordered]
    errors = [
        [max(0.0, r["accuracy"] - r["accuracy_low"]) for r in ordered],
        [max(0.0, r["accuracy_high"] - r["accuracy"]) for r in ordered],
    ]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(ordered) + 1.2))
    ax.barh([r["candidate"] for r in ordered], accuracy, color=colors, xerr=errors, capsize=3)
    for i, r in enumerate(ordered):
        ax.text(min(r["accuracy_high"], 1.0) + 0.01, i, f"{r['accuracy']:.3f} (n={r['n']})", va="center", fontsize=8)
    ax.set_xlim(0, 1.2)
    ax.set_xlabel("held-out accuracy with 95% interval (blue: LLM, grey: baseline)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(out: Path, manifest: dict[str, Any]) -> list[Path]:
    """report.md, report.html (with the PNG inline), report.png and fit-manifest.json."""
    rows, decision, picks = manifest["candidates"], manifest["decision"], manifest["picks"]
    png = out / "report.png"
    plot(rows, png)
    parts = [f"# fit: {manifest['data']['source']}", decision["verdict"], HEADER, table(rows, picks)]
    md = "\n\n".join([*parts, _served(manifest)])
    (out / "report.md").write_text(md + "\n")
    image = base64.b64encode(png.read_bytes()).decode()
    page = (
        "<!doctype html><meta charset=utf-8><title>adaptserve fit</title>"
        f"<h1>fit: {html.escape(manifest['data']['source'])}</h1><p>{html.escape(decision['verdict'])}</p>"
        f"<p>{html.escape(HEADER)}</p>{_html_table(rows, picks)}<p>{html.escape(_served(manifest))}</p>"
        f'<img alt="accuracy per candidate" src="data:image/png;base64,{image}">'
    )
    (out / "report.html").write_text(page)
    (out / "fit-manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return [out / "report.md", out / "report.html", png, out / "fit-manifest.json"]


def server_report(manifest: dict[str, Any], png: Path) -> dict[str, Any]:
    """The report as the server keeps it (`PUT /admin/fit-reports/NAME`, bounded there):
    each candidate's row with its interval, the decision, what was served, the plot."""
    from adaptserve.fit_reports import MAX_CANDIDATES, MAX_PLOT_BYTES

    keys = ("verdict", "choice", "llm", "baseline", "n", "difference", "low", "high")
    decision = {k: _finite(manifest["decision"].get(k)) for k in keys}
    decision["verdict"] = str(decision["verdict"])[:2000]
    fields = ("candidate", "kind", "n", "accuracy", "accuracy_low", "accuracy_high", "macro_f1", "inputs_per_s")
    rows = [{k: _finite(row.get(k)) for k in fields} for row in manifest["candidates"][:MAX_CANDIDATES]]
    plot = png.read_bytes() if png.is_file() else b""
    return {
        "source": str(manifest["data"]["source"])[:256],
        "examples": manifest["data"]["examples"],
        "decision": decision,
        "candidates": rows,
        "served": _served(manifest)[:2000],
        "plot_png": base64.b64encode(plot).decode() if 0 < len(plot) <= MAX_PLOT_BYTES else None,
    }


def _finite(value: Any) -> Any:
    """NaN (a figure that could not be measured) → None: JSON has no NaN."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _served(manifest: dict[str, Any]) -> str:
    return _encoder(manifest.get("encoder")) + _what_served(manifest)


def _encoder(won: dict[str, Any] | None) -> str:
    """Where the fine-tuned encoder is fit's choice: where it is and how to serve it."""
    if not won:
        return ""
    return (
        f"The encoder is fit's choice: fine-tuned on all {won['refit_on']} examples in `{won['folder']}`. It "
        f"is served by its own engine: add `{json.dumps(won['models_entry'])}` to the settings' `models:`, "
        f"restart, and apply the template `{json.dumps(won['template'])}`. Meanwhile: "
    )


def _what_served(manifest: dict[str, Any]) -> str:
    served = manifest.get("served")
    if not served:
        return f"Not served: {manifest['not_served']}." if manifest.get("not_served") else "Nothing was served."
    trained = f", adapter trained on {served['trained_on']}" if served.get("trained_on") else ""
    if "head" in served:
        trained = f", classifier head `{served['head']['name']}` version {served['head']['version']}"
    return (
        f"Served: template `{served['template']}` for tenant `{served['tenant']}` ({served['candidate']} refit on "
        f"all {served['refit_on']} examples{trained}, model `{served['model']}`). {served['checked_inputs']} "
        f"inputs through the served endpoint: the label fit measured on {served['agreement'] * 100:.0f}% "
        f"(largest probability gap {served['largest_probability_gap']:.2g}); its accuracy estimate is fit's "
        "nested pick row, not these inputs, which it trained on."
    )


def _html_table(rows: list[dict[str, Any]], picks: list[dict[str, Any]]) -> str:
    lines = table(rows, picks).splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    body = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table border=1 cellpadding=4><tr>{cells}</tr>{trs}</table>"
