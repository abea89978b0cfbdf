"""The one request path every engine call takes: resolve the tenant's alias (or a
generate model of `models:`, on its own pool; an alias of an adapter bound to one, on
that pool too) → bound the request (by its engines' context) → admit under the
tenant's quotas (reserving the request's worst-case tokens) → lease the version →
screen it under the tenant's PII policy (the costliest check, so the last) → ensure it
is loaded and forward (`forward.py`: the replica, the adapter load, a retry elsewhere)
→ rename the model in the answer → meter usage and record metrics.

`Pipeline.admitted` is that path as one `async with`: nothing touches the engine
(tokenize, adapter load, generation) before the tenant is resolved and admitted, and
whatever happens inside is metered and released when it ends. `call` is one
non-streamed engine call (→ `Answer`); `stream` opens a streamed one (→
`StreamingAnswer`, the single owner of its admission and upstream connection; both in
`answers.py`). Nothing
here speaks HTTP to the client: `server/responses.py` turns answers into responses.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

from adaptserve.adapters.catalog import AdapterCatalog, Target
from adaptserve.adapters.residency import Residency
from adaptserve.errors import (
    APIError,
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    ModelUnavailableError,
    QuotaExceededError,
    UpstreamDroppedError,
    UpstreamServerError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from adaptserve.metrics import Metrics
from adaptserve.pii.masking import Placeholders
from adaptserve.read_cache import ReadCache
from adaptserve.serving.answers import Answer, StreamingAnswer
from adaptserve.serving.bounds import RequestBounds, Reservation
from adaptserve.serving.engines import Engines
from adaptserve.serving.forward import Forwarder
from adaptserve.serving.picker import Picker
from adaptserve.serving.privacy import PrivacyGuard, restore_answer, restoring
from adaptserve.serving.record import CallRecord
from adaptserve.serving.relay import Relay, openai_relay
from adaptserve.tenancy.auth import Principal
from adaptserve.tenancy.quotas import QuotaGate
from adaptserve.tenancy.tenants import Alias, TenantRegistry
from adaptserve.tenancy.usage import UsageMeter
from adaptserve.upstream.client import AnswerTooLargeError, Upstream, UpstreamStream
from adaptserve.upstream.pool import UpstreamPool

T = TypeVar("T")


class Endpoint(enum.Enum):
    CHAT = ("/v1/chat/completions", "messages")
    COMPLETIONS = ("/v1/completions", "prompt")

    def __init__(self, path: str, prompt_param: str) -> None:
        self.path = path
        self.prompt_param = prompt_param


# Failures after the engine read the request, where vLLM does not say what it did: charged the reservation.
_WORKED = (UpstreamTimeoutError, UpstreamDroppedError, UpstreamServerError, AnswerTooLargeError)


class Admission:
    """One admitted request's access to the engine, on its resolved target."""

    def __init__(self, pipeline: Pipeline, principal: Principal, target: Target, call: CallRecord) -> None:
        self._pipeline, self.principal, self.target, self.call = pipeline, principal, target, call

    @property
    def model(self) -> str:
        """The served model's internal name (what a template's calibration is keyed by)."""
        return self.target.internal_name

    @property
    def base(self) -> str:
        """The LLM base it runs on ("": the base model; a template's scoring plan is its)."""
        return self.target.engine or ""

    async def screen(self, endpoint: Endpoint, body: dict[str, Any]) -> tuple[dict[str, Any], Placeholders | None]:
        """The client's body under the tenant's PII policy, checked only now that the
        request is admitted (detection is the costliest check). A masked body is bounded
        again, and reserves more tokens if it may use more."""
        screened, placeholders = await self._pipeline.privacy.screen_body(self.principal, body, endpoint.prompt_param)
        if placeholders is not None:
            context = self._pipeline.context(self.target.engine)
            reservation = self._pipeline.bounds.check(screened, endpoint is Endpoint.CHAT, context)
            self._pipeline.reserve_more(self.principal, self.call, reservation)
        return screened, placeholders

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """A non-streamed `/v1/completions` call (the classifier's scoring reads)."""
        return await self.forward(Endpoint.COMPLETIONS, body)

    async def forward(self, endpoint: Endpoint, body: dict[str, Any]) -> dict[str, Any]:
        """A non-streamed engine call; its usage adds to the call's."""
        sent = self._body(body)
        answer = await self._send(endpoint, lambda upstream: upstream.post_json(endpoint.path, sent))
        answer["model"] = self.target.public_name
        self.call.add_usage(answer.get("usage"), accumulate=True)
        return answer

    async def open_stream(self, endpoint: Endpoint, body: dict[str, Any]) -> UpstreamStream:
        # Always ask vLLM for usage, in every chunk: a stream the client cuts is metered
        # up to where it was cut.
        options = {**(body.get("stream_options") or {}), "include_usage": True, "continuous_usage_stats": True}
        sent = self._body(body) | {"stream": True, "stream_options": options}
        return await self._send(endpoint, lambda upstream: upstream.open_stream(endpoint.path, sent))

    async def tokenize(self, body: dict[str, Any]) -> list[int]:
        """vLLM's `/tokenize` (the model's own tokenizer and chat template, on its base's engine)."""
        return await self._pipeline.tokenize(body, self.target.engine)

    def _body(self, body: dict[str, Any]) -> dict[str, Any]:
        # The tenant's prefix-cache salt replaces whatever the client sent: cached blocks
        # are shared only within a tenant (or a group the operator declared).
        return {**body, "model": self.target.internal_name, "cache_salt": self.principal.cache_salt}

    async def _send(self, endpoint: Endpoint, send: Callable[[Upstream], Awaitable[T]]) -> T:
        try:
            outcome = await self._pipeline.forwarder.forward(self.target, send, self._again)
        except APIError as exc:
            if isinstance(exc, _WORKED):
                self.call.charge_reserved()  # the engine may have worked; how much, vLLM did not say
            exc.message = exc.message.replace(self.target.internal_name, self.target.public_name)
            if isinstance(exc, ContextLengthExceededError):
                exc.param = "inputs" if self.call.template else endpoint.prompt_param
            raise
        self.call.status = 200
        return outcome

    def _again(self, failed: UpstreamUnavailableError) -> bool:
        """Whether a failed attempt may be sent to another replica: one that reached an
        engine only if the tenant's quota takes its worst case again, and it is charged."""
        if not isinstance(failed, UpstreamDroppedError):
            return True  # nothing reached an engine
        if not self._pipeline.reserve_again(self.principal, self.call):
            return False
        self.call.charge_failed_attempt()
        return True


class Pipeline:
    def __init__(
        self,
        pool: UpstreamPool,
        catalog: AdapterCatalog,
        residency: Residency,
        picker: Picker,
        tenants: TenantRegistry,
        meter: UsageMeter,
        quotas: QuotaGate,
        metrics: Metrics,
        bounds: RequestBounds,
        privacy: PrivacyGuard,
        engines: Engines,
        reads: ReadCache | None = None,
    ) -> None:
        self._reads = reads if reads is not None else ReadCache(0.0)  # the cache `resolve`'s database reads go through
        self._engines = engines  # the models of `models:`: generate ones answered, others a 400 saying where
        self.pool, self._catalog, self._residency, self._tenants = pool, catalog, residency, tenants
        self.forwarder = Forwarder(pool, picker, residency, engines, metrics)  # where each engine call goes
        self._meter, self._quotas, self._metrics = meter, quotas, metrics
        self.bounds, self.privacy = bounds, privacy

    @property
    def engines(self) -> Engines:
        return self._engines

    async def tokenize(self, body: dict[str, Any], engine: str | None = None) -> list[int]:
        """vLLM's `/tokenize` on a ready replica of the base model (`engine`: of that
        generate model of `models:`): no generation. Inside an admission, or for an
        admin saving a template (its labels' scoring plan)."""
        pool = self._engines.pool(engine) if engine is not None else self.pool
        answer = await pool.pick().post_json("/tokenize", body)
        return list(answer["tokens"])

    async def base_of(self, tenant: str | None, model: str) -> str | None:
        """The generate model of `models:` a template's `model` runs on (None: the base
        model), by `resolve`'s precedence: a tenant's alias first (an alias of an
        adapter bound to an entry: that entry; one that does not resolve: the base
        model's, as before), else an entry with adapters named directly."""
        return await self._reads.in_loop_or_thread(self._base_of, tenant, model)

    def _base_of(self, tenant: str | None, model: str) -> str | None:
        alias = self._tenants.alias(tenant, model) if tenant is not None else None
        if alias is not None:
            target = self._target(alias)
            return target.engine if target is not None else None
        engine = self._engines.get(model) if tenant is None else self._engines.find(tenant, model)
        return engine.name if engine is not None and engine.adaptable else None

    async def resolved(self, tenant: str, model: str) -> Target:
        """`resolve`, off the event loop where its reads are not cached: a call resolves
        its target once and passes it on (`admitted(target=...)`), its base included."""
        return await self._reads.in_loop_or_thread(self.resolve, tenant, model)

    def resolve(self, tenant: str, model: str) -> Target:
        """A tenant's alias → its target. Another tenant's alias, a deleted one and an
        unknown name all get the same 404, so existence never leaks. The base model too
        is reached only through an alias of the tenant's (templates included). A version
        held back after a failed load is temporary, not missing: 503 + `Retry-After`. A
        generate model of `models:` the tenant may call is its own target (`Engine.base_target`),
        an alias of an adapter bound to one is that adapter on it."""
        alias = self._tenants.alias(tenant, model)
        target = self._target(alias) if alias is not None else None
        engine = self._engines.find(tenant, model) if target is None and alias is None else None
        if engine is not None and engine.generates:
            return engine.base_target(model)
        if engine is not None:
            embed = engine.entry.role == "embed"
            use = "an embedding model: call /v1/embeddings" if embed else "a classify model: a template's encoder"
            raise InvalidRequestError(
                f"The model '{model}' is {use}.",
                param="model",
                code="model_not_generative",
            )
        if target is None:
            raise ModelNotFoundError(model)
        wait = target.adapter.backoff_left() if target.adapter is not None else 0.0
        if wait > 0:
            raise ModelUnavailableError(model, retry_after=max(1, math.ceil(wait)))
        return target

    def _on_base(self, principal: Principal, target: Target) -> None:
        """A template runs on the base model or a generate model of `models:` with
        adapters: one naming a generate model without them (read from `templates_dir`,
        or saved before that entry existed) is refused."""
        if target.engine is not None:
            self._engines.refuse_generate(target.public_name, "the template's model", "model", principal.tenant)

    def context(self, engine: str | None) -> int | None:
        """The context a target's `engine` holds requests to (None: the base model's)."""
        found = self._engines.get(engine) if engine is not None else None
        return found.context_length() if found is not None else None

    def servable(self, tenant: str) -> list[Alias]:
        """The tenant's aliases whose model exists: the only names `resolve` answers (a
        version in its load back-off included: temporary, not gone) and what
        `/v1/models` lists."""
        return [alias for alias in self._tenants.aliases(tenant) if self._target(alias) is not None]

    def _target(self, alias: Alias) -> Target | None:
        """Where an alias goes now; None when its adapter is gone, or is bound to a
        generate model of `models:` the alias's tenant may not call (or that takes
        adapters no more). One in its load back-off is still there: listed, and answered
        503 by `resolve`."""
        if alias.base:
            return self._catalog.base_target(alias.alias)
        if alias.adapter is None:
            return None
        target = self._catalog.target(alias.alias, alias.adapter, alias.version)
        if target is not None and target.engine is not None:
            engine = self._engines.find(alias.tenant, target.engine)
            return target if engine is not None and engine.adaptable else None
        return target

    async def precheck(self, principal: Principal, model: str) -> None:
        """Refuse what admission would (an unknown model, a tenant over its quotas),
        counting nothing: before work that precedes admission (a template's screening)."""
        target = await self._reads.in_loop_or_thread(self.resolve, principal.tenant, model)
        self._on_base(principal, target)
        try:
            self._quotas.check(principal.uid, principal.limits)
        except QuotaExceededError as exc:
            self._metrics.quota_rejections.labels(principal.tenant, exc.limit).inc()
            raise

    def reserve_more(self, principal: Principal, call: CallRecord, reservation: Reservation) -> None:
        """An admitted call's reservation grown to `reservation` (or a 429)."""
        extra = reservation.total - call.reserved
        if extra > 0:
            self._quotas.extend(call.uid, principal.limits, extra)
            call.reserved, call.reserved_prompt = reservation.total, max(call.reserved_prompt, reservation.prompt)

    @asynccontextmanager
    async def admitted(
        self,
        principal: Principal,
        model: str,
        reserve: Reservation,
        *,
        label: str,
        template: str = "",
        target: Target | None = None,
    ) -> AsyncIterator[Admission]:
        """Resolve (unless `target` is the model's, resolved already), admit (reserving
        the request's worst case) and lease; on exit, however it exits, settle the
        quota and meter what was used."""
        resolved = (
            await self._reads.in_loop_or_thread(self.resolve, principal.tenant, model) if target is None else target
        )
        if template:
            self._on_base(principal, resolved)
        async with self.metered(principal, model, reserve, label=label, template=template) as call:
            with self._residency.lease(resolved.adapter):
                yield Admission(self, principal, resolved, call)

    @asynccontextmanager
    async def metered(
        self, principal: Principal, model: str, reserve: Reservation, *, label: str, template: str = ""
    ) -> AsyncIterator[CallRecord]:
        """Admit under the tenant's quotas (reserving `reserve`); on exit, however it
        exits, settle the quota and meter what the call's record says was used. Every
        engine call is inside one (through `admitted`, or `/v1/embeddings` directly)."""
        try:
            self._quotas.admit(principal.uid, principal.limits, reserve.total)
        except QuotaExceededError as exc:
            self._metrics.quota_rejections.labels(principal.tenant, exc.limit).inc()
            raise
        call = CallRecord(principal.tenant, principal.uid, model, label, template, reserve.total, reserve.prompt)
        try:
            yield call
        except APIError as exc:
            call.status = exc.status
            await self.privacy.scrub(principal, exc)
            raise
        finally:
            self._finish(call)

    async def call(
        self, principal: Principal, model: str, endpoint: Endpoint, body: dict[str, Any], *, template: str = ""
    ) -> Answer:
        """One non-streamed engine call in its own admission. A client's own call is
        screened once admitted (a template screens its inputs itself)."""
        placeholders = None
        target = await self._reads.in_loop_or_thread(self.resolve, principal.tenant, model)
        reserve = self.bounds.check(body, endpoint is Endpoint.CHAT, self.context(target.engine))
        label = "template" if template else endpoint.name.lower()
        async with self.admitted(principal, model, reserve, label=label, template=template, target=target) as admission:
            if not template:
                body, placeholders = await admission.screen(endpoint, body)
            answer = await admission.forward(endpoint, body)
            return Answer(restore_answer(placeholders, answer), admission.target)

    async def stream(
        self,
        principal: Principal,
        model: str,
        endpoint: Endpoint,
        body: dict[str, Any],
        *,
        template: str = "",
        relay: Relay | None = None,
    ) -> StreamingAnswer:
        """A streamed engine call whose admission lasts until the answer is closed. Its
        events are `relay`'s (default: the OpenAI stream, as the body's options ask),
        restored where the tenant's PII policy masked the request."""
        relay = relay or openai_relay(body, model)
        target = await self._reads.in_loop_or_thread(self.resolve, principal.tenant, model)
        reserve = self.bounds.check(body, endpoint is Endpoint.CHAT, self.context(target.engine))
        label = "template" if template else endpoint.name.lower()
        async with AsyncExitStack() as stack:  # closes the admission if the stream fails to open
            admission = await stack.enter_async_context(
                self.admitted(principal, model, reserve, label=label, template=template, target=target)
            )
            if not template:
                body, placeholders = await admission.screen(endpoint, body)
                relay = restoring(relay, placeholders)
            stream = await admission.open_stream(endpoint, body)
            stack.push_async_callback(stream.close)
            return StreamingAnswer(stream, admission.target, admission.call, stack.pop_all(), relay)
        raise AssertionError("unreachable")  # the stack either returned or raised

    def reserve_again(self, principal: Principal, call: CallRecord) -> bool:
        """Reserve the call's worst case once more, for a retry; False when the tenant's
        quota does not take it (the failure is then the answer)."""
        try:
            self._quotas.extend(principal.uid, principal.limits, call.reserved)
        except (QuotaExceededError, InvalidRequestError):
            return False
        call.retry_reserved += call.reserved
        return True

    def _finish(self, call: CallRecord) -> None:
        used = call.prompt_tokens + call.completion_tokens
        self._quotas.release(call.uid, call.reserved + call.retry_reserved, used)
        labels = (call.tenant, call.model, call.label)
        self._metrics.requests.labels(*labels, str(call.status)).inc()
        self._metrics.latency.labels(*labels).observe(time.perf_counter() - call.started)
        if call.first_event is not None:
            self._metrics.first_token.labels(call.tenant, call.model).observe(call.first_event - call.started)
        if call.metered:
            self._meter.record(
                call.tenant, call.uid, call.model, call.prompt_tokens, call.completion_tokens, call.template
            )
            self._metrics.tokens.labels(call.tenant, call.model, "prompt").inc(call.prompt_tokens)
            self._metrics.tokens.labels(call.tenant, call.model, "completion").inc(call.completion_tokens)
            self._metrics.tokens.labels(call.tenant, call.model, "cached").inc(call.cached_tokens)
