"""Adapter algebra, in numpy on stored LoRA folders: reduce an adapter's rank by SVD (to a
rank, or to the rank that keeps a fraction of each module's energy) and merge several
(`cat`, `linear`, `ties`, `dare`). Each result is a plain PEFT LoRA folder with a
`provenance.json` (sources, method, fidelity), registered as a new version like any upload.

A module's update is ΔW = s·B·A (s = lora_alpha/r, or /√r with rsLoRA; `rank_pattern` and
`alpha_pattern` honoured). A sum of low-rank updates stays low-rank: `cat` stacks the
factors (exact, rank = the sum), and `linear` is the best rank-k approximation of that
weighted sum (Eckart–Young), computed from QR factors of the stack without ever forming
ΔW. `ties` and `dare` edit ΔW entry by entry, so they form it and take a dense SVD: their
peak memory (`dense_bytes`, several float64 copies of the largest module) is estimated
from the shapes and refused over the caller's bound before anything dense is formed.
Outputs have lora_alpha = r (s = 1) and the singular values split evenly between B and A.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adaptserve.adapters.archive import storage_error
from adaptserve.adapters.spec import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterInvalidError
from adaptserve.errors import PayloadTooLargeError

PROVENANCE = "provenance.json"
METHODS = ("cat", "linear", "ties", "dare")
_PREFIX = "base_model.model."
_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


@dataclass(frozen=True)
class Source:
    """A stored adapter version an operation reads, and its weight in a merge."""

    adapter: str
    version: str
    path: Path
    weight: float = 1.0

    def describe(self) -> dict[str, Any]:
        return {"adapter": self.adapter, "version": self.version, "weight": self.weight}


@dataclass(frozen=True)
class Lora:
    """module → (A: r×in, B: out×r) with the module's scaling folded into B."""

    modules: dict[str, tuple[np.ndarray, np.ndarray]]
    config: dict[str, Any]


@dataclass
class Fidelity:
    """How close each module's result is to what was asked for (relative Frobenius error
    of the factored update against the exact one; energy: the share of Σσ² kept)."""

    ranks: dict[str, int] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    energy: dict[str, float] = field(default_factory=dict)

    def add(self, module: str, rank: int, singular: np.ndarray) -> None:
        total = float(np.sum(singular**2))
        kept = float(np.sum(singular[:rank] ** 2))
        self.ranks[module] = rank
        self.energy[module] = kept / total if total > 0 else 1.0
        self.errors[module] = float(np.sqrt(max(total - kept, 0.0) / total)) if total > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        ranks, errors, energy = self.ranks.values(), self.errors.values(), self.energy.values()
        return {
            "modules": len(self.ranks),
            "rank_min": min(ranks),
            "rank_max": max(ranks),
            "relative_error_mean": round(float(np.mean(list(errors))), 6),
            "relative_error_max": round(max(errors), 6),
            "energy_kept_min": round(min(energy), 6),
        }


# -- the operations, folder to folder -------------------------------------------------
def compress_into(dest: Path, source: Source, rank: int | None, energy: float | None) -> dict[str, Any]:
    """Write `source` reduced by SVD into `dest`; returns the fidelity summary."""
    lora, fidelity = compress(read_lora(source.path), rank, energy)
    facts = {"fidelity": fidelity.summary()}
    operation = {"operation": "compress", "rank": rank, "energy": energy}
    write_lora(lora, dest, {**operation, "sources": [source.describe()], **facts})
    return facts


def merge_into(
    dest: Path,
    sources: Sequence[Source],
    method: str,
    rank: int | None,
    density: float,
    seed: int,
    max_dense_bytes: int | None = None,
) -> dict[str, Any]:
    """Write the merge of `sources` (weighted) into `dest`; returns the fidelity summary.
    A TIES/DARE merge whose dense peak would pass `max_dense_bytes` is refused (413)
    before it is computed."""
    loras = [read_lora(s.path) for s in sources]
    if max_dense_bytes is not None:
        check_dense(loras, method, max_dense_bytes)
    lora, fidelity = merge(loras, [s.weight for s in sources], method, rank, density, seed)
    facts = {"fidelity": fidelity.summary()}
    operation: dict[str, Any] = {"operation": "merge", "method": method, "rank": rank}
    if method in ("ties", "dare"):
        operation |= {"density": density, "seed": seed}
    write_lora(lora, dest, {**operation, "sources": [s.describe() for s in sources], **facts})
    return facts


class MergeTooLargeError(PayloadTooLargeError):
    code = "merge_too_large"


def dense_bytes(shapes: dict[str, tuple[int, int]], sources: int, method: str) -> int:
    """The peak memory of a merge that forms each module's update densely (TIES, DARE):
    modules are merged one after another, so it is the largest module's (out × in
    float64) times the copies held at once: TIES the weighted updates, their trimmed
    copies and the stack (3 per source) plus the sign, agreeing and result arrays and the
    SVD's; DARE the updates plus a random mask each and the sum and SVD. 0 for `linear`
    and `cat` (they never form ΔW)."""
    if method not in ("ties", "dare") or not shapes:
        return 0
    largest = max(out * fan_in for out, fan_in in shapes.values()) * 8
    copies = 3 * sources + 4 if method == "ties" else 2 * sources + 3
    return largest * copies


def check_dense(loras: Sequence[Lora], method: str, limit: int) -> None:
    shapes = {m: (b.shape[0], a.shape[1]) for lora in loras for m, (a, b) in lora.modules.items()}
    needed = dense_bytes(shapes, len(loras), method)
    if needed > limit:
        raise MergeTooLargeError(
            f"a {method} merge of these adapters would hold about {needed} bytes of dense updates at once, over "
            f"this server's {limit}: use method linear (or cat), which never forms them",
            param="method",
        )


# -- reading and writing ---------------------------------------------------------------
def read_lora(folder: Path) -> Lora:
    """A stored (validated) LoRA folder's factors, scaling folded into B, as float32. A
    folder it cannot read is the adapter's fault (400), or the disk's (507)."""
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text())
        tensors = _read_safetensors(folder / ADAPTER_WEIGHTS)
        modules: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for key in tensors:
            if key.endswith(".lora_A.weight"):
                stem = key.removesuffix(".lora_A.weight")
                a, b = tensors[key], tensors[f"{stem}.lora_B.weight"]
                module = stem.removeprefix(_PREFIX)
                modules[module] = (a, b * _scaling(config, module, a.shape[0]))
    except OSError as exc:
        raise storage_error(exc) from exc
    except (ValueError, KeyError, TypeError, IndexError, struct.error) as exc:
        raise AdapterInvalidError(f"a source adapter could not be read ({type(exc).__name__}: {exc})") from exc
    if not modules or not all(np.isfinite(a).all() and np.isfinite(b).all() for a, b in modules.values()):
        raise AdapterInvalidError("a source adapter has no LoRA weights, or weights that are not finite numbers")
    return Lora(modules, config)


def _scaling(config: dict[str, Any], module: str, rank: int) -> float:
    """peft's: lora_alpha (or the alpha_pattern's) over r (or √r with rsLoRA)."""
    alpha = _pattern(config.get("alpha_pattern") or {}, module)
    alpha = float(config.get("lora_alpha", 8) if alpha is None else alpha)  # 8: peft's default
    return alpha / (float(np.sqrt(rank)) if config.get("use_rslora") else rank)


def _pattern(patterns: dict[str, Any], module: str) -> Any:
    """The value of the first key that names `module`: the whole name or a suffix of it
    at a dot (peft's regular expression, matched literally: keys are module names)."""
    for key, value in patterns.items():
        if module == key or module.endswith("." + key):
            return value
    return None


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Tensors as float32; bf16 too (numpy has no bfloat16: its bits are a float32's top half)."""
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = data[8 + size + start : 8 + size + end]
        if info["dtype"] == "BF16":
            array = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif info["dtype"] in _DTYPES:
            array = np.frombuffer(raw, _DTYPES[info["dtype"]]).astype(np.float32)
        else:
            raise AdapterInvalidError(f"{name}: dtype {info['dtype']} is not a float type")
        out[name] = array.reshape(info["shape"])
    return out


def write_lora(lora: Lora, folder: Path, provenance: dict[str, Any]) -> None:
    """A PEFT LoRA folder: one rank for every module (smaller ones zero-padded), float32."""
    from safetensors.numpy import save_file

    if not all(np.isfinite(a).all() and np.isfinite(b).all() for a, b in lora.modules.values()):
        raise AdapterInvalidError("the result's weights overflow float32: use smaller weights")
    if not any(np.any(b) for _, b in lora.modules.values()):
        raise AdapterInvalidError("the result is all zeros (every weight 0, or nothing kept): it would change nothing")
    rank = max(a.shape[0] for a, _ in lora.modules.values())
    tensors = {}
    for module, (a, b) in sorted(lora.modules.items()):
        pad = rank - a.shape[0]
        tensors[f"{_PREFIX}{module}.lora_A.weight"] = np.pad(a, ((0, pad), (0, 0))).astype(np.float32)
        tensors[f"{_PREFIX}{module}.lora_B.weight"] = np.pad(b, ((0, 0), (0, pad))).astype(np.float32)
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": rank,
        "target_modules": sorted({m.rsplit(".", 1)[-1] for m in lora.modules}),
        "bias": "none",
        "task_type": lora.config.get("task_type", "CAUSAL_LM"),
        "base_model_name_or_path": lora.config.get("base_model_name_or_path"),
    }
    try:
        folder.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(folder / ADAPTER_WEIGHTS))
        (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=1))
        (folder / PROVENANCE).write_text(json.dumps(provenance, indent=1))
    except OSError as exc:
        raise storage_error(exc) from exc


# -- the linear algebra ----------------------------------------------------------------
def low_rank_svd(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD of B·A (out×r · r×in) in O((out+in)·r²): QR of each factor, SVD of the r×r core."""
    qb, rb = np.linalg.qr(b.astype(np.float64))
    qa, ra = np.linalg.qr(a.T.astype(np.float64))
    u, s, vt = np.linalg.svd(rb @ ra.T)
    return qb @ u, s, vt @ qa.T


def rank_for(singular: np.ndarray, rank: int | None, energy: float | None) -> int:
    """`rank` (at most the matrix's), or the fewest values keeping `energy` of Σσ² (at least 1)."""
    nonzero = int(np.sum(singular > singular[0] * 1e-6)) if singular.size and singular[0] > 0 else 0
    available = max(nonzero, 1)
    if rank is not None:
        return min(rank, available)
    assert energy is not None
    share = np.cumsum(singular**2) / max(float(np.sum(singular**2)), 1e-30)
    return min(int(np.searchsorted(share, energy - 1e-9)) + 1, available)


def _factors(u: np.ndarray, s: np.ndarray, vt: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    root = np.sqrt(s[:k])
    return (root[:, None] * vt[:k]).astype(np.float32), (u[:, :k] * root).astype(np.float32)


def _truncate(
    module: str,
    svd: tuple[np.ndarray, np.ndarray, np.ndarray],
    fidelity: Fidelity,
    rank: int | None,
    energy: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The factors (A, B) of an SVD truncated to `rank` (or `energy`), its fidelity noted."""
    u, s, vt = svd
    k = rank_for(s, rank, energy)
    fidelity.add(module, k, s)
    return _factors(u, s, vt, k)


def compress(lora: Lora, rank: int | None = None, energy: float | None = None) -> tuple[Lora, Fidelity]:
    """Each module's update truncated to `rank`, or to the rank keeping `energy` of it."""
    fidelity = Fidelity()
    modules = {m: _truncate(m, low_rank_svd(a, b), fidelity, rank, energy) for m, (a, b) in lora.modules.items()}
    return Lora(modules, lora.config), fidelity


def merge(
    loras: Sequence[Lora],
    weights: Sequence[float],
    method: str,
    rank: int | None = None,
    density: float = 0.5,
    seed: int = 0,
) -> tuple[Lora, Fidelity]:
    """Σ wᵢ·ΔWᵢ per module (`cat`: exact; `linear`: its best rank-`rank` approximation,
    default the largest source rank), or TIES / DARE on the ΔWᵢ (density: the share of
    entries each keeps) then rank `rank`. A module one source lacks is zero there."""
    if method not in METHODS:
        raise AdapterInvalidError(f"unknown merge method {method!r}: one of {', '.join(METHODS)}", param="method")
    rank = rank or max(a.shape[0] for lora in loras for a, _ in lora.modules.values())
    rng = np.random.default_rng(seed)
    fidelity, modules = Fidelity(), {}
    for module in sorted({m for lora in loras for m in lora.modules}):
        parts = [(lora.modules[module], w) for lora, w in zip(loras, weights, strict=True) if module in lora.modules]
        _check_shapes(module, [p for p, _ in parts])
        if method in ("ties", "dare"):
            deltas = [w * (b.astype(np.float64) @ a) for (a, b), w in parts]
            merged = ties(deltas, density) if method == "ties" else dare(deltas, density, rng)
            modules[module] = factor(merged, module, fidelity, rank)
            continue
        a = np.concatenate([a for (a, _), _ in parts])  # the stacked factors: Σ wᵢ·ΔWᵢ exactly
        b = np.concatenate([b * w for (_, b), w in parts], axis=1)
        if method == "linear":
            modules[module] = _truncate(module, low_rank_svd(a, b), fidelity, rank, None)
        else:  # cat
            fidelity.add(module, a.shape[0], low_rank_svd(a, b)[1])
            modules[module] = (a.astype(np.float32), b.astype(np.float32))
    return Lora(modules, loras[0].config), fidelity


def factor(
    delta: np.ndarray, module: str, fidelity: Fidelity, rank: int | None, energy: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A dense update's LoRA factors (A, B) by truncated SVD, its fidelity noted."""
    return _truncate(module, np.linalg.svd(delta.astype(np.float64), full_matrices=False), fidelity, rank, energy)


def _check_shapes(module: str, factors: list[tuple[np.ndarray, np.ndarray]]) -> None:
    shapes = {(b.shape[0], a.shape[1]) for a, b in factors}
    if len(shapes) > 1:
        raise AdapterInvalidError(f"{module}: the sources' updates have different shapes {sorted(shapes)}")


def ties(deltas: list[np.ndarray], density: float) -> np.ndarray:
    """TIES-merging (Yadav et al. 2023; peft's `ties`): keep each (weighted) update's
    largest-magnitude `density` share, elect each entry's sign by total mass, and average
    the kept entries that agree with it (the disjoint mean)."""
    trimmed = []
    for delta in deltas:
        keep = max(round(density * delta.size), 1)
        top = np.argpartition(np.abs(delta).ravel(), delta.size - keep)[delta.size - keep :]
        kept = np.zeros(delta.size)
        kept[top] = delta.ravel()[top]
        trimmed.append(kept.reshape(delta.shape))
    stack = np.stack(trimmed)
    sign = np.sign(stack.sum(axis=0))
    agreeing = np.where(np.sign(stack) == sign, stack, 0.0)
    return agreeing.sum(axis=0) / np.maximum((agreeing != 0).sum(axis=0), 1)


def dare(deltas: list[np.ndarray], density: float, rng: np.random.Generator) -> np.ndarray:
    """DARE (Yu et al. 2024): drop each entry with probability 1 − density, rescale the
    rest by 1/density, and sum."""
    return sum((np.where(rng.random(d.shape) < density, d, 0.0) / density for d in deltas), np.zeros_like(deltas[0]))
