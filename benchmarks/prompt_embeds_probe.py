"""Does the CPU engine serve `prompt_embeds` correctly with LoRA enabled, in mixed batches?
The question soft prompts (prompt tuning) hinge on: vLLM removed prompt adapters in 0.10,
and a soft prompt reaches it only as `prompt_embeds`.

    python benchmarks/prompt_embeds_probe.py [--rounds 3]

One engine (`vllm serve` with `--enable-prompt-embeds --enable-lora`, one rank-8 LoRA).
Each prompt is sent three ways: as text, as the embeddings of its own tokens (the
embedding table read in-process: the answer must be the text's, token for token), and
as text through the LoRA. First each alone (the references), then text and embeddings
requests together, then all three kinds, each mix `--rounds` times: every answer must
equal its reference. Writes what broke, with the requests and the engine's errors.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import httpx
import torch
from served import MODELS_DIR, ROOT

from adaptserve.bench.served import plain_engine
from adaptserve.default_model import resolve_model

OUT = ROOT / "benchmarks" / "results" / "compress" / "prompt_embeds_probe.json"
PROMPTS = ["The capital of France is", "Three colours of the rainbow are", "A good breakfast has", "The sea is"]


def embeds(model: Path, text: str) -> str:
    """The prompt's token embeddings, as vLLM takes them (base64 of `torch.save`)."""
    from safetensors import safe_open
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(model)(text)["input_ids"]
    with safe_open(str(model / "model.safetensors"), "pt") as weights:
        table = weights.get_tensor("model.embed_tokens.weight")
    buffer = io.BytesIO()
    torch.save(table[ids].clone(), buffer)
    return base64.b64encode(buffer.getvalue()).decode()


async def ask(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    try:
        answer = await client.post(f"{url}/v1/completions", json=body | {"max_tokens": 16, "temperature": 0})
    except httpx.HTTPError as exc:  # the engine died
        return {"status": None, "error": f"{type(exc).__name__}: {exc}"}
    if answer.status_code != 200:
        return {"status": answer.status_code, "error": answer.text[:300]}
    return {"status": 200, "text": answer.json()["choices"][0]["text"]}


def requests(model: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for i, prompt in enumerate(PROMPTS):
        out[f"text-{i}"] = {"model": "base", "prompt": prompt}
        out[f"embeds-{i}"] = {"model": "base", "prompt_embeds": embeds(model, prompt)}
        out[f"lora-{i}"] = {"model": "lora", "prompt": prompt}
    return out


async def probe(url: str, bodies: dict[str, dict[str, Any]], rounds: int) -> dict[str, Any]:
    """Each request alone, then mixes: text with embeddings (base only), then all three."""
    async with httpx.AsyncClient(timeout=300) as client:
        alone = {name: await ask(client, url, body) for name, body in bodies.items()}
        phases: dict[str, list[dict[str, Any]]] = {}
        mixes = {"text+embeds": [n for n in bodies if not n.startswith("lora")], "text+embeds+lora": list(bodies)}
        for phase, names in mixes.items():
            phases[phase] = []
            for round_ in range(rounds):
                got = await asyncio.gather(*(ask(client, url, bodies[n]) for n in names))
                for name, answer in zip(names, got, strict=True):
                    if answer != alone[name]:
                        phases[phase].append({"round": round_, "request": name, "alone": alone[name], "mixed": answer})
    same = [alone[f"embeds-{i}"] == alone[f"text-{i}"] for i in range(len(PROMPTS))]
    return {"alone": alone, "embeds_equal_text_alone": same, "differences": phases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=8741)
    args = parser.parse_args()
    model = resolve_model("default", MODELS_DIR)
    work = Path(tempfile.mkdtemp())
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(model), config).save_pretrained(work / "lora")
    extra = ("--enable-prompt-embeds", "--enable-lora", "--max-lora-rank", "16", "--lora-modules")
    extra += (f"lora={work / 'lora'}",)
    engine = plain_engine(model, args.port, work / "engine.log", "base", extra)
    try:
        result = asyncio.run(probe(f"http://127.0.0.1:{args.port}", requests(model), args.rounds))
    finally:
        engine.stop()
    errors = [line for line in (work / "engine.log").read_text(errors="replace").splitlines() if "Error:" in line]
    result |= {"engine_errors": sorted(set(e.split("] ", 1)[-1] for e in errors))[:10], "rounds": args.rounds}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "alone"}, indent=2))


if __name__ == "__main__":
    main()
