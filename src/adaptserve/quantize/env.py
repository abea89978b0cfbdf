"""`adaptserve quantize`: the quantization environment (llm-compressor pinned, apart
from the serving environment: the two pin different compressed-tensors), the
calibration set, and an atomic run: the output folder appears whole, with its
manifest, or not at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptserve.datasets import DATASETS, load_dataset
from adaptserve.errors import ConfigurationError
from adaptserve.quantize.recipes import SCHEMES, Recipe, recipe_for

log = logging.getLogger(__name__)

LLMCOMPRESSOR = "llmcompressor==0.14.0.1"
TORCH = "torch==2.13.0"  # the CPU build this machine's pip finds first, as for serving


@dataclass
class Job:
    model_dir: Path
    scheme: str
    out: Path
    calibration: str  # a file, or a bundled dataset's name
    samples: int = 128
    max_length: int = 512
    group_size: int | None = None
    threads: int = 1  # one torch thread: with two, a busy neighbour stalled oneshot here


def ensure_env(root: Path) -> Path:
    """The quantization environment's Python, created on first use."""
    env = root / f"quantize-{LLMCOMPRESSOR.replace('==', '-')}"
    python, stamp = env / "bin" / "python", env / ".adaptserve-installed"
    if stamp.is_file():
        return python
    print(f"adaptserve: creating the quantization environment in {env} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, TORCH], check=True)
    subprocess.run([*pip, LLMCOMPRESSOR], check=True)
    stamp.touch()
    return python


def calibration_lines(source: str, samples: int) -> list[dict[str, Any]]:
    """Chat-shaped calibration samples from a bundled dataset (its training split) or
    a file: JSONL of {"messages": [...]} or {"text": ...}, or plain text lines."""
    if source in DATASETS:
        texts = [e.text for e in load_dataset(source, "train")[:samples]]
        return [{"messages": [{"role": "user", "content": t}]} for t in texts]
    path = Path(source)
    if not path.is_file():
        raise ConfigurationError(f"calibration {source!r} is neither a file nor one of {', '.join(DATASETS)}")
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        if not raw.strip():
            continue
        item = json.loads(raw) if path.suffix == ".jsonl" else {"text": raw}
        messages = item.get("messages") or [{"role": "user", "content": str(item["text"])}]
        lines.append({"messages": messages})
    if not lines:
        raise ConfigurationError(f"calibration file {path} is empty")
    return lines[:samples]


def run(job: Job, envs_root: Path) -> Path:
    """Quantize `job.model_dir` into `job.out`; → the output folder."""
    recipe = recipe_for(job.scheme, job.model_dir, job.group_size)
    if job.out.exists():
        raise ConfigurationError(f"{job.out} exists; remove it or choose another --out")
    lines = calibration_lines(job.calibration, job.samples)
    python = ensure_env(envs_root)
    job.out.parent.mkdir(parents=True, exist_ok=True)
    staging = job.out.parent / f".{job.out.name}.partial-{os.getpid()}"
    staging.mkdir()
    try:
        calibration = staging.parent / f".{job.out.name}.calibration-{os.getpid()}.jsonl"
        calibration.write_text("".join(json.dumps(line) + "\n" for line in lines))
        try:
            _oneshot(python, job, recipe, calibration, staging)
            digest = hashlib.sha256(calibration.read_bytes()).hexdigest()
        finally:
            calibration.unlink(missing_ok=True)
        _write_manifest(job, recipe, staging, digest, len(lines))
        os.replace(staging, job.out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return job.out


def _oneshot(python: Path, job: Job, recipe: Recipe, calibration: Path, staging: Path) -> None:
    script = Path(__file__).with_name("run.py")
    cmd = [str(python), str(script), "--model", str(job.model_dir), "--out", str(staging)]
    cmd += ["--recipe", json.dumps(recipe.to_json()), "--calibration", str(calibration)]
    cmd += ["--samples", str(job.samples), "--max-length", str(job.max_length)]
    env = {**os.environ, "OMP_NUM_THREADS": str(job.threads), "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("PYTHONPATH", None)  # the serving environment's packages stay out
    print(f"adaptserve: {job.scheme} ({SCHEMES[job.scheme][3]}) on {job.model_dir.name}", flush=True)
    result = subprocess.run(cmd, env=env)  # its progress bars go straight to the terminal
    if result.returncode != 0:
        raise ConfigurationError(f"quantization failed (exit {result.returncode}); nothing was written")


def _write_manifest(job: Job, recipe: Recipe, staging: Path, digest: str, count: int) -> None:
    run_info = json.loads((staging / "quantize-run.json").read_text())
    manifest = {
        "scheme": job.scheme,
        "recipe": recipe.to_json(),
        "base_model": str(job.model_dir),
        "calibration": {"source": job.calibration, "sha256": digest, "samples": count, "max_length": job.max_length},
        "sanity": run_info["sanity"],
        "versions": run_info["versions"],
        "seconds": run_info["seconds"],
        "size_bytes": folder_size(staging),
        "base_size_bytes": folder_size(job.model_dir),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json"))
