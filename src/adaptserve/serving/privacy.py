"""The serving side of a tenant's PII policy (`pii/`): a request's texts are screened
before the engine sees them (`mask`: numbered placeholders; `block`: 400 naming the
entity types, never the values), answers and streams are restored to the caller's
values, and error messages that may quote content are scrubbed (`log` and up).
Detection runs in a worker thread. If it fails, the request is refused: masking fails
closed, never open."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any

from adaptserve.errors import APIError, InvalidRequestError
from adaptserve.pii.detector import Detector, Finding
from adaptserve.pii.masking import Placeholders, StreamRestorer, scrubbed
from adaptserve.pii.policy import PiiMode, PiiPolicy
from adaptserve.tenancy.auth import Principal

if TYPE_CHECKING:
    from adaptserve.metrics import Metrics
    from adaptserve.serving.pipeline import CallRecord, Relay
    from adaptserve.upstream.client import UpstreamStream

log = logging.getLogger(__name__)

_DATA = "data: "


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
        if policy.mode not in (PiiMode.MASK, PiiMode.BLOCK):
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
        if principal.pii.mode not in (PiiMode.MASK, PiiMode.BLOCK):
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
        message = choice.get("message") or {}
        if isinstance(message.get("content"), str):
            message["content"] = placeholders.restore(message["content"])
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
        async for event in relay(stream, call):
            for restored_event in _restore_event(event, placeholders, streams):
                yield restored_event

    return restored


def _restore_event(event: bytes, placeholders: Placeholders, streams: dict[int, StreamRestorer]) -> list[bytes]:
    line = event.decode().rstrip("\n")
    if not line.startswith(_DATA) or line == "data: [DONE]":
        return [event]
    data = json.loads(line[len(_DATA) :])
    if not isinstance(data, dict) or "error" in data:
        return [event]
    before: list[dict[str, Any]] = []
    if "delta" in data and isinstance(data["delta"], str):  # a template's stream
        data["delta"] = streams.setdefault(0, StreamRestorer(placeholders)).feed(data["delta"])
    elif "choices" in data:
        for choice in data["choices"] or []:
            restorer = streams.setdefault(int(choice.get("index") or 0), StreamRestorer(placeholders))
            delta = choice.get("delta") or {}
            key, holder = ("content", delta) if isinstance(delta.get("content"), str) else ("text", choice)
            if isinstance(holder.get(key), str):
                holder[key] = restorer.feed(holder[key])
            if choice.get("finish_reason") is not None and isinstance(holder.get(key), str):
                holder[key] += restorer.flush()
    else:  # a template's result: what its deltas held back, then the result, restored whole
        held = "".join(r.flush() for r in streams.values())
        before = [{"delta": held}] if held else []
        data = placeholders.restore_all(data)
    return [
        (_DATA + json.dumps(d, separators=(",", ":"), ensure_ascii=False) + "\n\n").encode() for d in [*before, data]
    ]


def _map_texts(body: dict[str, Any], param: str, fn: Callable[[str], Any]) -> dict[str, Any]:
    """`body` with every text the engine reads (message contents and text parts, or the
    prompt strings) replaced by `fn(text)`, in order. Token-id prompts cannot be
    screened: 400."""
    out = dict(body)
    if param == "messages":
        messages = []
        for message in body.get("messages") or []:
            message = dict(message)
            content = message.get("content")
            if isinstance(content, str):
                message["content"] = fn(content)
            elif isinstance(content, list):
                message["content"] = [
                    {**part, "text": fn(part["text"])} if isinstance(part.get("text"), str) else part
                    for part in content
                ]
            messages.append(message)
        out["messages"] = messages
        return out
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        out["prompt"] = fn(prompt)
    elif isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        out["prompt"] = [fn(p) for p in prompt]
    else:
        raise InvalidRequestError(
            "token-id prompts cannot be checked for personal data, which this tenant's policy requires: send text",
            param="prompt",
        )
    return out
