"""The PEFT methods vLLM does not serve (LoHa, LoKr, IA3, DoRA): their peft configs, and
the conversion of a trained one to the plain LoRA vLLM serves, checked.

Conversion reads each adapted module's update as its merged weight minus the base
(ΔW = W′ − W), so DoRA's magnitude rescaling and IA3's scaling vectors are in it (peft's
`convert_to_lora` drops DoRA's magnitude and refuses IA3), and keeps the update's best
rank-r approximation (`adapters/algebra.py`). The result is loaded on a fresh base like
any LoRA and compared with the unconverted model on the held-out slice: the
log-probabilities the label scoring reads (max and mean absolute difference over the
vocabulary at those positions), and accuracy before and after.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adaptserve.adapters import algebra
from adaptserve.training.scoring import evaluate, target_logprobs
from adaptserve.training.served import WARN_GAP
from adaptserve.training.task import Item, Task

CONVERTED = ("loha", "lokr", "ia3", "dora")
IA3_TARGETS = ("k_proj", "v_proj", "down_proj")  # peft's for Llama: two attention outputs, the FF input
_PREFIX = "base_model.model."


def peft_config(method: str, rank: int, alpha: int, targets: tuple[str, ...]) -> Any:
    from peft import IA3Config, LoHaConfig, LoKrConfig, LoraConfig

    if method == "loha":
        return LoHaConfig(r=rank, alpha=alpha, target_modules=list(targets), task_type="CAUSAL_LM")
    if method == "lokr":
        return LoKrConfig(r=rank, alpha=alpha, target_modules=list(targets), task_type="CAUSAL_LM")
    if method == "ia3":  # one learned scale per channel; rank and targets do not apply
        return IA3Config(target_modules=list(IA3_TARGETS), feedforward_modules=["down_proj"], task_type="CAUSAL_LM")
    assert method == "dora"
    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), use_dora=True, task_type="CAUSAL_LM")


@torch.no_grad()
def updates(model: Any) -> dict[str, np.ndarray]:
    """Each adapted module's ΔW = W′ − W: the adapter merged in, read, and the weight restored."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = {}
    for name, module in model.named_modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        layer: Any = module  # peft's layers are untyped
        weight = layer.get_base_layer().weight
        before = weight.detach().clone()
        try:
            layer.merge()
            out[name.removeprefix(_PREFIX)] = (weight.detach().double() - before.double()).cpu().numpy()
            with warnings.catch_warnings():  # IA3's unmerge divides ("can be inaccurate"): the copy below is exact
                warnings.simplefilter("ignore", UserWarning)
                layer.unmerge()
        finally:
            weight.copy_(before)
    return out


def write_lora(
    deltas: dict[str, np.ndarray], base: Path, out: Path, rank: int, method: str
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], algebra.Fidelity]:
    """Each update's best rank-`rank` factors, written to `out` as a LoRA of `base`."""
    fidelity = algebra.Fidelity()
    modules = {m: algebra.factor(d, m, fidelity, rank) for m, d in deltas.items()}
    config = {"task_type": "CAUSAL_LM", "base_model_name_or_path": str(base)}
    provenance = {"operation": "convert", "method": method, "rank": rank, "fidelity": fidelity.summary()}
    algebra.write_lora(algebra.Lora(modules, config), out, provenance)
    return modules, fidelity


def convert(
    model: Any, task: Task, held: list[Item], base: Path, out: Path, rank: int, method: str
) -> tuple[Any, dict]:
    """Write `model`'s adapter to `out` as a rank-`rank` LoRA; → (the converted model, its
    fidelity and accuracy against `model`'s on `held`)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    modules, fidelity = write_lora(updates(model), base, out, rank, method)
    fresh = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(model.device)
    converted = PeftModel.from_pretrained(fresh, out).eval()
    report = {
        "method": method,
        "rank": rank,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "lora_params": sum(a.size + b.size for a, b in modules.values()),
        "fidelity": fidelity.summary(),
        **_logprob_gap(model.eval(), converted, held),
        "accuracy_before": evaluate(model, task, held).get("accuracy"),
        "accuracy_after": evaluate(converted, task, held).get("accuracy"),
    }
    return converted, report


@torch.no_grad()
def _logprob_gap(model: Any, converted: Any, held: list[Item], size: int = 16) -> dict[str, float]:
    """Max and mean |Δ log p| over the vocabulary at the positions the label scoring reads."""
    worst, total, count = 0.0, 0.0, 0
    for start in range(0, len(held), size):
        batch = held[start : start + size]
        for a, b in zip(target_logprobs(model, batch), target_logprobs(converted, batch), strict=True):
            gap = (a - b).abs()
            worst, total, count = max(worst, float(gap.max())), total + float(gap.sum()), count + gap.numel()
    return {"logprob_diff_max": worst, "logprob_diff_mean": total / max(count, 1)}


def warning(conversion: dict[str, Any] | None) -> str | None:
    """A line for the user when the served LoRA answers worse than the adapter trained."""
    if not conversion or conversion["accuracy_before"] is None or conversion["accuracy_after"] is None:
        return None
    before, after = conversion["accuracy_before"], conversion["accuracy_after"]
    if before - after <= WARN_GAP:  # the served path's tolerance (training/served.py)
        return None
    return (
        f"the {conversion['method']} adapter converted to LoRA rank {conversion['rank']} answers worse than it "
        f"trained (held-out accuracy {before:.3f} -> {after:.3f}; the rank keeps as little as "
        f"{conversion['fidelity']['energy_kept_min']:.0%} of a module's update): train again with a larger "
        "--convert-rank (up to the engine's --max-lora-rank)"
    )
