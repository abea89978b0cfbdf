"""The serving side of a tenant's PII policy (`pii/`): a request's texts are screened
before the engine sees them (`mask`: numbered placeholders; `block`: 400 naming the
entity types, never the values), answers and streams are restored to the caller's
values, and error messages that may quote content are scrubbed (`log` and up).
Detection runs in a worker thread. If it fails, the request is refused: masking fails
closed, never open."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any

from adaptserve.errors import APIError, InvalidRequestError
from adaptserve.pii.detector import Detector, Finding
from adaptserve.pii.masking import Placeholders, StreamRestorer, scrubbed
from adaptserve.pii.policy import PiiMode, PiiPolicy
from adaptserve.serving.bounds import CHAT_PROMPT_FIELDS
from adaptserve.serving.relay import DATA, sse_event
from adaptserve.tenancy.auth import Principal

if TYPE_CHECKING:
    from adaptserve.metrics import Metrics
    from adaptserve.serving.pipeline import Relay
    from adaptserve.serving.record import CallRecord
    from adaptserve.upstream.client import UpstreamStream

log = logging.getLogger(__name__)


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
    def __init__(self, detector: Detector, metrics: Metrics) -> None:
        self._detector, self._metrics = detector, metrics

    async def screen(self, principal: Principal, texts: list[str], param: str) -> tuple[list[str], Placeholders | None]:
        """`texts` as the engine may see them, and the placeholders to restore the
        answer with (None: nothing to restore)."""
        tenant, policy = principal.tenant, principal.pii
        if not policy.screens:
            return texts, None
        found = await self._find(policy, texts)
        entities = sorted({f.entity for fs in found for f in fs})
        for entity in (f.entity for fs in found for f in fs):
            self._metrics.pii_found.labels(tenant, entity, policy.mode.value).inc()
        if policy.mode is PiiMode.BLOCK and entities:
            raise PiiBlockedError(f"the request holds personal data ({', '.join(entities)})", param=param)
        placeholders = Placeholders()
        masked = [placeholders.mask(t, fs) for t, fs in zip(texts, found, strict=True)]
        return masked, placeholders if placeholders else None

    async def screen_body(
        self, principal: Principal, body: dict[str, Any], param: str
    ) -> tuple[dict[str, Any], Placeholders | None]:
        """A chat (`messages`) or completions (`prompt`) body, screened."""
        if not principal.pii.screens:
            return body, None
        texts: list[str] = []

        def collect(text: str) -> str:
            texts.append(text)
            return text

        _map_texts(body, param, collect)
        masked, placeholders = await self.screen(principal, texts, param)
        replacements = iter(masked)
        return _map_texts(body, param, lambda _: next(replacements)), placeholders

    async def scrub(self, policy: PiiPolicy, exc: APIError) -> None:
        """An error whose message may quote content, without what it quotes."""
        if not policy.detects or not exc.carries_content:
            return
        try:
            (found,) = await self._find(policy, [exc.message])
        except PiiUnavailableError:
            exc.message = "(the message was withheld: it could not be checked for personal data)"
            return
        exc.message = scrubbed(exc.message, found)

    async def _find(self, policy: PiiPolicy, texts: list[str]) -> list[list[Finding]]:
        try:
            return await asyncio.to_thread(lambda: [self._detector.find(t, policy) for t in texts])
        except Exception as exc:  # any failure of detection: fail closed
            log.exception("personal-data detection failed")
            raise PiiUnavailableError("personal-data detection failed; the request was not sent") from exc


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


PROMPT_FIELDS = {"messages": CHAT_PROMPT_FIELDS, "prompt": ("prompt",)}
_NOT_TEXT = {"role", "type", "tool_call_id", "id"}  # keys whose values are structure, never personal data


def _map_texts(body: dict[str, Any], param: str, fn: Callable[[str], Any]) -> dict[str, Any]:
    """`body` with every string the engine reads (in messages, tools and documents, every
    value but a role, type or id; or the prompt strings) replaced by `fn(text)`, in
    order. Token-id prompts cannot be screened: 400."""
    out = dict(body)
    if param == "prompt" and not _all_text(body.get("prompt")):
        raise InvalidRequestError(
            "token-id prompts cannot be checked for personal data, which this tenant's policy requires: send text",
            param="prompt",
        )
    for field in PROMPT_FIELDS[param]:
        if body.get(field) is not None:
            out[field] = _map_strings(body[field], fn)
    return out


def _all_text(prompt: Any) -> bool:
    return isinstance(prompt, str) or (isinstance(prompt, list) and all(isinstance(p, str) for p in prompt))


def _map_strings(value: Any, fn: Callable[[str], Any]) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: v if k in _NOT_TEXT else _map_strings(v, fn) for k, v in value.items()}
    return value
