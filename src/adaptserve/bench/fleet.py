"""The benchmark's tenants and adapters: N random rank-r LoRA adapters written from the
base model's shapes (numpy + safetensors, no torch), uploaded through the admin API and
spread over T tenants, each tenant owning every T-th adapter under the alias `aJ`
and the base model under `base`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from adaptserve_client import Client
from safetensors.numpy import save_file

TARGETS = ("q_proj", "v_proj")


def make_adapter(base: Path, out: Path, seed: int, rank: int = 8, targets: tuple[str, ...] = TARGETS) -> Path:
    """A PEFT LoRA folder with random A and B (a real, non-zero update) on attention
    modules (q and v by default; any of q, k, v, o)."""
    config = json.loads((base / "config.json").read_text())
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    shapes = {"q_proj": (q, hidden), "k_proj": (kv, hidden), "v_proj": (kv, hidden), "o_proj": (hidden, q)}
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(layers):
        for target in targets:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{target}"
            out_dim, in_dim = shapes[target]
            tensors[f"{prefix}.lora_A.weight"] = (rng.standard_normal((rank, in_dim)) / in_dim**0.5).astype(np.float16)
            tensors[f"{prefix}.lora_B.weight"] = (rng.standard_normal((out_dim, rank)) * 0.01).astype(np.float16)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base),
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "target_modules": list(targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "use_dora": False,
        "use_rslora": False,
    }
    (out / "adapter_config.json").write_text(json.dumps(adapter_config, indent=1))
    return out


@dataclass
class Fleet:
    """Who sends what: `keys[t]` is tenant t's key; adapter j is tenant (j % T)'s alias `aJ`."""

    keys: list[str]
    adapters: list[Path]

    def adapter_models(self, n: int) -> list[tuple[str, str]]:
        """(key, alias) of the first n adapters."""
        return [(self.keys[j % len(self.keys)], f"a{j}") for j in range(n)]

    def base_models(self) -> list[tuple[str, str]]:
        return [(key, "base") for key in self.keys]


def make_adapters(base: Path, folder: Path, count: int, rank: int) -> list[Path]:
    return [make_adapter(base, folder / f"a{j}", seed=j, rank=rank) for j in range(count)]


def build_fleet(url: str, admin_key: str, paths: list[Path], tenants: int) -> Fleet:
    """Tenants, keys and aliases on the gateway at `url`, and the adapters uploaded."""
    keys = []
    with Client(url, admin_key, timeout=600) as client:
        for t in range(tenants):
            name = f"bench-tenant-{t}"
            client.admin.tenants.create(name)
            keys.append(client.admin.keys.create(name)["key"])
            client.admin.aliases.set(name, "base", base=True)
        for j, path in enumerate(paths):
            client.admin.adapters.push(path, f"bench-a{j}")
            client.admin.aliases.set(f"bench-tenant-{j % tenants}", f"a{j}", adapter=f"bench-a{j}")
    return Fleet(keys, paths)
