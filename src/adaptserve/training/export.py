"""Adapter exports. AdaLoRA → plain LoRA, so vLLM serves an adapter trained with
AdaLoRA; and a LoRA merged into the base weights, for an engine without LoRA layers.

An AdaLoRA layer adds `B (A * E) * scaling / (ranknum + 1e-5)` (SVD form: E holds the
singular values, zero where a rank was pruned). The export folds E and the scale into
the factors, drops pruned ranks, and pads every layer to one uniform rank R (the
largest kept), writing `lora_A`, `lora_B` and a LoRA `adapter_config.json` with
`lora_alpha = r = R` (scale 1). The padded rows are zeros: the same weights, exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


def _folded(module: Any, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One SVD layer → (A', B') with the kept ranks, largest singular value first."""
    a, b = module.lora_A[adapter], module.lora_B[adapter]
    e = module.lora_E[adapter].squeeze(1)
    scale = module.scaling[adapter] / (module.ranknum[adapter] + 1e-5)
    kept = [i for i in torch.argsort(e.abs(), descending=True).tolist() if e[i] != 0]
    return (a * e[:, None])[kept], b[:, kept] * scale


def adalora_to_lora(model: Any, out: Path, adapter: str = "default") -> int:
    """Write the LoRA equivalent of a peft AdaLoRA model to `out`; → its rank."""
    from peft import LoraConfig
    from peft.tuners.adalora import SVDLinear

    folded = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, SVDLinear) and adapter in module.lora_A:
                folded[name] = _folded(module, adapter)
    rank = max(1, max(a.shape[0] for a, _ in folded.values()))
    tensors = {}
    for name, (a, b) in folded.items():
        padded_a = torch.zeros(rank, a.shape[1], dtype=a.dtype)
        padded_b = torch.zeros(b.shape[0], rank, dtype=b.dtype)
        padded_a[: a.shape[0]], padded_b[:, : b.shape[1]] = a, b
        tensors[f"{name}.lora_A.weight"] = padded_a.contiguous()
        tensors[f"{name}.lora_B.weight"] = padded_b.contiguous()
    source = model.peft_config[adapter]
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        target_modules=sorted(source.target_modules),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=source.base_model_name_or_path,
    )
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    save_file(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    return rank


def merge_into_base(base: Path, adapter: Path, out: Path, dtype: str = "bfloat16") -> Path:
    """The adapter folded into the base (W + scale·BA, computed in fp32), saved as a plain
    model folder: an engine started without LoRA serves this one adapter's traffic at
    the base model's speed."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.to(getattr(torch, dtype)).save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out
