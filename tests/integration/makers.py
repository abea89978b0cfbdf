"""Tiny real LoRA adapters made with peft at session start.

Weights are random (init_lora_weights=False) and scaled up (lora_alpha = 2r) so each
adapter's greedy output differs from the base and the others on open-ended prompts
while staying coherent text; at 4r the text degenerates and tiny bf16 differences
between batch shapes flip greedy choices, which would hide real mix-ups in noise.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM


def make_lora(
    base_path: Path, out: Path, seed: int, r: int = 8, targets: tuple[str, ...] = ("q_proj", "v_proj")
) -> Path:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.bfloat16)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


def make_wrong_base_lora(out: Path) -> Path:
    """An adapter for another (tiny) Llama: vLLM would load it and serve altered text."""
    torch.manual_seed(0)
    other = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=49152,
        )
    )
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(other, config).save_pretrained(out)
    return out


def make_corrupt_lora(good: Path, out: Path) -> Path:
    shutil.copytree(good, out)
    (out / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    return out
