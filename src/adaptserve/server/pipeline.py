"""The one request path every OpenAI call takes: check → resolve the tenant's alias →
admit under the tenant's quotas → lease the version → ensure it is loaded → forward →
rename the model in the answer → meter usage and record metrics.

Routes call `Pipeline.handle` and return what it returns; nothing else forwards.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from adaptserve.adapters.registry import AdapterRegistry, Target
from adaptserve.errors import APIError, ContextLengthExceededError, ModelNotFoundError, UpstreamUnavailableError
from adaptserve.metrics import Metrics
from adaptserve.server.protocol import ChatRequest, CompletionRequest, check_request
from adaptserve.server.streaming import relay
from adaptserve.tenancy.auth import Principal
from adaptserve.tenancy.quotas import QuotaGate
from adaptserve.tenancy.tenants import TenantRegistry
from adaptserve.tenancy.usage import UsageMeter
from adaptserve.upstream.client import UpstreamModelMissingError, UpstreamStream
from adaptserve.upstream.pool import UpstreamPool

log = logging.getLogger(__name__)


class Endpoint(enum.Enum):
    CHAT = ("/v1/chat/completions", "messages", ChatRequest)
    COMPLETIONS = ("/v1/completions", "prompt", CompletionRequest)

    def __init__(self, path: str, prompt_param: str, schema: type) -> None:
        self.path = path
        self.prompt_param = prompt_param
        self.schema = schema


@dataclass
class Call:
    """What one request used, recorded once when it ends (however it ends)."""

    tenant: str
    model: str
    endpoint: Endpoint
    started: float = field(default_factory=time.perf_counter)
    status: int = 500
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add_usage(self, usage: dict[str, Any] | None) -> None:
        if usage:
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)


class Pipeline:
    def __init__(
        self,
        pool: UpstreamPool,
        registry: AdapterRegistry,
        tenants: TenantRegistry,
        meter: UsageMeter,
        quotas: QuotaGate,
        metrics: Metrics,
    ) -> None:
        self._pool, self._registry, self._tenants = pool, registry, tenants
        self._meter, self._quotas, self._metrics = meter, quotas, metrics

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
        self._quotas.admit(principal.tenant, principal.limits)
        call = Call(principal.tenant, request.model, endpoint)
        forwarded = {**body, "model": target.internal_name}
        client_wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if request.stream:  # always ask vLLM for usage, so streams are metered too
            forwarded["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        async with AsyncExitStack() as stack:
            stack.callback(self._finish, call)
            stack.enter_context(self._registry.lease(target.adapter))
            try:
                outcome = await self._forward(endpoint, forwarded, target, bool(request.stream))
            except APIError as exc:
                call.status = exc.status
                if isinstance(exc, ContextLengthExceededError):
                    exc.param = endpoint.prompt_param
                raise
            call.status = 200
            if isinstance(outcome, UpstreamStream):
                stack.push_async_callback(outcome.close)
                held = stack.pop_all()
                events = relay(outcome, target.public_name, call.add_usage, client_wants_usage)
                # Closing twice is harmless: the generator closes `held` when it ends; the
                # background task closes it if the client left before iteration began.
                return StreamingResponse(
                    _hold_until_done(events, held),
                    media_type="text/event-stream",
                    background=BackgroundTask(held.aclose),
                )
            outcome["model"] = target.public_name
            call.add_usage(outcome.get("usage"))
            return JSONResponse(outcome)

    def _finish(self, call: Call) -> None:
        self._quotas.release(call.tenant, call.prompt_tokens + call.completion_tokens)
        labels = (call.tenant, call.model, call.endpoint.name.lower())
        self._metrics.requests.labels(*labels, str(call.status)).inc()
        self._metrics.latency.labels(*labels).observe(time.perf_counter() - call.started)
        if call.status == 200:
            self._meter.record(call.tenant, call.model, call.prompt_tokens, call.completion_tokens)
            self._metrics.tokens.labels(call.tenant, call.model, "prompt").inc(call.prompt_tokens)
            self._metrics.tokens.labels(call.tenant, call.model, "completion").inc(call.completion_tokens)

    async def _forward(
        self, endpoint: Endpoint, body: dict[str, Any], target: Target, stream: bool
    ) -> UpstreamStream | dict[str, Any]:
        # Two tries: if the upstream lost the adapter (it restarted between health
        # checks), the first try fails before any output and we load it again.
        for _attempt in range(2):
            upstream = self._pool.pick()
            await self._registry.ensure_loaded(upstream, target.adapter)
            try:
                if stream:
                    return await upstream.open_stream(endpoint.path, body)
                return await upstream.post_json(endpoint.path, body)
            except UpstreamModelMissingError:
                log.warning("%s lost %s; loading it again", upstream.url, target.internal_name)
                self._registry.forget(upstream, target.adapter)
        raise UpstreamUnavailableError("The model server could not load the model; retry shortly.")


async def _hold_until_done(events: AsyncIterator[bytes], stack: AsyncExitStack) -> AsyncIterator[bytes]:
    """Keep the version's lease and the call's record open until the stream ends,
    however it ends (finished, broken, or the client left)."""
    async with stack:
        async for event in events:
            yield event
