"""The one request path every OpenAI call takes: check → resolve the tenant's alias →
admit under the tenant's quotas → lease the version → ensure it is loaded → forward →
rename the model in the answer → meter usage and record metrics.

OpenAI routes call `Pipeline.handle`; template endpoints call `Pipeline.run` with a
body they built. Nothing else forwards to vLLM.
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
from adaptserve.server.streaming import EventStreamResponse, relay
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
    label: str  # the metrics' endpoint label
    template: str = ""
    started: float = field(default_factory=time.perf_counter)
    status: int = 500
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add_usage(self, usage: dict[str, Any] | None) -> None:
        if usage:
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)

    def broke(self) -> None:
        """The stream broke after it began: the call failed (503) and is not metered."""
        self.status = UpstreamUnavailableError.status


@dataclass
class Answer:
    """A non-streamed upstream answer (its `model` already renamed) and where it ran."""

    body: dict[str, Any]
    target: Target


@dataclass
class Opened:
    """An upstream stream that started well. Its lease and its call record stay open
    until `respond`'s events end, however they end."""

    stream: UpstreamStream
    target: Target
    call: Call
    held: AsyncExitStack
    stall_timeout_s: float

    def respond(self, events: AsyncIterator[bytes]) -> StreamingResponse:
        # Closing twice is harmless: the generator closes `held` when it ends; the
        # background task closes it if the client left before iteration began.
        return EventStreamResponse(
            _hold_until_done(events, self.held), self.stall_timeout_s, BackgroundTask(self.held.aclose)
        )


class Pipeline:
    def __init__(
        self,
        pool: UpstreamPool,
        registry: AdapterRegistry,
        tenants: TenantRegistry,
        meter: UsageMeter,
        quotas: QuotaGate,
        metrics: Metrics,
        stall_timeout_s: float,
    ) -> None:
        self._pool, self._registry, self._tenants = pool, registry, tenants
        self._meter, self._quotas, self._metrics = meter, quotas, metrics
        self._stall_timeout_s = stall_timeout_s

    def resolve(self, tenant: str, model: str, base_fallback: bool = False) -> Target:
        """A tenant's alias → its target. Another tenant's alias, a deleted one and an
        unknown name all get the same 404, so existence never leaks. With
        `base_fallback` (global templates), "default" and the base name mean the base
        model for a tenant that has no alias of that name."""
        alias = self._tenants.alias(tenant, model)
        target = None
        if alias is not None and alias.base:
            target = self._registry.base_target(model)
        elif alias is not None and alias.adapter is not None:
            target = self._registry.target(model, alias.adapter, alias.version)
        elif alias is None and base_fallback and model in ("default", self._registry.base_name):
            target = self._registry.base_target(model)
        if target is None:
            raise ModelNotFoundError(model)
        return target

    async def handle(
        self, endpoint: Endpoint, body: dict[str, Any], principal: Principal
    ) -> JSONResponse | StreamingResponse:
        """An OpenAI request from a client, answered as vLLM answers it."""
        request = check_request(endpoint.schema, body)
        client_wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        outcome = await self.run(principal, request.model, endpoint, body, stream=bool(request.stream))
        if isinstance(outcome, Opened):
            events = relay(outcome.stream, outcome.target.public_name, outcome.call, client_wants_usage)
            return outcome.respond(events)
        return JSONResponse(outcome.body)

    async def run(
        self,
        principal: Principal,
        model: str,
        endpoint: Endpoint,
        body: dict[str, Any],
        *,
        stream: bool = False,
        template: str = "",
    ) -> Answer | Opened:
        """Resolve, admit, lease, load, forward and meter one upstream call. Template
        calls come here too, with `template` set and a body the gateway built."""
        target = await asyncio.to_thread(self.resolve, principal.tenant, model, bool(template))
        self._quotas.admit(principal.tenant, principal.limits)
        call = Call(principal.tenant, model, "template" if template else endpoint.name.lower(), template)
        forwarded = {**body, "model": target.internal_name}
        if stream:  # always ask vLLM for usage, so streams are metered too
            forwarded["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        async with AsyncExitStack() as stack:
            stack.callback(self._finish, call)
            stack.enter_context(self._registry.lease(target.adapter))
            try:
                outcome = await self._forward(endpoint, forwarded, target, stream)
            except APIError as exc:
                call.status = exc.status
                if isinstance(exc, ContextLengthExceededError):
                    exc.param = "inputs" if template else endpoint.prompt_param
                raise
            call.status = 200
            if isinstance(outcome, UpstreamStream):
                stack.push_async_callback(outcome.close)
                return Opened(outcome, target, call, stack.pop_all(), self._stall_timeout_s)
            outcome["model"] = target.public_name
            call.add_usage(outcome.get("usage"))
            return Answer(outcome, target)

    async def tokenize(self, body: dict[str, Any]) -> list[int]:
        """vLLM's `/tokenize` (the model's own tokenizer and chat template); it does
        not touch the engine, so it is neither leased nor metered."""
        answer = await self._pool.pick().post_json("/tokenize", body)
        return list(answer["tokens"])

    def _finish(self, call: Call) -> None:
        self._quotas.release(call.tenant, call.prompt_tokens + call.completion_tokens)
        labels = (call.tenant, call.model, call.label)
        self._metrics.requests.labels(*labels, str(call.status)).inc()
        self._metrics.latency.labels(*labels).observe(time.perf_counter() - call.started)
        if call.status == 200:
            self._meter.record(call.tenant, call.model, call.prompt_tokens, call.completion_tokens, call.template)
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
