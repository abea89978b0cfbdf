"""Relays of vLLM's server-sent events, as plain async iterators of the bytes the
client gets: `relay` renames the model, hands usage to the call's record, and drops
the usage the gateway asked for on the client's behalf; `relay_text` turns a chat
stream into a template's events instead.

The gateway asks vLLM for usage in every chunk (`continuous_usage_stats`), so a
stream the client cuts is metered up to the cut (`RunningUsage`), not as 0 tokens.
A relay does not close the upstream connection: its `StreamingAnswer` does, however
the relay ends (when the client disconnects the relay is cancelled, the connection to
vLLM closes, and vLLM aborts the request).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any

import httpx

from adaptserve.errors import APIError, UpstreamUnavailableError
from adaptserve.upstream.client import UpstreamStream

if TYPE_CHECKING:
    from adaptserve.serving.record import CallRecord

log = logging.getLogger(__name__)

DATA = "data: "  # a server-sent event's data line
UsageSink = Callable[[dict[str, Any]], None]
# How a stream's events reach the client: the upstream's lines, reported to the call's
# record as they pass.
Relay = Callable[[UpstreamStream, "CallRecord"], AsyncGenerator[bytes, None]]


class RunningUsage:
    """Totals from vLLM's continuous usage: each chunk carries its own choice's running
    counts (choice `i` of prompt `i // n`); the final chunk (no choices) the totals."""

    def __init__(self, n: int = 1) -> None:
        self._n = max(n, 1)
        self._prompt: dict[int, int] = {}
        self._completion: dict[int, int] = {}

    def add(self, event: dict[str, Any]) -> dict[str, int]:
        usage, choices = event["usage"], event.get("choices") or []
        if not choices:
            return usage
        for choice in choices:
            index = int(choice.get("index") or 0)
            self._prompt[index // self._n] = int(usage.get("prompt_tokens") or 0)
            self._completion[index] = int(usage.get("completion_tokens") or 0)
        return {"prompt_tokens": sum(self._prompt.values()), "completion_tokens": sum(self._completion.values())}


Finish = Callable[[str, str | None, "CallRecord"], dict[str, Any]]
_BROKEN = "The model server stopped while streaming; retry the request."


def rewrite_event(
    payload: str, public_name: str, on_usage: UsageSink, running: RunningUsage, usage: bool, continuous: bool
) -> str | None:
    """One `data:` payload, rewritten; None when it must not reach the client. The
    client gets usage only as it asked: in every chunk (`continuous_usage_stats`), in
    the final chunk (`include_usage`), or not at all."""
    event = json.loads(payload)
    if not isinstance(event, dict):
        return payload
    if "model" in event:
        event["model"] = public_name
    final = event.get("choices") == []
    if event.get("usage"):
        on_usage(running.add(event))
    if not continuous and not (usage and final):
        event.pop("usage", None)
        if final:
            return None
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


def openai_relay(body: dict[str, Any], public_name: str) -> Relay:
    """The relay for an OpenAI request: the client gets usage only as its body asked."""
    options = body.get("stream_options") or {}
    usage = bool(options.get("include_usage"))
    continuous = usage and bool(options.get("continuous_usage_stats"))
    return functools.partial(relay, public_name=public_name, usage=usage, continuous=continuous, n=body.get("n") or 1)


async def relay(
    stream: UpstreamStream, call: CallRecord, *, public_name: str, usage: bool, continuous: bool, n: int = 1
) -> AsyncGenerator[bytes, None]:
    """An OpenAI stream as vLLM sent it, for the client (bind the options with `partial`)."""
    running = RunningUsage(n)
    try:
        async for line in stream.lines():
            if not line:
                continue
            if line.startswith(DATA) and line != "data: [DONE]":
                payload = rewrite_event(line[len(DATA) :], public_name, call.add_usage, running, usage, continuous)
                if payload is None:
                    continue
                line = DATA + payload
            yield (line + "\n\n").encode()
    except httpx.HTTPError as exc:
        # The engine died or the connection broke mid-stream: end with an error event
        # the OpenAI SDK raises on, instead of leaving the client hanging.
        log.warning("upstream stream broke: %r", exc)
        call.broke()
        yield sse_event(UpstreamUnavailableError(_BROKEN).body())
    except (GeneratorExit, asyncio.CancelledError):
        call.cut()  # the client left (or stalled): metered up to here
        raise


async def relay_text(stream: UpstreamStream, call: CallRecord, *, finish: Finish) -> AsyncGenerator[bytes, None]:
    """A chat stream → `{"delta": text}` events, then `finish(text, finish_reason, call)`'s
    event (or an error event) and `[DONE]`."""
    parts: list[str] = []
    reason = None
    running = RunningUsage()
    try:
        async for line in stream.lines():
            if not line.startswith(DATA) or line == "data: [DONE]":
                continue
            event = json.loads(line[len(DATA) :])
            if "error" in event:
                yield sse_event(event)
                return
            if event.get("usage"):
                call.add_usage(running.add(event))
            for choice in event.get("choices") or []:
                delta = (choice.get("delta") or {}).get("content")
                if delta:
                    parts.append(delta)
                    yield sse_event({"delta": delta})
                reason = choice.get("finish_reason") or reason
        try:
            yield sse_event(finish("".join(parts), reason, call))
        except APIError as exc:
            yield sse_event(exc.body())
        yield b"data: [DONE]\n\n"
    except httpx.HTTPError as exc:
        log.warning("upstream stream broke: %r", exc)
        call.broke()
        yield sse_event(UpstreamUnavailableError(_BROKEN).body())
    except (GeneratorExit, asyncio.CancelledError):
        call.cut()
        raise


def sse_event(payload: dict[str, Any]) -> bytes:
    return (DATA + json.dumps(payload, separators=(",", ":"), ensure_ascii=False) + "\n\n").encode()
