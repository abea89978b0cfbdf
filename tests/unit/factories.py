"""Tiny model and adapter folders written with numpy + safetensors (no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, LAYERS = 32, 4, 2, 8, 2
MODULE_SHAPES = {  # module -> (out, in), as in a Llama
    "self_attn.q_proj": (HEADS * HEAD_DIM, HIDDEN),
    "self_attn.k_proj": (KV_HEADS * HEAD_DIM, HIDDEN),
    "self_attn.v_proj": (KV_HEADS * HEAD_DIM, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HEADS * HEAD_DIM),
}


def make_base(path: Path) -> Path:
    path.mkdir(parents=True)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "num_hidden_layers": LAYERS,
        "vocab_size": 100,
    }
    (path / "config.json").write_text(json.dumps(config))
    tensors = {"model.embed_tokens.weight": np.zeros((100, HIDDEN), np.float32)}
    for layer in range(LAYERS):
        for module, shape in MODULE_SHAPES.items():
            tensors[f"model.layers.{layer}.{module}.weight"] = np.zeros(shape, np.float32)
    save_file(tensors, str(path / "model.safetensors"))
    return path


def make_adapter(
    path: Path,
    r: int = 4,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    hidden: int = HIDDEN,
    seed: int = 0,
    **config_overrides: object,
) -> Path:
    """A LoRA folder as peft writes it, with random weights."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for layer in range(LAYERS):
        for module, (fan_out, fan_in) in MODULE_SHAPES.items():
            if module.rsplit(".", 1)[-1] not in targets:
                continue
            fan_in = hidden if fan_in == HIDDEN else fan_in
            stem = f"base_model.model.model.layers.{layer}.{module}"
            tensors[f"{stem}.lora_A.weight"] = rng.standard_normal((r, fan_in)).astype(np.float32)
            tensors[f"{stem}.lora_B.weight"] = rng.standard_normal((fan_out, r)).astype(np.float32)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": list(targets), "bias": "none"}
    config.update(config_overrides)
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path
