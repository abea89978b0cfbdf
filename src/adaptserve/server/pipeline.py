"""The one request path every engine call takes: check → resolve the tenant's alias →
admit under the tenant's quotas (reserving the request's worst-case tokens) → lease the
version → ensure it is loaded → forward → rename the model in the answer → meter usage
and record metrics.

`Pipeline.admitted` is that path as one `async with`: nothing touches the engine
(tokenize, adapter load, generation) before the tenant is resolved and admitted, and
whatever happens inside is metered and released when it ends. OpenAI routes call
`handle`; template calls use `call`/`open_stream` or, for several engine calls in one
admission, `admitted` itself.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from adaptserve.adapters.registry import AdapterRegistry, Target
from adaptserve.errors import (
    APIError,
    ContextLengthExceededError,
    ModelNotFoundError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from adaptserve.metrics import Metrics
from adaptserve.server.bounds import RequestBounds, Reservation
from adaptserve.server.protocol import ChatRequest, CompletionRequest, check_request
from adaptserve.server.streaming import EventStreamResponse, relay
from adaptserve.tenancy.auth import Principal
from adaptserve.tenancy.quotas import QuotaGate
from adaptserve.tenancy.tenants import TenantRegistry
from adaptserve.tenancy.usage import UsageMeter
from adaptserve.upstream.client import AnswerTooLargeError, UpstreamModelMissingError, UpstreamStream
from adaptserve.upstream.pool import UpstreamPool

log = logging.getLogger(__name__)

CLIENT_CLOSED = 499  # the metrics' status for a stream the client cut: metered, not a failure


class Endpoint(enum.Enum):
    CHAT = ("/v1/chat/completions", "messages", ChatRequest)
    COMPLETIONS = ("/v1/completions", "prompt", CompletionRequest)

    def __init__(self, path: str, prompt_param: str, schema: type) -> None:
        self.path = path
        self.prompt_param = prompt_param
        self.schema = schema


@dataclass
class Call:
    """What one admitted request used, recorded once when it ends (however it ends)."""

    tenant: str
    uid: str
    model: str
    label: str  # the metrics' endpoint label
    template: str = ""
    reserved: int = 0  # tokens reserved at admission
    reserved_prompt: int = 0  # of which the prompt (an upper bound)
    started: float = field(default_factory=time.perf_counter)
    status: int = 500
    prompt_tokens: int = 0
    completion_tokens: int = 0
    unmeasured: bool = False  # the engine worked but its usage is unknown: the reservation is charged

    def add_usage(self, usage: dict[str, Any] | None, *, accumulate: bool = False) -> None:
        """vLLM's usage: the latest (streams report running totals) or, with
        `accumulate`, one more engine call of the same request."""
        if not usage:
            return
        prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        if accumulate:
            self.prompt_tokens += prompt
            self.completion_tokens += completion
        else:
            self.prompt_tokens, self.completion_tokens = prompt, completion

    def broke(self) -> None:
        """The stream broke after it began (the engine failed): a 503, not metered."""
        self.status = UpstreamUnavailableError.status

    def cut(self) -> None:
        """The client left mid-stream: what the engine did until then is metered. Cut
        before vLLM reported anything, the prompt's bound is charged: prefill ran."""
        if self.status == 200:
            self.status = CLIENT_CLOSED
            if not self.prompt_tokens:
                self.prompt_tokens = self.reserved_prompt

    def charge_reserved(self) -> None:
        """The gateway gave up waiting: the engine may have done all of the reserved
        work, and vLLM does not say how much it did, so the reservation is charged."""
        self.unmeasured = True
        self.prompt_tokens, self.completion_tokens = self.reserved_prompt, self.reserved - self.reserved_prompt

    @property
    def metered(self) -> bool:
        """Served, cut by the client, or given up on: the engine worked for it. A stream
        the engine broke is not metered (its quota is still charged what was used)."""
        return self.status in (200, CLIENT_CLOSED) or self.unmeasured


@dataclass
class Answer:
    """A non-streamed upstream answer (its `model` already renamed) and where it ran."""

    body: dict[str, Any]
    target: Target


@dataclass
class Opened:
    """An upstream stream that started well. Its admission (lease, quota, call record)
    stays open until `respond`'s events end, however they end."""

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


class Admission:
    """One admitted request's access to the engine, on its resolved target."""

    def __init__(self, pipeline: Pipeline, principal: Principal, target: Target, call: Call) -> None:
        self._pipeline, self.principal, self.target, self.call = pipeline, principal, target, call

    async def forward(self, endpoint: Endpoint, body: dict[str, Any]) -> dict[str, Any]:
        """A non-streamed engine call; its usage adds to the call's."""
        answer = await self._send(endpoint, self._body(body), stream=False)
        assert isinstance(answer, dict)
        answer["model"] = self.target.public_name
        self.call.add_usage(answer.get("usage"), accumulate=True)
        return answer

    async def open_stream(self, endpoint: Endpoint, body: dict[str, Any]) -> UpstreamStream:
        # Always ask vLLM for usage, in every chunk: a stream the client cuts is metered
        # up to where it was cut.
        options = {**(body.get("stream_options") or {}), "include_usage": True, "continuous_usage_stats": True}
        stream = await self._send(endpoint, self._body(body) | {"stream": True, "stream_options": options}, True)
        assert isinstance(stream, UpstreamStream)
        return stream

    async def tokenize(self, body: dict[str, Any]) -> list[int]:
        """vLLM's `/tokenize` (the model's own tokenizer and chat template)."""
        answer = await self._pipeline.pool.pick().post_json("/tokenize", body)
        return list(answer["tokens"])

    def _body(self, body: dict[str, Any]) -> dict[str, Any]:
        # The tenant's prefix-cache salt replaces whatever the client sent: cached blocks
        # are shared only within a tenant (or a group the operator declared).
        return {**body, "model": self.target.internal_name, "cache_salt": self.principal.cache_salt}

    async def _send(self, endpoint: Endpoint, body: dict[str, Any], stream: bool) -> UpstreamStream | dict[str, Any]:
        try:
            outcome = await self._pipeline.forward(endpoint, body, self.target, stream)
        except (UpstreamTimeoutError, AnswerTooLargeError):
            self.call.charge_reserved()  # the engine worked; how much, vLLM did not say
            raise
        except APIError as exc:
            exc.message = exc.message.replace(self.target.internal_name, self.target.public_name)
            if isinstance(exc, ContextLengthExceededError):
                exc.param = "inputs" if self.call.template else endpoint.prompt_param
            raise
        self.call.status = 200
        return outcome


class Pipeline:
    def __init__(
        self,
        pool: UpstreamPool,
        registry: AdapterRegistry,
        tenants: TenantRegistry,
        meter: UsageMeter,
        quotas: QuotaGate,
        metrics: Metrics,
        bounds: RequestBounds,
        stall_timeout_s: float,
    ) -> None:
        self.pool, self._registry, self._tenants = pool, registry, tenants
        self._meter, self._quotas, self._metrics = meter, quotas, metrics
        self.bounds = bounds
        self._stall_timeout_s = stall_timeout_s

    def resolve(self, tenant: str, model: str) -> Target:
        """A tenant's alias → its target. Another tenant's alias, a deleted one and an
        unknown name all get the same 404, so existence never leaks. The base model too
        is reached only through an alias of the tenant's (templates included)."""
        alias = self._tenants.alias(tenant, model)
        target = None
        if alias is not None and alias.base:
            target = self._registry.base_target(model)
        elif alias is not None and alias.adapter is not None:
            target = self._registry.target(model, alias.adapter, alias.version)
        if target is None:
            raise ModelNotFoundError(model)
        return target

    @asynccontextmanager
    async def admitted(
        self, principal: Principal, model: str, reserve: Reservation, *, label: str, template: str = ""
    ) -> AsyncIterator[Admission]:
        """Resolve, admit (reserving the request's worst case) and lease; on exit,
        however it exits, settle the quota and meter what was used."""
        target = await asyncio.to_thread(self.resolve, principal.tenant, model)
        self._quotas.admit(principal.uid, principal.limits, reserve.total)
        call = Call(principal.tenant, principal.uid, model, label, template, reserve.total, reserve.prompt)
        try:
            with self._registry.lease(target.adapter):
                yield Admission(self, principal, target, call)
        except APIError as exc:
            call.status = exc.status
            raise
        finally:
            self._finish(call)

    async def handle(
        self, endpoint: Endpoint, body: dict[str, Any], principal: Principal
    ) -> JSONResponse | StreamingResponse:
        """An OpenAI request from a client, answered as vLLM answers it."""
        request = check_request(endpoint.schema, body)
        if not request.stream:
            return JSONResponse((await self.call(principal, request.model, endpoint, body)).body)
        options = body.get("stream_options") or {}
        opened = await self.open_stream(principal, request.model, endpoint, body)
        events = relay(
            opened.stream,
            opened.target.public_name,
            opened.call,
            usage=bool(options.get("include_usage")),
            continuous=bool(options.get("include_usage") and options.get("continuous_usage_stats")),
            n=request.n or 1,
        )
        return opened.respond(events)

    async def call(
        self, principal: Principal, model: str, endpoint: Endpoint, body: dict[str, Any], *, template: str = ""
    ) -> Answer:
        """One non-streamed engine call in its own admission."""
        reserve = self.bounds.check(body, endpoint is Endpoint.CHAT)
        label = "template" if template else endpoint.name.lower()
        async with self.admitted(principal, model, reserve, label=label, template=template) as admission:
            return Answer(await admission.forward(endpoint, body), admission.target)

    async def open_stream(
        self, principal: Principal, model: str, endpoint: Endpoint, body: dict[str, Any], *, template: str = ""
    ) -> Opened:
        """A streamed engine call whose admission lasts until its events end."""
        reserve = self.bounds.check(body, endpoint is Endpoint.CHAT)
        label = "template" if template else endpoint.name.lower()
        async with AsyncExitStack() as stack:  # closes the admission if the stream fails to open
            admission = await stack.enter_async_context(
                self.admitted(principal, model, reserve, label=label, template=template)
            )
            stream = await admission.open_stream(endpoint, body)
            stack.push_async_callback(stream.close)
            return Opened(stream, admission.target, admission.call, stack.pop_all(), self._stall_timeout_s)
        raise AssertionError("unreachable")  # the stack either returned or raised

    def _finish(self, call: Call) -> None:
        used = call.prompt_tokens + call.completion_tokens
        self._quotas.release(call.uid, call.reserved, used)
        labels = (call.tenant, call.model, call.label)
        self._metrics.requests.labels(*labels, str(call.status)).inc()
        self._metrics.latency.labels(*labels).observe(time.perf_counter() - call.started)
        if call.metered:
            self._meter.record(
                call.tenant, call.uid, call.model, call.prompt_tokens, call.completion_tokens, call.template
            )
            self._metrics.tokens.labels(call.tenant, call.model, "prompt").inc(call.prompt_tokens)
            self._metrics.tokens.labels(call.tenant, call.model, "completion").inc(call.completion_tokens)

    async def forward(
        self, endpoint: Endpoint, body: dict[str, Any], target: Target, stream: bool
    ) -> UpstreamStream | dict[str, Any]:
        # Two tries: if the upstream lost the adapter (it restarted between health
        # checks), the first try fails before any output and we load it again.
        for _attempt in range(2):
            upstream = self.pool.pick()
            try:
                await self._registry.ensure_loaded(upstream, target.adapter)
            except UpstreamTimeoutError as exc:  # no generation ran: not the request's timeout
                raise UpstreamUnavailableError("The model server did not load the model in time; retry.") from exc
            try:
                if stream:
                    return await upstream.open_stream(endpoint.path, body)
                return await upstream.post_json(endpoint.path, body)
            except UpstreamModelMissingError:
                log.warning("%s lost %s; loading it again", upstream.url, target.internal_name)
                self._registry.forget(upstream, target.adapter)
        raise UpstreamUnavailableError("The model server could not load the model; retry shortly.")


async def _hold_until_done(events: AsyncIterator[bytes], stack: AsyncExitStack) -> AsyncIterator[bytes]:
    """Keep the admission open until the stream ends, however it ends (finished,
    broken, or the client left)."""
    async with stack:
        async for event in events:
            yield event
