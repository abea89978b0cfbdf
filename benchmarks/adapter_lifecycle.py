"""Adapter lifecycle timings on one running `adaptserve serve` (vLLM child included):
upload (multipart .tar.gz, validated and stored), activate, the first request on a
cold adapter (includes the load into vLLM) against the next one on it (resident),
for several fresh adapters made with peft. Medians are printed and saved as JSON.

    python benchmarks/adapter_lifecycle.py --adapters 5
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import httpx
from served import ADMIN_KEY, KEY, MODELS_DIR, Served  # benchmarks/ is the script's folder

from adaptserve.bench.fleet import make_adapter
from adaptserve.default_model import DEFAULT_MODEL_NAME
from adaptserve.upstream.supervisor import free_port


def make_adapters(count: int, root: Path) -> list[Path]:
    base = MODELS_DIR / DEFAULT_MODEL_NAME
    return [make_adapter(base, root / f"bench{i}", seed=100 + i) for i in range(count)]


def timed(fn, *args, **kwargs) -> tuple[float, httpx.Response]:
    start = time.perf_counter()
    response = fn(*args, **kwargs)
    response.raise_for_status()
    return time.perf_counter() - start, response


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--adapters", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "adapter_lifecycle.json")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="adaptserve-bench-"))
    folders = make_adapters(args.adapters, root)
    (root / "data").mkdir()
    served = Served("default", root / "data", free_port())
    url, admin = served.url, {"Authorization": f"Bearer {ADMIN_KEY}"}
    rows = []
    try:
        for i, folder in enumerate(folders):
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
                tar.add(folder, arcname=folder.name)
            name = f"bench{i}"
            upload_s, r = timed(
                httpx.post,
                f"{url}/admin/adapters",
                headers=admin,
                data={"name": name},
                files={"file": ("a.tar.gz", buffer.getvalue())},
                timeout=60,
            )
            activate_s, _ = timed(
                httpx.post,
                f"{url}/admin/adapters/{name}/activate",
                headers=admin,
                json={"version": r.json()["version"]},
                timeout=60,
            )
            httpx.put(f"{url}/admin/tenants/default/models/{name}", headers=admin, json={"adapter": name})
            body = {"model": name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
            cold_s, _ = timed(
                httpx.post,
                f"{url}/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {KEY}"},
                timeout=120,
            )
            warm_s, _ = timed(
                httpx.post,
                f"{url}/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {KEY}"},
                timeout=120,
            )
            rows.append(
                {
                    "upload_s": upload_s,
                    "activate_s": activate_s,
                    "cold_first_token_s": cold_s,
                    "resident_first_token_s": warm_s,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    finally:
        served.stop()
    summary = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print("\n| step | median (ms) |\n|---|---|")
    for k, v in summary.items():
        print(f"| {k} | {v * 1000:.1f} |")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    args.out.write_text(json.dumps({"summary_s": summary, "rows": rows, "commit": commit}, indent=1))


if __name__ == "__main__":
    main()
