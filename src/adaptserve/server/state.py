"""`Gateway`: everything one running server holds, built once from `Settings`."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from adaptserve.adapters.registry import AdapterRegistry
from adaptserve.adapters.spec import BaseModelSpec, write_zero_adapter
from adaptserve.config import Settings
from adaptserve.models import resolve_model
from adaptserve.server.pipeline import Pipeline
from adaptserve.tenancy.auth import DEFAULT_TENANT, KeyAuthenticator, ensure_api_key, hash_key
from adaptserve.upstream.client import Upstream
from adaptserve.upstream.pool import UpstreamPool
from adaptserve.upstream.supervisor import Supervisor

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    settings: Settings
    auth: KeyAuthenticator
    registry: AdapterRegistry
    pool: UpstreamPool
    pipeline: Pipeline
    supervisor: Supervisor | None
    started: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def build(cls, settings: Settings) -> Gateway:
        key, _ = ensure_api_key(_secret(settings), settings.data_dir)
        auth = KeyAuthenticator({hash_key(key): DEFAULT_TENANT})
        model_path = _local_model(settings)
        base = BaseModelSpec.read(model_path) if model_path else None
        registry = AdapterRegistry(settings.base_name, base, settings.vllm.max_lora_rank)
        if settings.base_via_zero_adapter:
            if base is None:
                raise ValueError("base_via_zero_adapter needs the base model folder to be readable")
            registry.set_zero_adapter(write_zero_adapter(base, settings.data_dir / "adapters"))
        for name, path in settings.adapters.items():
            registry.add(name, path)
        supervisor = None
        urls = settings.upstreams
        if not urls:
            assert model_path is not None
            log_path = settings.data_dir / "logs" / "vllm.log"
            supervisor = Supervisor(settings.vllm, model_path, settings.base_name, log_path)
            urls = [supervisor.url]
        upstreams = [Upstream(u, settings.request_timeout_s) for u in urls]
        pool = UpstreamPool(upstreams, settings.health_interval_s, registry.load_all)
        return cls(settings, auth, registry, pool, Pipeline(pool, registry), supervisor)

    async def start(self) -> None:
        if self.supervisor is not None:
            self.supervisor.start()
        self.pool.start()

    async def stop(self) -> None:
        await self.pool.stop()
        if self.supervisor is not None:
            await self.supervisor.stop()


def _secret(settings: Settings) -> str | None:
    return settings.api_key.get_secret_value() if settings.api_key else None


def _local_model(settings: Settings) -> Path | None:
    """The base model folder, converting the default model on first use. With
    upstreams and a model name that is not a local folder there is none."""
    if settings.upstreams and settings.model != "default" and not Path(settings.model).is_dir():
        log.warning("model %s is not a local folder: adapters are not checked against its shapes", settings.model)
        return None
    return resolve_model(settings.model, settings.resolved_models_dir)
