"""LoHa, LoKr, IA3 and DoRA converted to LoRA (`training/convert.py`) on a tiny random
Llama: the update read from each module is what the adapter does, the base is left as it
was, and a LoRA of the update's full rank answers as the unconverted adapter does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adaptserve.adapters import algebra
from adaptserve.training.convert import CONVERTED, peft_config, updates, warning
from tests.helpers import make_tiny_llama

TARGETS = ("q_proj", "v_proj", "down_proj")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny", layers=2)


def adapted(base, method: str):
    """The tiny model with a `method` adapter whose every trainable value is random (a
    trained adapter's update is not zero; peft initialises most of them to be)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), peft_config(method, 4, 8, TARGETS))
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(1.0 + 0.3 * torch.randn_like(p) if method == "ia3" else 0.3 * torch.randn_like(p))
    return model.eval()


IDS = torch.tensor([[1, 5, 9, 2, 33, 7, 60, 4]])


@pytest.mark.parametrize("method", CONVERTED)
def test_the_update_read_is_what_the_adapter_does_and_the_base_is_untouched(base, method) -> None:
    model = adapted(base, method)
    weights = {n: p.detach().clone() for n, p in model.get_base_model().named_parameters() if "base_layer" in n}
    with torch.no_grad():
        expected = model(input_ids=IDS).logits
        found = updates(model)
        assert all(torch.equal(p, weights[n]) for n, p in model.get_base_model().named_parameters() if n in weights)
        plain = model.get_base_model()
        with model.disable_adapter():
            untouched = plain(input_ids=IDS).logits
            for name, delta in found.items():  # the base plus each update, without the adapter
                plain.get_submodule(name).base_layer.weight += torch.from_numpy(delta).float()
            patched = plain(input_ids=IDS).logits
    assert (untouched - expected).abs().max() > 0.05  # the adapter changes the answer...
    torch.testing.assert_close(patched, expected, atol=1e-4, rtol=1e-4)  # ...as base + ΔW does
    targets = {name.rsplit(".", 1)[-1] for name in found}
    assert targets == ({"k_proj", "v_proj", "down_proj"} if method == "ia3" else set(TARGETS))


@pytest.mark.parametrize("method", CONVERTED)
def test_a_full_rank_lora_of_the_updates_answers_as_the_adapter(base, method, tmp_path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = adapted(base, method)
    fidelity = algebra.Fidelity()
    modules = {m: algebra.factor(d, m, fidelity, rank=48) for m, d in updates(model).items()}
    algebra.write_lora(algebra.Lora(modules, {}), tmp_path, {"operation": "convert"})
    lora = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(lora(input_ids=IDS).logits, model(input_ids=IDS).logits, atol=1e-4, rtol=1e-4)
    assert fidelity.summary()["relative_error_max"] < 1e-6


def rank(delta: np.ndarray) -> int:
    """Numerical rank above float32's noise (W′ − W is read in float32)."""
    s = np.linalg.svd(delta, compute_uv=False)
    return int(np.sum(s > s[0] * 1e-4))


def test_ia3s_update_has_the_base_weights_rank_and_lohas_the_product_of_its_ranks(base) -> None:
    ia3, loha = updates(adapted(base, "ia3")), updates(adapted(base, "loha"))
    module = "model.layers.0.self_attn.v_proj"
    assert rank(ia3[module]) == min(ia3[module].shape)  # diag(l − 1)·W: W's rank, so a low rank keeps little
    assert rank(loha[module]) == 16  # (rank 4) ⊙ (rank 4): up to 16


def conversion(before: float | None, after: float | None) -> dict:
    fidelity = {"energy_kept_min": 0.31, "relative_error_mean": 0.83}
    return {"method": "ia3", "rank": 16, "accuracy_before": before, "accuracy_after": after, "fidelity": fidelity}


def test_a_conversion_that_costs_accuracy_says_so_and_what_to_raise() -> None:
    line = warning(conversion(0.74, 0.285))
    assert line is not None
    assert "0.740 -> 0.285" in line and "rank 16" in line and "31%" in line and "--convert-rank" in line
    assert warning(conversion(0.74, 0.70)) is None  # within 5 points
    assert warning(conversion(0.60, 0.65)) is None
    assert warning(conversion(None, None)) is None and warning(None) is None  # no held-out slice, or not converted
