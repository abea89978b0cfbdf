"""What a second supervised LLM base costs, and that each base serves its own adapters.

Two gateways, one after the other, each `adaptserve serve` of the default model:
- `alone`: the base model only (its LoRA engine);
- `two`: the same, plus a `models:` entry `second` (role generate, `adapters: true`, its
  engine's threads on the last CPU): SmolLM2-135M-Instruct again under another name, the
  one LLM this machine has, so the cost is an LLM engine with LoRA, not a bigger model's.

For each engine: its start-up (the gateway's "starting ..." line to its upstream's "ready"
line) and the resident memory of its process tree (RSS; USS counts each process's own
pages once). Then, on `two`: one random LoRA adapter pushed for each base under its own
name and aliased; greedy answers through each alias, each base's own, and the adapter
pushed for both (it must answer alike on the two engines: the same weights on the same
model).

    .venv/bin/python benchmarks/second_base.py --out benchmarks/results/second-base
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from adaptserve.bench.fleet import make_adapter
from adaptserve.bench.served import ADMIN_KEY, KEY, Served
from adaptserve.config import Settings
from adaptserve.default_model import resolve_model
from adaptserve.upstream.supervisor import free_port

SECOND = "second"
STARTED = re.compile(r"^(\S+ \S+) .*starting (.+?) on (http://127\.0\.0\.1:\d+)", re.M)
PROMPT = [{"role": "user", "content": "Name three colours."}]
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def start(side: str, root: Path, model: Path) -> Served:
    data = root / side / "data"
    data.mkdir(parents=True)
    env: dict[str, str] = {}
    if side == "two":
        cpu = str(max(os.sched_getaffinity(0)))
        entry = {"name": SECOND, "role": "generate", "path": str(model), "adapters": True, "cpus": cpu}
        env["ADAPTSERVE_MODELS"] = json.dumps([entry])
    return Served(model, data, free_port(), Settings().resolved_models_dir, env=env)


def engines(served: Served) -> list[dict[str, Any]]:
    """Each engine the gateway started: what, its start-up and its process tree's memory."""
    log = served.log.read_text(errors="replace")
    gateway = psutil.Process(served.process.pid)
    found = []
    for at, what, url in STARTED.findall(log):
        ready = re.search(rf"^(\S+ \S+) .*upstream {re.escape(url)} is ready", log, re.M)
        port = url.rsplit(":", 1)[1]
        child = next(p for p in gateway.children() if f"--port {port}" in " ".join(p.cmdline()))
        tree = [child, *child.children(recursive=True)]
        rss = sum(p.memory_info().rss for p in tree) / 2**20
        uss = sum(p.memory_full_info().uss for p in tree) / 2**20
        startup = (_at(ready.group(1)) - _at(at)).total_seconds() if ready else None
        found.append({"engine": what, "url": url, "startup_s": startup, "rss_mib": round(rss), "uss_mib": round(uss)})
    return found


def _at(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")


def answers(served: Served, model: Path, root: Path) -> dict[str, str]:
    """An adapter pushed for each base (and one for both), aliased, answered greedily."""
    admin = httpx.Client(base_url=served.url + "/admin", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=120)
    pushes = {"on-base": (None, 1), "on-second": (SECOND, 2), "both-base": (None, 3), "both-second": (SECOND, 3)}
    for name, (base, seed) in pushes.items():
        folder = make_adapter(
            model, root / f"adapter-{seed}", seed=seed, targets=("q_proj", "k_proj", "v_proj", "o_proj")
        )
        body = {"name": name, "path": str(folder)} | ({"base": base} if base else {})
        admin.post("/adapters", json=body).raise_for_status()
        admin.put(f"/tenants/default/models/{name}", json={"adapter": name}).raise_for_status()
    admin.put("/tenants/default/models/base", json={"base": True}).raise_for_status()
    chat = httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    out = {}
    for name in ("base", SECOND, *pushes):
        body = {"model": name, "messages": PROMPT, "max_tokens": 24, "temperature": 0}
        answer = chat.post("/v1/chat/completions", json=body)
        answer.raise_for_status()
        out[name] = answer.json()["choices"][0]["message"]["content"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    model = resolve_model("default", Settings().resolved_models_dir)
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    result: dict[str, Any] = {"command": "benchmarks/second_base.py --out " + str(args.out), "commit": commit}
    with tempfile.TemporaryDirectory() as tmp:
        for side in ("alone", "two"):
            served = start(side, Path(tmp), model)
            try:
                result[side] = {"ready_s": round(served.startup_s, 1), "engines": engines(served)}
                if side == "two":
                    result[side]["answers"] = answers(served, model, Path(tmp))
            finally:
                served.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
