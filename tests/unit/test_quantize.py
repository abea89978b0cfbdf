"""Quantization without running llm-compressor: group sizes from the model's shapes,
the recipes, what the engine here can serve, calibration sets, and a failed run that
leaves nothing behind."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from adaptserve.errors import ConfigurationError
from adaptserve.quantize import env
from adaptserve.quantize.recipes import check_servable, choose_group_size, recipe_for

SMOLLM = {"hidden_size": 576, "num_attention_heads": 9, "intermediate_size": 1536, "head_dim": 64}


def test_group_size_comes_from_the_shapes() -> None:
    assert choose_group_size(SMOLLM, None) == 64  # 576 is not a multiple of 128
    assert choose_group_size(SMOLLM | {"hidden_size": 1024, "head_dim": 128, "num_attention_heads": 8}, None) == 128
    assert choose_group_size(SMOLLM, 32) == 32
    with pytest.raises(ConfigurationError, match=r"576.*; 64 does"):
        choose_group_size(SMOLLM, 128)


def test_recipes(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM))
    gptq = recipe_for("w4a16-gptq", tmp_path, None)
    assert (gptq.algorithm, gptq.weight_bits, gptq.group_size, gptq.ignore) == ("gptq", 4, 64, ("re:.*lm_head",))
    assert recipe_for("w8a8-int8", tmp_path, None).group_size is None
    with pytest.raises(ConfigurationError, match="per channel"):
        recipe_for("w8a8-int8", tmp_path, 64)
    with pytest.raises(ConfigurationError, match="unknown scheme"):
        recipe_for("w2a16", tmp_path, None)


def _quantized(tmp_path: Path, quant: dict | None) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM | ({"quantization_config": quant} if quant else {})))
    return tmp_path


def test_what_the_cpu_engine_serves(tmp_path: Path) -> None:
    w4 = {
        "quant_method": "compressed-tensors",
        "config_groups": {"g": {"weights": {"num_bits": 4, "type": "int", "group_size": 64}}},
    }
    assert check_servable(_quantized(tmp_path, None), on_cpu=True) is None
    assert check_servable(_quantized(tmp_path, w4), on_cpu=True) == "compressed-tensors w4a16 g64"
    fp8 = {"quant_method": "compressed-tensors", "config_groups": {"g": {"weights": {"num_bits": 8, "type": "float"}}}}
    with pytest.raises(ConfigurationError, match="float8"):
        check_servable(_quantized(tmp_path, fp8), on_cpu=True)
    assert check_servable(_quantized(tmp_path, fp8), on_cpu=False)  # GPUs serve it
    sparse = w4 | {"sparsity_config": {"format": "sparse-24"}}
    with pytest.raises(ConfigurationError, match="sparse"):
        check_servable(_quantized(tmp_path, sparse), on_cpu=True)
    odd = {
        "quant_method": "compressed-tensors",
        "config_groups": {"g": {"weights": {"num_bits": 4, "type": "int", "group_size": 48}}},
    }
    with pytest.raises(ConfigurationError, match="multiple of 32"):
        check_servable(_quantized(tmp_path, odd), on_cpu=True)


def test_calibration_from_a_dataset_or_a_file(tmp_path: Path) -> None:
    lines = env.calibration_lines("trec", 5)
    assert len(lines) == 5 and lines[0]["messages"][0]["role"] == "user"
    text = tmp_path / "cal.txt"
    text.write_text("first line\n\nsecond line\n")
    assert [line["messages"][0]["content"] for line in env.calibration_lines(str(text), 10)] == [
        "first line",
        "second line",
    ]
    jsonl = tmp_path / "cal.jsonl"
    jsonl.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n" + json.dumps({"text": "yo"}) + "\n"
    )
    assert [line["messages"][0]["content"] for line in env.calibration_lines(str(jsonl), 10)] == ["hi", "yo"]
    with pytest.raises(ConfigurationError, match="neither a file"):
        env.calibration_lines("nope", 3)


def test_a_failed_run_leaves_no_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, base_model: Path) -> None:
    # The serving environment has no llm-compressor: run.py fails there, as a crash would.
    monkeypatch.setattr(env, "ensure_env", lambda root: Path(sys.executable))
    out = tmp_path / "models" / "q"
    job = env.Job(base_model, "w4a16-gptq", out, "trec", samples=2, group_size=8)
    with pytest.raises(ConfigurationError, match="nothing was written"):
        env.run(job, tmp_path / "envs")
    assert list((tmp_path / "models").iterdir()) == []
    out.mkdir()
    with pytest.raises(ConfigurationError, match="exists"):
        env.run(job, tmp_path / "envs")


def test_serve_refuses_a_base_the_cpu_engine_cannot_serve(
    tmp_path: Path, base_model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Refused before any vLLM child starts, with the reason."""
    import shutil

    from adaptserve.cli import main

    model = tmp_path / "fp8-model"
    shutil.copytree(base_model, model)
    config = json.loads((model / "config.json").read_text())
    fp8 = {"quant_method": "compressed-tensors", "config_groups": {"g": {"weights": {"num_bits": 8, "type": "float"}}}}
    (model / "config.json").write_text(json.dumps(config | {"quantization_config": fp8}))
    monkeypatch.setenv("ADAPTSERVE_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--model", str(model), "--port", "1"])
    assert "float8 weights are not served by vLLM on CPU" in str(exited.value.code)
