"""The serving side of a tenant's PII policy (`pii/`): a request's texts are screened
before the engine sees them (every string it reads, `screening.py`; `mask`: numbered
placeholders, and a 400 where a placeholder cannot stand; `block`: 400 naming the
entity types, never the values), answers and streams are restored to the caller's
values, and error messages that may quote content are scrubbed (`log` and up).
Detection is bounded (bytes per request, its own worker threads, a few at a time per
tenant) and runs after the request is admitted (`pipeline.py`). If it fails, the
request is refused: masking fails closed, never open."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from adaptserve.errors import APIError, InvalidRequestError, PayloadTooLargeError
from adaptserve.pii.detector import Detector, Finding
from adaptserve.pii.masking import Placeholders, StreamRestorer, scrubbed
from adaptserve.pii.policy import PiiMode, PiiPolicy
from adaptserve.serving.relay import DATA, sse_event
from adaptserve.serving.screening import Kind, Leaf, leaves, rebuilt
from adaptserve.tenancy.auth import Principal

if TYPE_CHECKING:
    from adaptserve.metrics import Metrics
    from adaptserve.serving.record import CallRecord
    from adaptserve.serving.relay import Relay
    from adaptserve.upstream.client import UpstreamStream

log = logging.getLogger(__name__)
T = TypeVar("T")


class PiiBlockedError(APIError):
    status = 400
    type = "invalid_request_error"
    code = "pii_detected"


class PiiUnavailableError(APIError):
    """Detection failed: the request is refused rather than passed on unscreened."""

    status = 503
    type = "server_error"
    code = "pii_detection_failed"


class PrivacyGuard:
    """Detection for the serving path, bounded: at most `max_bytes` of one request are
    read (more: 413), on `workers` threads of its own (never the pool every request
    needs), at most `per_tenant` at a time for one tenant (one tenant's detection
    cannot take every worker from the others)."""

    def __init__(self, detector: Detector, metrics: Metrics, *, max_bytes: int, workers: int, per_tenant: int) -> None:
        self._detector, self._metrics, self._max_bytes = detector, metrics, max_bytes
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="pii")
        self._slots = TenantSlots(per_tenant)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def screen(self, principal: Principal, texts: list[str], param: str) -> tuple[list[str], Placeholders | None]:
        """`texts` as the engine may see them, and the placeholders to restore the
        answer with (None: nothing to restore)."""
        if not principal.pii.screens:
            return texts, None
        return await self._screen_leaves(principal, [Leaf(t, Kind.MASK, param) for t in texts], param)

    async def screen_body(
        self, principal: Principal, body: dict[str, Any], param: str
    ) -> tuple[dict[str, Any], Placeholders | None]:
        """A chat or completions body, screened whole (`screening.py`: every string the
        engine reads, keys included). Token-id prompts cannot be screened: 400."""
        if not principal.pii.screens:
            return body, None
        if param == "prompt" and not _all_text(body.get("prompt")):
            raise InvalidRequestError(
                "token-id prompts cannot be checked for personal data, which this tenant's policy requires: send text",
                param="prompt",
            )
        found = leaves(body)
        masked, placeholders = await self._screen_leaves(principal, found, param)
        return rebuilt(body, masked), placeholders

    async def _screen_leaves(
        self, principal: Principal, found: list[Leaf], param: str
    ) -> tuple[list[str], Placeholders | None]:
        self._check_size(found, param)
        policy = principal.pii
        findings = await self._find(principal.uid, policy, [leaf.searched for leaf in found])
        hits = [(leaf, fs) for leaf, fs in zip(found, findings, strict=True) if fs]
        for _, fs in hits:
            for f in fs:
                self._metrics.pii_found.labels(principal.tenant, f.entity, policy.mode.value).inc()
        entities = ", ".join(sorted({f.entity for _, fs in hits for f in fs}))
        if policy.mode is PiiMode.BLOCK and hits:
            raise PiiBlockedError(f"the request holds personal data ({entities})", param=hits[0][0].field)
        fixed = [leaf for leaf, _ in hits if leaf.kind is Kind.FIXED]
        if fixed:
            raise PiiBlockedError(
                f"the request holds personal data ({entities}) where it cannot be masked (an object key, a role, "
                "an identifier, a stop sequence, a constraint or a field the gateway does not know)",
                param=fixed[0].field,
            )
        placeholders = Placeholders()
        masked = [placeholders.mask(leaf.text, fs) for leaf, fs in zip(found, findings, strict=True)]
        return masked, placeholders if placeholders else None

    def _check_size(self, found: list[Leaf], param: str) -> None:
        sizes: dict[str | None, int] = {}
        for leaf in found:
            sizes[leaf.field] = sizes.get(leaf.field, 0) + len(leaf.searched.encode())  # what detection reads
        if sum(sizes.values()) > self._max_bytes:
            raise PayloadTooLargeError(
                f"{sum(sizes.values())} bytes of text to check for personal data, which this tenant's policy "
                f"requires; at most {self._max_bytes} per request (pii_max_bytes_per_request)",
                param=max(sizes, key=lambda f: sizes[f]) or param,
                code="pii_too_large",
            )

    async def scrub(self, principal: Principal, exc: APIError) -> None:
        """An error whose message may quote content, without what it quotes."""
        if not principal.pii.detects or not exc.carries_content:
            return
        try:
            (found,) = await self._find(principal.uid, principal.pii, [exc.message])
        except PiiUnavailableError:
            exc.message = "(the message was withheld: it could not be checked for personal data)"
            return
        exc.message = scrubbed(exc.message, found)

    async def _find(self, tenant: str, policy: PiiPolicy, texts: list[str]) -> list[list[Finding]]:
        try:
            return await self._slots.run(tenant, self._pool, lambda: [self._detector.find(t, policy) for t in texts])
        except Exception as exc:  # any failure of detection: fail closed
            log.exception("personal-data detection failed")
            raise PiiUnavailableError("personal-data detection failed; the request was not sent") from exc


class TenantSlots:
    """At most `per_tenant` detections of one tenant at a time. A slot is freed when its
    thread ends, not when its caller stops waiting: a client that leaves cannot free
    its slot while its detection still runs."""

    def __init__(self, per_tenant: int) -> None:
        self._per_tenant = per_tenant
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._users: dict[str, int] = {}  # holders and waiters: the semaphore goes with the last

    async def run(self, tenant: str, pool: ThreadPoolExecutor, work: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        slot = self._slots.setdefault(tenant, asyncio.Semaphore(self._per_tenant))
        self._users[tenant] = self._users.get(tenant, 0) + 1
        try:
            await slot.acquire()
        except BaseException:
            self._leave(tenant)
            raise
        try:
            future = pool.submit(work)
        except BaseException:
            self._done(tenant, slot)
            raise
        future.add_done_callback(lambda _: _call_soon(loop, self._done, tenant, slot))
        return await asyncio.wrap_future(future, loop=loop)

    def _done(self, tenant: str, slot: asyncio.Semaphore) -> None:
        slot.release()
        self._leave(tenant)

    def _leave(self, tenant: str) -> None:
        self._users[tenant] -= 1
        if not self._users[tenant]:
            del self._users[tenant], self._slots[tenant]


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed (shutdown): nothing is left to free
        loop.call_soon_threadsafe(fn, *args)


def restore_answer(placeholders: Placeholders | None, body: dict[str, Any]) -> dict[str, Any]:
    """A chat or completions answer with its placeholders restored (in place)."""
    if placeholders is None:
        return body
    for choice in body.get("choices") or []:
        if isinstance(choice.get("message"), dict):
            choice["message"] = placeholders.restore_all(choice["message"])  # tool-call arguments too
        if isinstance(choice.get("text"), str):
            choice["text"] = placeholders.restore(choice["text"])
    return body


def restoring(relay: Relay, placeholders: Placeholders | None) -> Relay:
    """`relay` whose events' text is restored as it streams: OpenAI chunks (per choice)
    and template events (`delta`, then the result)."""
    if placeholders is None:
        return relay

    async def restored(stream: UpstreamStream, call: CallRecord) -> AsyncGenerator[bytes, None]:
        streams: dict[int, StreamRestorer] = {}
        async with contextlib.aclosing(relay(stream, call)) as events:  # closed before the call is settled
            async for event in events:
                for restored_event in _restore_event(event, placeholders, streams):
                    yield restored_event

    return restored


def _restore_event(event: bytes, placeholders: Placeholders, streams: dict[int, StreamRestorer]) -> list[bytes]:
    line = event.decode().rstrip("\n")
    if not line.startswith(DATA) or line == "data: [DONE]":
        return [event]
    data = json.loads(line[len(DATA) :])
    if not isinstance(data, dict):
        return [event]
    before: list[dict[str, Any]] = []
    if "delta" in data and isinstance(data["delta"], str):  # a template's stream
        data["delta"] = streams.setdefault(0, StreamRestorer(placeholders)).feed(data["delta"])
    elif "choices" in data:
        for choice in data["choices"] or []:
            _restore_choice(choice, streams.setdefault(int(choice.get("index") or 0), StreamRestorer(placeholders)))
    else:  # a template's result or an error: first what the deltas held back, then it, restored whole
        held = "".join(r.flush() for r in streams.values())
        before = [{"delta": held}] if held else []
        data = placeholders.restore_all(data)
    return [sse_event(d) for d in [*before, data]]


def _restore_choice(choice: dict[str, Any], restorer: StreamRestorer) -> None:
    """One chunk's choice: its text through the stream's restorer (flushed with the
    choice's last chunk, whatever that chunk holds), anything else restored whole."""
    delta = choice.get("delta")
    holder, key = (delta, "content") if isinstance(delta, dict) else (choice, "text")
    raw = holder.get(key)
    text = restorer.feed(raw if isinstance(raw, str) else "")
    if choice.get("finish_reason") is not None:
        text += restorer.flush()
    if text or isinstance(raw, str):
        holder[key] = text
    if isinstance(delta, dict) and delta.get("tool_calls"):
        delta["tool_calls"] = restorer.placeholders.restore_all(delta["tool_calls"])


def _all_text(prompt: Any) -> bool:
    return isinstance(prompt, str) or (isinstance(prompt, list) and all(isinstance(p, str) for p in prompt))
