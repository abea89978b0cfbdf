"""The page `adaptserve eval --explain N` writes: the N most and N least confident
inputs of an evaluation, each with its attributions highlighted (green: the unit raised
the predicted label's probability, red: it lowered it; the stronger, the darker)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from adaptserve_client import Attributions, Classification


def extremes(confidence: Sequence[float], n: int) -> list[int]:
    """The indices of the `n` most confident answers, then of the `n` least."""
    order = sorted(range(len(confidence)), key=lambda i: confidence[i], reverse=True)
    most = order[:n]
    return most + [i for i in reversed(order[-n:]) if i not in most]


def highlighted(text: str, field: str, shown: Attributions) -> str:
    """`text` as HTML, each of its spans shaded by its contribution."""
    spans = sorted((s for s in shown.spans if s.field == field), key=lambda s: s.start)
    scale = max((abs(s.contribution) for s in spans), default=0.0) or 1.0
    out, at = [], 0
    for span in spans:
        out.append(html.escape(text[at : span.start]))
        alpha = abs(span.contribution) / scale
        colour = "0, 140, 60" if span.contribution >= 0 else "200, 30, 30"
        out.append(
            f'<span style="background: rgba({colour}, {alpha:.2f})" title="{span.contribution:+.4f}">'
            f"{html.escape(text[span.start : span.end])}</span>"
        )
        at = span.end
    out.append(html.escape(text[at:]))
    return "".join(out)


def page(title: str, field: str, rows: Sequence[tuple[str, str, Classification]]) -> str:
    """`rows`: (text, gold label, answer with attributions)."""
    body = []
    for text, gold, answer in rows:
        shown = answer.attributions
        if shown is None:
            raise ValueError("an answer without attributions")
        mark = "right" if answer.label == gold else "wrong"
        body.append(
            f'<tr class="{mark}"><td>{html.escape(answer.label)}</td><td>{html.escape(gold)}</td>'
            f"<td>{answer.confidence:.3f}</td><td>{highlighted(text, field, shown)}</td></tr>"
        )
    method = rows[0][2].attributions.method if rows and rows[0][2].attributions else "occlusion"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body {{ font-family: sans-serif; margin: 2em; }} td {{ padding: 4px 8px; vertical-align: top; }}
tr.wrong td:first-child {{ color: #b00; font-weight: bold; }} th {{ text-align: left; }}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>Attributions ({html.escape(method)}): green raised the predicted label's calibrated probability,
red lowered it; hover a unit for its contribution. The most confident answers first, then the least.</p>
<table><tr><th>predicted</th><th>gold</th><th>confidence</th><th>input</th></tr>
{chr(10).join(body)}
</table></body></html>
"""


def write_page(path: Path, title: str, field: str, rows: Sequence[tuple[str, str, Classification]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page(title, field, rows), encoding="utf-8")
    return path
