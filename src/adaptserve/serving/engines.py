"""The engines of `models:` beside the base model (a second LLM base for chat and
completions, or an encoder on vLLM's pooling runner, for `/v1/embeddings` or for
classify templates that name it): each one's own pool (readiness, health, the context
its engines report) and, when the gateway starts it, its supervised child; looked up by
the name a client sends, for the tenants its entry names. A classify model's class
names are its entry's `labels`, else its config.json's `id2label`. A generate entry
with `adapters` is an LLM base adapters are bound to (`adapters/bases.py`): its pool's
`on_up` is the gateway's (`server/backends.py`: residency, the picker, its zero
adapter), and its base requests go straight to its engine or through its zero adapter
(`Engine.base_target`), as the base model's do."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from adaptserve.adapters.catalog import Target
from adaptserve.adapters.residency import AdapterVersion
from adaptserve.adapters.spec import BaseModelSpec
from adaptserve.config import Settings
from adaptserve.default_model import encoder_labels, folder_digest, resolve_encoder
from adaptserve.engine_settings import ModelEntry
from adaptserve.errors import InvalidRequestError, ModelNotFoundError, NameTakenError, UpstreamError
from adaptserve.upstream.client import Upstream
from adaptserve.upstream.pool import OnUp, PoolTiming, UpstreamPool
from adaptserve.upstream.supervisor import GenerateSupervisor, PoolingSupervisor, Supervisor

log = logging.getLogger(__name__)

UpstreamState = tuple[str, str, bool, int]  # (model, url, in service, in flight): what the metrics show


@dataclass
class Engine:
    """One `models:` entry: its settings, its upstreams, its child (None: remote)."""

    entry: ModelEntry
    pool: UpstreamPool
    supervisor: Supervisor | None
    dim: int | None = None  # an embedding model's vector size, once an answer said it
    labels: list[str] | None = None  # a classify model's class names, in its order
    folder: Path | None = None  # a supervised engine's model folder
    max_model_len: int | None = None  # the context where its engines report none (`ModelEntry.context`)
    zero: AdapterVersion | None = None  # with adapters: its base route's all-zero adapter (its folder's)
    direct: bool = True  # its base requests go to its engine without `zero`
    _digest: str | None = field(default=None, init=False, repr=False)

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def generates(self) -> bool:
        return self.entry.role == "generate"

    @property
    def adaptable(self) -> bool:
        """A generate entry that takes adapters (and aliases, and templates)."""
        return self.generates and self.entry.adapters

    def base_target(self, public_name: str) -> Target:
        """Where its plain requests go: its engine under its served name, or through its
        zero adapter where its engine is not known to give a request without one none."""
        zero = None if self.direct else self.zero
        return Target(public_name, zero.internal_name if zero else self.entry.engine_name, zero, engine=self.name)

    def context_length(self) -> int | None:
        """The longest sequence its engines in service take (None: unknown)."""
        return self.pool.context_length(self.max_model_len) if self.max_model_len is not None else None

    async def digest(self) -> str | None:
        """SHA-256 of its weight files: the entry's `digest`, else its folder's (read
        once, off the event loop); None for a remote engine whose entry gives none, and
        for a folder with no `*.safetensors` (a digest of nothing would match any such)."""
        if self._digest is None:
            self._digest = self.entry.digest
        if self._digest is None and self.folder is not None and any(self.folder.glob("*.safetensors")):
            self._digest = await asyncio.to_thread(folder_digest, self.folder)
        return self._digest


class Engines:
    def __init__(self, engines: list[Engine], base_name: str = "") -> None:
        self._engines = {engine.name: engine for engine in engines}
        self.base_name = base_name  # the base model's name (a push's `base` may name it)

    @classmethod
    def build(cls, settings: Settings, lora: Callable[[Engine], OnUp] | None = None) -> Engines:
        """One pool per entry: a supervised child on loopback (`path`) or its `upstreams`;
        an entry with adapters gets `lora`'s on_up (its adapters placed before it serves)."""
        timing = PoolTiming(settings.health_interval_s, settings.health_failures, settings.load_scrape_interval_s)
        engines = []
        for entry in settings.models:
            supervisor: Supervisor | None = None
            folder, urls, labels = None, entry.upstreams, entry.labels
            if entry.path is not None:
                folder = resolve_encoder(entry.path)
                log_path = settings.data_dir / "logs" / f"vllm-{entry.name}.log"
                kind = GenerateSupervisor if entry.role == "generate" else PoolingSupervisor
                supervisor = kind(settings.vllm, entry, folder, log_path)
                urls = [supervisor.url]
                if entry.role == "classify":
                    labels = encoder_labels(folder, entry.labels, entry.name)
            upstreams = [Upstream(u, settings.request_timeout_s, settings.max_response_bytes) for u in urls]
            pool = UpstreamPool(upstreams, _serves(entry.engine_name), timing)
            context = entry.context(settings.vllm)
            engine = Engine(entry, pool, supervisor, labels=labels, folder=folder, max_model_len=context)
            if engine.adaptable and lora is not None:
                engine.pool = UpstreamPool(upstreams, lora(engine), timing)
            engines.append(engine)
        return cls(engines, settings.base_name)

    def __len__(self) -> int:
        return len(self._engines)

    def find(self, tenant: str, name: str) -> Engine | None:
        """The engine `name` names, if `tenant` may call it (else None, as for a name
        that does not exist)."""
        engine = self._engines.get(name)
        return engine if engine is not None and engine.entry.serves(tenant) else None

    def get(self, name: str) -> Engine | None:
        """The engine `name` names, whoever may call it (the admin API's checks)."""
        return self._engines.get(name)

    def pool(self, name: str) -> UpstreamPool:
        """The pool of the engine `name` names (one that exists: a resolved target's)."""
        return self._engines[name].pool

    def refuse_generate(self, name: str, what: str, param: str, tenant: str | None) -> None:
        """400 where `name` is a generate model of `models:` without `adapters` that
        `tenant` may call (None: any tenant, for what is global): it serves chat and
        completions only; adapters, aliases and templates stay on the base model. A
        tenant that may not call it learns nothing of it here either."""
        engine = self._engines.get(name) if tenant is None else self.find(tenant, name)
        if engine is not None and engine.generates and not engine.adaptable:
            raise InvalidRequestError(
                f"{what} {name!r} is a generate model of models: without adapters, which serves chat and "
                "completions only (adapters, aliases and templates are the base model's)",
                param=param,
                code="model_not_adaptable",
            )

    def refuse_alias_name(self, alias: str, tenant: str) -> None:
        """An alias never takes the name of a generate model of `models:` that `tenant`
        may call: 400 `model_not_adaptable` for one without adapters (`refuse_generate`),
        409 `name_taken` for one with them (the alias would hide it)."""
        self.refuse_generate(alias, "alias", "alias", tenant)
        engine = self.find(tenant, alias)
        if engine is not None and engine.generates:
            raise NameTakenError(
                f"the alias name {alias!r} is a generate model of models:; point an alias of another name at its "
                "adapters",
                param="alias",
            )

    def adapter_base(self, name: str | None, tenant: str | None) -> str:
        """The base a push names, as stored: "" for the base model (None, "" or its
        name), else a generate entry with adapters that `tenant` may call (None: the
        operator). Another entry of role generate is its 400 (`refuse_generate`); any
        other name, or an entry the tenant may not call, the 404 of an unknown model."""
        if not name or name == self.base_name:
            return ""
        self.refuse_generate(name, "the adapter's base", "base", tenant)
        engine = self._engines.get(name) if tenant is None else self.find(tenant, name)
        if engine is None or not engine.adaptable:
            unknown = ModelNotFoundError(name)
            unknown.param = "base"
            raise unknown
        return name

    def adapter_bases(self, tenant: str | None) -> list[str]:
        """The generate entries with adapters that `tenant` may call (None: the operator, all)."""
        return [e.name for e in self._engines.values() if e.adaptable and (tenant is None or e.entry.serves(tenant))]

    def adapter_specs(self) -> dict[str, BaseModelSpec | None]:
        """The shapes adapters of each entry with adapters are checked against: its
        folder's (supervised), else None (a remote engine: not checked, logged)."""
        specs: dict[str, BaseModelSpec | None] = {}
        for engine in self._engines.values():
            if engine.adaptable:
                specs[engine.name] = BaseModelSpec.read(engine.folder) if engine.folder is not None else None
                if engine.folder is None:
                    log.warning("model %s is remote: adapters for it are not checked against its shapes", engine.name)
        return specs

    def servable(self, tenant: str) -> list[Engine]:
        return [engine for engine in self._engines.values() if engine.entry.serves(tenant)]

    def names(self, tenant: str, role: str) -> list[str]:
        return [engine.name for engine in self.servable(tenant) if engine.entry.role == role]

    def ready(self) -> bool:
        """Every engine has a ready upstream (`/ready` needs them all)."""
        return all(engine.pool.ready() for engine in self._engines.values())

    def states(self) -> dict[str, list[str]]:
        return {name: [u.state.value for u in e.pool.upstreams] for name, e in self._engines.items()}

    def upstream_states(self) -> list[UpstreamState]:
        return [(name, *state) for name, e in self._engines.items() for state in e.pool.states()]

    async def start(self) -> None:
        for engine in self._engines.values():
            if engine.supervisor is not None:
                engine.supervisor.start()
            engine.pool.start()
        for engine in self._engines.values():
            if engine.entry.role == "embed":  # heads compare it: read while the engines start, not on a first call
                await engine.digest()

    async def stop(self) -> None:
        for engine in self._engines.values():
            await engine.pool.stop()
            if engine.supervisor is not None:
                await engine.supervisor.stop()


def _serves(engine_name: str) -> OnUp:
    """Before an upstream takes traffic: `check_serves`."""

    async def on_up(upstream: Upstream, ready: list[Upstream]) -> None:
        await check_serves(upstream, engine_name)

    return on_up


async def check_serves(upstream: Upstream, engine_name: str) -> frozenset[str]:
    """An upstream coming up must serve the model under the name we send (a remote
    engine started with another `--served-model-name` stays out, logged); the context it
    reports is recorded. → the names it lists (its adapters too)."""
    listed = await upstream.listed_models()
    if engine_name not in listed.names:
        raise UpstreamError(f"it serves {', '.join(sorted(listed.names))}, not {engine_name} (served_model_name)")
    upstream.max_model_len = listed.max_model_len  # a generate model's requests are held to it
    return listed.names
