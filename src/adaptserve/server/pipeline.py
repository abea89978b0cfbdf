"""The one request path every OpenAI call takes: check → resolve the tenant's alias →
lease the version → ensure it is loaded → forward → rename the model in the answer.

Routes call `Pipeline.handle` and return what it returns; nothing else forwards.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from contextlib import ExitStack
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse

from adaptserve.adapters.registry import AdapterRegistry, Target
from adaptserve.errors import ContextLengthExceededError, ModelNotFoundError, UpstreamUnavailableError
from adaptserve.server.protocol import ChatRequest, CompletionRequest, check_request
from adaptserve.server.streaming import relay
from adaptserve.tenancy.auth import Principal
from adaptserve.tenancy.tenants import TenantRegistry
from adaptserve.upstream.client import UpstreamModelMissingError
from adaptserve.upstream.pool import UpstreamPool

log = logging.getLogger(__name__)


class Endpoint(enum.Enum):
    CHAT = ("/v1/chat/completions", "messages", ChatRequest)
    COMPLETIONS = ("/v1/completions", "prompt", CompletionRequest)

    def __init__(self, path: str, prompt_param: str, schema: type) -> None:
        self.path = path
        self.prompt_param = prompt_param
        self.schema = schema


class Pipeline:
    def __init__(self, pool: UpstreamPool, registry: AdapterRegistry, tenants: TenantRegistry) -> None:
        self._pool = pool
        self._registry = registry
        self._tenants = tenants

    def resolve(self, tenant: str, model: str) -> Target:
        """A tenant's alias → its target. Another tenant's alias, a deleted one and an
        unknown name all get the same 404, so existence never leaks."""
        alias = self._tenants.alias(tenant, model)
        target = None
        if alias is not None and alias.base:
            target = self._registry.base_target(model)
        elif alias is not None and alias.adapter is not None:
            target = self._registry.target(model, alias.adapter, alias.version)
        if target is None:
            raise ModelNotFoundError(model)
        return target

    async def handle(
        self, endpoint: Endpoint, body: dict[str, Any], principal: Principal
    ) -> JSONResponse | StreamingResponse:
        request = check_request(endpoint.schema, body)
        target = await asyncio.to_thread(self.resolve, principal.tenant, request.model)
        forwarded = {**body, "model": target.internal_name}
        with ExitStack() as lease:
            lease.enter_context(self._registry.lease(target.adapter))
            try:
                response = await self._forward(endpoint, forwarded, target, bool(request.stream))
            except ContextLengthExceededError as exc:
                exc.param = endpoint.prompt_param
                raise
            if isinstance(response, StreamingResponse):
                response.body_iterator = relay_with_lease(response.body_iterator, lease.pop_all())
            return response

    async def _forward(
        self, endpoint: Endpoint, body: dict[str, Any], target: Target, stream: bool
    ) -> JSONResponse | StreamingResponse:
        # Two tries: if the upstream lost the adapter (it restarted between health
        # checks), the first try fails before any output and we load it again.
        for _attempt in range(2):
            upstream = self._pool.pick()
            await self._registry.ensure_loaded(upstream, target.adapter)
            try:
                if stream:
                    opened = await upstream.open_stream(endpoint.path, body)
                    return StreamingResponse(relay(opened, target.public_name), media_type="text/event-stream")
                result = await upstream.post_json(endpoint.path, body)
            except UpstreamModelMissingError:
                log.warning("%s lost %s; loading it again", upstream.url, target.internal_name)
                self._registry.forget(upstream, target.adapter)
                continue
            result["model"] = target.public_name
            return JSONResponse(result)
        raise UpstreamUnavailableError("The model server could not load the model; retry shortly.")


async def relay_with_lease(chunks: Any, lease: ExitStack) -> Any:
    """Hold the version's lease until the stream ends, however it ends."""
    with lease:
        async for chunk in chunks:
            yield chunk
