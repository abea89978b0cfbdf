"""Dropping decoder layers from a model folder, on the safetensors directly (no model is
built): the config with the new layer count, the kept layers renumbered 0..K−1, every
other tensor copied unchanged in its dtype (a tied embedding stays tied, an untied
`lm_head` stays), the shard index, and the tokenizer and generation files. The result
is a stock folder of the same architecture with fewer layers: vLLM and transformers
load it as they load the source. `save_weights` writes trained weights back into it."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from adaptserve.errors import ConfigurationError

CONFIG = "config.json"
INDEX = "model.safetensors.index.json"
LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
# Never copied: what this module rewrites, a source's own manifest, and weights in
# other formats (an unpruned .bin next to the safetensors would be loaded instead).
_REWRITTEN = {CONFIG, INDEX, "manifest.json"}
_OTHER_WEIGHTS = {".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt"}


def read_config(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / CONFIG).read_text())


def layer_count(model_dir: Path) -> int:
    """The source's decoder layers; refuses a folder this module cannot prune."""
    config = read_config(model_dir)
    if config.get("quantization_config"):
        raise ConfigurationError(f"{model_dir} is quantized: prune the unquantized model, then quantize the pruned one")
    layers = config.get("num_hidden_layers")
    if not isinstance(layers, int) or layers < 2:
        raise ConfigurationError(f"{model_dir}: config.json has no num_hidden_layers of 2 or more")
    shards = list(model_dir.glob("*.safetensors"))
    if not shards:
        raise ConfigurationError(f"{model_dir} has no safetensors weights")
    seen = set()
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            seen |= {int(found.group(1)) for key in f.keys() if (found := LAYER_KEY.match(key))}  # noqa: SIM118
    if seen != set(range(layers)):
        raise ConfigurationError(
            f"{model_dir}: its decoder layers are not model.layers.0..{layers - 1} (a Llama-style layout), "
            "which is the only one pruned"
        )
    return layers


def kept_layers(layers: int, dropped: list[int]) -> list[int]:
    if not dropped or len(set(dropped)) != len(dropped) or not all(0 <= i < layers for i in dropped):
        raise ConfigurationError(f"layers to drop {dropped} must be distinct, of 0..{layers - 1}")
    if len(dropped) >= layers:
        raise ConfigurationError(f"dropping {len(dropped)} of {layers} layers would leave none")
    return [i for i in range(layers) if i not in dropped]


def renamed(key: str, new_index: dict[int, int], layers: int) -> str | None:
    """The tensor's name in the pruned model; None for a dropped layer's tensor."""
    found = LAYER_KEY.match(key)
    if found is None:
        return key
    old = int(found.group(1))
    if old >= layers:
        raise ConfigurationError(f"tensor {key} names layer {old}, beyond num_hidden_layers {layers}")
    return f"model.layers.{new_index[old]}.{found.group(2)}" if old in new_index else None


def write_pruned(source: Path, dest: Path, dropped: list[int]) -> list[int]:
    """Write the source model without the `dropped` layers into the existing folder
    `dest`; → the kept layers' indices in the source."""
    layers = layer_count(source)
    kept = kept_layers(layers, dropped)
    new_index = {old: new for new, old in enumerate(kept)}
    sizes: dict[str, int] = {}
    for file in sorted(source.glob("*.safetensors")):
        sizes |= _write_file(file, dest / file.name, new_index, layers)
    _write_index(source, dest, new_index, layers, sizes)
    config = read_config(source)
    config["num_hidden_layers"] = len(kept)
    if isinstance(config.get("layer_types"), list) and len(config["layer_types"]) == layers:
        config["layer_types"] = [config["layer_types"][i] for i in kept]
    (dest / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    for file in sorted(source.iterdir()):
        copied = file.name not in _REWRITTEN and file.suffix not in _OTHER_WEIGHTS
        if file.is_file() and copied and not file.name.startswith("."):
            shutil.copy2(file, dest / file.name)
    return kept


def _write_file(file: Path, dest: Path, new_index: dict[int, int], layers: int) -> dict[str, int]:
    """One safetensors file, pruned; → {tensor name: bytes}."""
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(file), framework="pt") as f:
        metadata = f.metadata() or {"format": "pt"}
        for key in f.keys():  # noqa: SIM118 (a safetensors handle is not a dict)
            name = renamed(key, new_index, layers)
            if name is not None:
                tensors[name] = f.get_tensor(key)
    save_file(tensors, str(dest), metadata=metadata)
    return {name: t.numel() * t.element_size() for name, t in tensors.items()}


def _write_index(source: Path, dest: Path, new_index: dict[int, int], layers: int, sizes: dict[str, int]) -> None:
    if not (source / INDEX).is_file():
        return
    index = json.loads((source / INDEX).read_text())
    weight_map = {}
    for key, shard in index.get("weight_map", {}).items():
        name = renamed(key, new_index, layers)
        if name is not None:
            weight_map[name] = shard
    index["weight_map"] = weight_map
    index.setdefault("metadata", {})["total_size"] = sum(sizes.values())
    (dest / INDEX).write_text(json.dumps(index, indent=2) + "\n")


def save_weights(state: dict[str, torch.Tensor], folder: Path) -> None:
    """Rewrite the folder's safetensors files from `state`: the same tensor names in each
    file, each in the dtype the file stores (trained float32 weights go back to bf16
    for a bf16 model)."""
    for file in sorted(folder.glob("*.safetensors")):
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(file), framework="pt") as f:
            metadata = f.metadata() or {"format": "pt"}
            for key in f.keys():  # noqa: SIM118
                if key not in state:
                    raise ValueError(f"the trained weights lack {key}")
                tensors[key] = state[key].detach().to(f.get_tensor(key).dtype).contiguous()
        tmp = file.with_name(f".{file.name}.tmp")
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, file)
