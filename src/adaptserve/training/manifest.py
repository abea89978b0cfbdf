"""The manifest written next to every trained adapter: what it was trained from (base
model and data, by hash), how (method, hyper-parameters, library versions), and
what it scored before and after on the held-out slice."""

from __future__ import annotations

import hashlib
import json
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from adaptserve.default_model import folder_digest
from adaptserve.training.task import Item

MANIFEST = "adaptserve-manifest.json"
_LIBRARIES = ("adaptserve", "torch", "transformers", "peft", "safetensors")


def items_digest(items: list[Item]) -> str:
    """SHA-256 of the training items as token ids: the data exactly as trained on."""
    canonical = json.dumps([[it.prompt, it.target, it.label, it.soft] for it in items], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def write_manifest(out: Path, *, base: Path, items: list[Item], source: str, **facts: Any) -> dict[str, Any]:
    """Write `out/adaptserve-manifest.json`; `facts` are the run's own (the template,
    the training outcome, the teacher)."""
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "base_model": {"path": str(base), "sha256": folder_digest(base)},
        "data": {"source": source, "examples": len(items), "sha256": items_digest(items)},
        **facts,
        "adapter": {"sha256": folder_digest(out)},
        "versions": library_versions(),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
