"""One real `adaptserve serve` (gateway + vLLM child) for the whole test session,
with three good adapters and three bad ones made at session start; and, for the
modules that need an embedding model (test_embeddings.py, test_heads.py), one more
with the LLM and the bundled all-MiniLM-L6-v2 beside it, started once for both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from adaptserve.default_model import resolve_model
from adaptserve.engine_settings import MINILM
from tests.helpers import (
    ADAPTERS,
    EMBED_MODEL,
    MAX_LORAS,
    Server,
    make_corrupt_lora,
    make_lora,
    make_wrong_base_lora,
    models_dir,
    pooling_engine,
    running_server,
)


@pytest.fixture(scope="session")
def base_model() -> Path:
    return resolve_model("default", models_dir())


@pytest.fixture(scope="session")
def adapter_dirs(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    dirs = {name: make_lora(base_model, root / name, seed=i) for i, name in enumerate(ADAPTERS, start=1)}
    dirs["a4"] = make_lora(base_model, root / "a4", seed=4)  # not in the settings: uploaded by tests
    dirs["corrupt"] = make_corrupt_lora(dirs["a1"], root / "corrupt")
    dirs["rank64"] = make_lora(base_model, root / "rank64", seed=9, r=64)
    dirs["wrongbase"] = make_wrong_base_lora(root / "wrongbase")
    return dirs


@pytest.fixture(scope="session")
def server(adapter_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("data")
    config = data / "adaptserve.yaml"
    settings = {
        "adapters": {k: str(v) for k, v in adapter_dirs.items() if k != "a4"},
        "templates_dir": str(Path(__file__).parents[2] / "templates"),
        "vllm": {
            "max_loras": MAX_LORAS,
            "max_lora_rank": 16,
            "max_model_len": 2048,
            "kv_cache_gib": 1,
        },
    }
    config.write_text(yaml.safe_dump(settings))
    with running_server(data, ["--config", str(config)]) as srv:
        yield srv


@pytest.fixture(scope="session")
def embed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The generate model and MiniLM (`minilm`, a supervised pooling engine) behind one
    gateway; stopping the gateway stops the pooling engine too (checked)."""
    data = tmp_path_factory.mktemp("embeddings")
    settings = {
        "vllm": {"max_loras": 2, "max_lora_rank": 16, "max_model_len": 2048, "kv_cache_gib": 1},
        "models": [{"name": EMBED_MODEL, "role": "embed", "path": MINILM}],
    }
    (data / "adaptserve.yaml").write_text(yaml.safe_dump(settings))
    with running_server(data, ["--config", str(data / "adaptserve.yaml")]) as srv:
        yield srv
        pooling = pooling_engine(srv)[1]
        tree = [pooling, *pooling.children(recursive=True)]  # while they run: the API server, engine, worker
    _, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive, f"the pooling engine outlived the gateway: {alive}"
