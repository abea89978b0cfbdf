"""`adaptserve quantize` for real: GPTQ W4A16 on the default model with 32 short
calibration sentences (in llm-compressor's own environment), then the serving environment
serves what it wrote, base and adapter requests alike. 32 rather than the default 128:
the calibration's forward passes and Hessians grow with the samples (oneshot 52 s against
88 s here), and the sanity answer and the served one still say "Paris"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import chat, models_dir, running_server


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("quantized") / "smollm-w4a16"
    cmd = [sys.executable, "-m", "adaptserve", "quantize", "--scheme", "w4a16-gptq"]
    cmd += ["--samples", "32", "--max-length", "128", "--out", str(out)]
    env = {**os.environ, "ADAPTSERVE_MODELS_DIR": str(models_dir())}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def test_quantize_writes_a_compressed_checkpoint_and_its_manifest(quantized: Path) -> None:
    manifest = json.loads((quantized / "manifest.json").read_text())
    assert manifest["scheme"] == "w4a16-gptq"
    assert manifest["recipe"]["group_size"] == 64  # 576 is not a multiple of 128
    assert manifest["calibration"]["samples"] == 32 and len(manifest["calibration"]["sha256"]) == 64
    assert "Paris" in manifest["sanity"]["answer"]
    assert manifest["size_bytes"] < 0.5 * manifest["base_size_bytes"]
    assert manifest["versions"]["llmcompressor"]
    config = json.loads((quantized / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert (quantized / "model.safetensors").is_file()
    assert [p.name for p in quantized.parent.iterdir()] == [quantized.name]  # no partial folders left


def test_the_gateway_serves_the_quantized_base_and_adapters_on_it(
    quantized: Path, adapter_dirs: dict[str, Path], tmp_path: Path
) -> None:
    with running_server(tmp_path, ["--model", str(quantized)]) as server:
        assert "compressed-tensors w4a16 g64" in server.log()
        client = server.client()
        base = chat(client, "default", "What is the capital of France?")
        assert "Paris" in base
        pushed = server.admin("POST", "/adapters", json={"name": "a1", "path": str(adapter_dirs["a1"])})
        assert pushed.status_code == 201, pushed.text
        assert server.admin("PUT", "/tenants/default/models/a1", json={"adapter": "a1"}).status_code == 200
        tuned = chat(client, "a1", "What is the capital of France?")
        assert tuned and tuned != base  # the bf16-trained adapter is applied on the 4-bit base
