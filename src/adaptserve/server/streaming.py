"""Relays vLLM's server-sent events to the client: renames the model, hands usage to
the meter, and drops the usage chunk the gateway asked for on the client's behalf.
`relay_text` turns a chat stream into a template's events instead.

The upstream response is closed in `finally`: when the client disconnects, Starlette
cancels this generator, the connection to vLLM closes, and vLLM aborts the request.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from adaptserve.errors import APIError, UpstreamUnavailableError
from adaptserve.upstream.client import UpstreamStream

log = logging.getLogger(__name__)

_DATA = "data: "
UsageSink = Callable[[dict[str, Any]], None]
Finish = Callable[[str, str | None], dict[str, Any]]
_BROKEN = "The model server stopped while streaming; retry the request."


def rewrite_event(payload: str, public_name: str, on_usage: UsageSink, forward_usage: bool) -> str | None:
    """One `data:` payload, rewritten; None when it must not reach the client."""
    event = json.loads(payload)
    if not isinstance(event, dict):
        return payload
    if "model" in event:
        event["model"] = public_name
    if event.get("usage"):
        on_usage(event["usage"])
    if not forward_usage:
        event.pop("usage", None)
        if event.get("choices") == []:
            return None
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


async def relay(
    stream: UpstreamStream, public_name: str, on_usage: UsageSink, forward_usage: bool
) -> AsyncIterator[bytes]:
    try:
        async for line in stream.lines():
            if not line:
                continue
            if line.startswith(_DATA) and line != "data: [DONE]":
                payload = rewrite_event(line[len(_DATA) :], public_name, on_usage, forward_usage)
                if payload is None:
                    continue
                line = _DATA + payload
            yield (line + "\n\n").encode()
    except httpx.HTTPError as exc:
        # The engine died or the connection broke mid-stream: end with an error event
        # the OpenAI SDK raises on, instead of leaving the client hanging.
        log.warning("upstream stream broke: %r", exc)
        yield _event(UpstreamUnavailableError(_BROKEN).body())
    finally:
        await stream.close()


async def relay_text(stream: UpstreamStream, on_usage: UsageSink, finish: Finish) -> AsyncIterator[bytes]:
    """A chat stream → `{"delta": text}` events, then `finish(text, finish_reason)`'s
    event (or an error event) and `[DONE]`."""
    parts: list[str] = []
    reason = None
    try:
        async for line in stream.lines():
            if not line.startswith(_DATA) or line == "data: [DONE]":
                continue
            event = json.loads(line[len(_DATA) :])
            if "error" in event:
                yield _event(event)
                return
            if event.get("usage"):
                on_usage(event["usage"])
            for choice in event.get("choices") or []:
                delta = (choice.get("delta") or {}).get("content")
                if delta:
                    parts.append(delta)
                    yield _event({"delta": delta})
                reason = choice.get("finish_reason") or reason
        try:
            yield _event(finish("".join(parts), reason))
        except APIError as exc:
            yield _event(exc.body())
        yield b"data: [DONE]\n\n"
    except httpx.HTTPError as exc:
        log.warning("upstream stream broke: %r", exc)
        yield _event(UpstreamUnavailableError(_BROKEN).body())
    finally:
        await stream.close()


def _event(payload: dict[str, Any]) -> bytes:
    return (_DATA + json.dumps(payload, separators=(",", ":"), ensure_ascii=False) + "\n\n").encode()
