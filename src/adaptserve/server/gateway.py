"""`Gateway`: everything one running server holds, built once from `Settings` (what
requests are sent to: `backends.py`)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from pydantic import SecretStr

from adaptserve.adapters.catalog import AdapterCatalog
from adaptserve.adapters.residency import Residency
from adaptserve.adapters.store import AdapterStore
from adaptserve.config import Settings
from adaptserve.db import Database
from adaptserve.fit_reports import FitReportStore
from adaptserve.heads.catalog import HeadCatalog
from adaptserve.metrics import Metrics
from adaptserve.read_cache import ReadCache
from adaptserve.server.backends import Backends
from adaptserve.serving.embeddings import EmbeddingService
from adaptserve.serving.encoders import EncoderService
from adaptserve.serving.engines import Engines
from adaptserve.serving.heads import HeadService
from adaptserve.serving.pipeline import Pipeline
from adaptserve.serving.templates import TemplateLimits, TemplateService
from adaptserve.templates.registry import TemplateRegistry
from adaptserve.templates.render import Renderer, special_tokens
from adaptserve.tenancy.audit import AuditLog
from adaptserve.tenancy.auth import ADMIN_KEY_FILE, DEFAULT_TENANT, AuthThrottle, ensure_api_key, hash_key
from adaptserve.tenancy.quotas import QuotaGate
from adaptserve.tenancy.shared_quotas import QuotaSync
from adaptserve.tenancy.tenants import TenantRegistry
from adaptserve.tenancy.usage import UsageMeter
from adaptserve.upstream.pool import UpstreamPool
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
        """Storage and tenancy, what requests go to (`backends.py`), the pipeline in
        front of them, and the services over it."""
        db = Database.for_data_dir(settings.database_url, settings.data_dir)
        db.migrate()
        reads = ReadCache.over(db, settings.read_cache_ttl_s)
        tenants = TenantRegistry(db, settings.tenant_cache_groups, reads)
        metrics = Metrics()
        backends = Backends.build(settings, db, reads, metrics)
        _bootstrap_default_tenant(settings, tenants, backends.catalog, backends.engines)
        admin_key, _ = ensure_api_key(_secret(settings.admin_key), settings.data_dir, ADMIN_KEY_FILE)
        meter = UsageMeter(db, settings.usage_flush_interval_s)
        quotas = QuotaGate()
        sync = QuotaSync(db, quotas, settings.quota_sync_interval_s) if db.engine.dialect.name == "postgresql" else None
        pipeline = backends.pipeline(settings, tenants, meter, quotas, metrics, reads)
        templates = _templates(settings, db, reads, tenants)
        embeddings = EmbeddingService(pipeline, backends.engines)
        heads = _heads(settings, db, tenants)
        head_service = HeadService(pipeline, backends.engines, embeddings, heads, tenants.uid)
        service = _template_service(settings, pipeline, templates, head_service, backends)
        fit_reports = FitReportStore(db)
        tenants.owns(FitReportStore.remove_owned)
        return cls(
            settings,
            db,
            tenants,
            backends.store,
            backends.catalog,
            backends.residency,
            backends.pool,
            pipeline,
            templates,
            service,
            backends.supervisor,
            hash_key(admin_key),
            _hash_or_none(_secret(settings.metrics_key)),
            meter,
            metrics,
            AuthThrottle(settings.auth_failures_per_minute),
            quotas,
            sync,
            AuditLog(db),
            backends.engines,
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


def _templates(settings: Settings, db: Database, reads: ReadCache, tenants: TenantRegistry) -> TemplateRegistry:
    """The template registry, the `templates_dir` files applied."""
    templates = TemplateRegistry(db, settings.template_cache_size, reads)
    tenants.owns(TemplateRegistry.remove_owned)
    if settings.templates_dir is not None:
        templates.load_folder(settings.templates_dir)
    return templates


def _heads(settings: Settings, db: Database, tenants: TenantRegistry) -> HeadCatalog:
    """The classifier heads' catalog, what an interrupted write left swept away."""
    heads = HeadCatalog(db, AdapterStore(settings.data_dir / "heads", HEAD_STORE_BYTES), settings.template_cache_size)
    heads.sweep()
    tenants.owns(HeadCatalog.remove_owned)
    return heads


def _template_service(
    settings: Settings, pipeline: Pipeline, templates: TemplateRegistry, heads: HeadService, backends: Backends
) -> TemplateService:
    """Templates answered by the base model (rendered with its special tokens), by
    classifier heads, or by the encoders of `models:`."""
    limits = TemplateLimits(
        settings.max_template_batch,
        settings.explain_max_units,
        settings.explain_max_prompts,
        settings.template_cache_size,
    )
    renderer = Renderer(special_tokens(backends.model_path))
    return TemplateService(pipeline, templates, renderer, limits, heads, EncoderService(pipeline, backends.engines))


def _bootstrap_default_tenant(
    settings: Settings, tenants: TenantRegistry, catalog: AdapterCatalog, engines: Engines
) -> None:
    """The single key of a one-tenant setup stays valid as the `default` tenant's key,
    which sees the base model and the adapters named in the settings file (those of a
    `models:` entry where the entry serves it). A revoked
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
    entries = {e.name for e in settings.models}
    for name in sorted(entries & settings.adapters.keys()):  # its alias would hide the model for `default`
        log.error("adapter %s: the name is taken by a model of models:; skipped", name)
    adapters = {name: a for name, a in settings.adapters.items() if name not in entries}
    folders = {name: a.path for name, a in adapters.items()}
    bases = {name: engines.adapter_base(a.base, None) for name, a in adapters.items()}
    for name in catalog.register_from_settings(folders, bases):
        if bases[name] and engines.find(DEFAULT_TENANT, bases[name]) is None:
            log.warning("adapter %s is for %s, which the default tenant may not call: no alias", name, bases[name])
            continue
        tenants.set_alias(DEFAULT_TENANT, name, base=False, adapter=name, version=None)


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def _hash_or_none(key: str | None) -> str | None:
    return hash_key(key) if key else None
