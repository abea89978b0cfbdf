"""Adapter validation against the base model, as a table of cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaptserve.adapters.spec import (
    AdapterInvalidError,
    BaseModelSpec,
    engine_covers,
    read_safetensors_header,
    validate_adapter,
    write_zero_adapter,
)
from tests.helpers import HEAD_DIM, HEADS, HIDDEN, LAYERS, make_adapter


def _bin_instead_of_safetensors(p: Path) -> None:
    (p / "adapter_model.safetensors").rename(p / "adapter_model.bin")


def _drop_lora_b(p: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    save_file(
        {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((4, HIDDEN), np.float32)},
        str(p / "adapter_model.safetensors"),
    )


# (case, make_adapter kwargs, mutate, expected message fragment)
BAD = [
    ("rank above the limit", {"r": 32}, None, "above the server's max_lora_rank 16"),
    ("modules_to_save", {"modules_to_save": ["lm_head"]}, None, "modules_to_save"),
    ("DoRA", {"use_dora": True}, None, "DoRA"),
    ("AdaLoRA", {"peft_type": "ADALORA"}, None, "exported to plain LoRA"),
    ("prefix tuning", {"peft_type": "PREFIX_TUNING"}, None, "only LoRA"),
    ("lm_head target", {"target_modules": ["q_proj", "lm_head"]}, None, "lm_head"),
    ("bias", {"bias": "all"}, None, "bias"),
    ("other model's shapes", {"hidden": 48}, None, "made for another model"),
    ("pickle weights", {}, _bin_instead_of_safetensors, "pickle"),
    ("lora_A without lora_B", {}, _drop_lora_b, "not both"),
    ("corrupt safetensors", {}, lambda p: (p / "adapter_model.safetensors").write_bytes(b"\x05" * 20), "not a valid"),
    ("config not JSON", {}, lambda p: (p / "adapter_config.json").write_text("{"), "not valid JSON"),
    ("no config", {}, lambda p: (p / "adapter_config.json").unlink(), "not a PEFT adapter folder"),
]


@pytest.fixture
def base(base_model: Path) -> BaseModelSpec:
    return BaseModelSpec.read(base_model)


def test_a_good_adapter_validates(base, tmp_path):
    spec = validate_adapter(make_adapter(tmp_path / "a", r=8), base, max_rank=16)
    assert spec.rank == 8 and spec.target_modules == ("q_proj", "v_proj") and len(spec.digest) == 64


@pytest.mark.parametrize(("case", "kwargs", "mutate", "fragment"), BAD, ids=[b[0] for b in BAD])
def test_bad_adapters_are_refused_with_the_reason(base, tmp_path, case, kwargs, mutate, fragment):
    path = make_adapter(tmp_path / "a", **kwargs)
    if mutate:
        mutate(path)
    with pytest.raises(AdapterInvalidError) as err:
        validate_adapter(path, base, max_rank=16)
    assert fragment in err.value.message
    assert err.value.status == 400


def test_module_missing_from_the_base_is_refused(base, tmp_path):
    path = make_adapter(tmp_path / "a")
    config = json.loads((path / "adapter_config.json").read_text())
    import numpy as np
    from safetensors.numpy import save_file

    stem = "base_model.model.model.layers.9.self_attn.q_proj"  # the base has 2 layers
    save_file(
        {
            f"{stem}.lora_A.weight": np.zeros((4, HIDDEN), np.float32),
            f"{stem}.lora_B.weight": np.zeros((HIDDEN, 4), np.float32),
        },
        str(path / "adapter_model.safetensors"),
    )
    (path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterInvalidError, match=r"no module model\.layers\.9"):
        validate_adapter(path, base, max_rank=16)


def test_digest_follows_content_only(base, tmp_path):
    a = validate_adapter(make_adapter(tmp_path / "a", seed=1), base, 16)
    same = validate_adapter(make_adapter(tmp_path / "b", seed=1), base, 16)
    other = validate_adapter(make_adapter(tmp_path / "c", seed=2), base, 16)
    assert a.digest == same.digest != other.digest


def test_zero_adapter_is_valid_all_zero_and_written_once(base, tmp_path):
    from safetensors.numpy import load_file

    path = write_zero_adapter(base, tmp_path / "store")
    assert write_zero_adapter(base, tmp_path / "store") == path
    assert [p.name for p in (tmp_path / "store").iterdir()] == [path.name]  # no temp folder left
    validate_adapter(path, base, max_rank=16)
    tensors = load_file(str(path / "adapter_model.safetensors"))
    assert len(tensors) == 2 * LAYERS
    assert tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"].shape == (HEADS * HEAD_DIM, 8)
    assert all(not t.any() for t in tensors.values())


def test_header_reader_refuses_absurd_sizes(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(AdapterInvalidError):
        read_safetensors_header(path)


def test_adapters_are_checked_against_a_4bit_base_too(tmp_path):
    """A compressed-tensors base stores 4-bit weights packed 8 to an int32 column."""
    import numpy as np
    from safetensors.numpy import save_file

    from tests.helpers import MODULE_SHAPES

    base = tmp_path / "base-w4"
    base.mkdir()
    tensors = {}
    for layer in range(LAYERS):
        for module, (fan_out, fan_in) in MODULE_SHAPES.items():
            stem = f"model.layers.{layer}.{module}"
            tensors[f"{stem}.weight_packed"] = np.zeros((fan_out, fan_in // 8), np.int32)
            tensors[f"{stem}.weight_scale"] = np.zeros((fan_out, fan_in // 8), np.float32)
    save_file(tensors, str(base / "model.safetensors"))
    quant = {
        "quant_method": "compressed-tensors",
        "config_groups": {"g": {"weights": {"num_bits": 4, "group_size": 8}}},
    }
    (base / "config.json").write_text(json.dumps({"hidden_size": HIDDEN, "quantization_config": quant}))
    spec = BaseModelSpec.read(base)
    assert spec.shapes["model.layers.0.self_attn.q_proj.weight"] == [HEADS * HEAD_DIM, HIDDEN]
    assert validate_adapter(make_adapter(tmp_path / "good"), spec, 16).rank == 4
    with pytest.raises(AdapterInvalidError, match="made for another model"):
        validate_adapter(make_adapter(tmp_path / "other", hidden=48), spec, 16)


def test_an_engine_restricted_to_some_modules_refuses_adapters_on_others(base, tmp_path):
    """`vllm.lora_target_modules`: vLLM would silently ignore weights on other modules."""
    path = make_adapter(tmp_path / "a", targets=("q_proj", "v_proj"))
    assert validate_adapter(path, base, 16, frozenset({"q_proj", "o_proj"})).rank == 4  # q, k, v are one layer
    with pytest.raises(AdapterInvalidError) as err:
        validate_adapter(path, base, 16, frozenset({"o_proj"}))
    assert "['q_proj', 'v_proj']" in err.value.message and err.value.status == 400
    assert engine_covers("up_proj", frozenset({"gate_proj"})) and not engine_covers("down_proj", frozenset({"up_proj"}))


def test_the_engine_is_started_with_the_lora_shape_of_the_settings(tmp_path):
    from adaptserve.engine_settings import VLLMSettings
    from adaptserve.upstream.supervisor import Supervisor

    settings = VLLMSettings(max_lora_rank=8, lora_target_modules=["q_proj", "v_proj"])
    command = Supervisor(settings, tmp_path / "model", "base", tmp_path / "vllm.log").command()
    assert command[command.index("--max-lora-rank") + 1] == "8"
    assert command[command.index("--lora-target-modules") + 1 :][:2] == ["q_proj", "v_proj"]
