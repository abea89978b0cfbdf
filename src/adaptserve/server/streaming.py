"""Relays vLLM's server-sent events to the client: renames the model, hands usage to
the meter, and drops the usage the gateway asked for on the client's behalf.
`relay_text` turns a chat stream into a template's events instead.

The gateway asks vLLM for usage in every chunk (`continuous_usage_stats`), so a
stream the client cuts is metered up to the cut (`RunningUsage`), not as 0 tokens.
The upstream response is closed in `finally`: when the client disconnects, Starlette
cancels this generator, the connection to vLLM closes, and vLLM aborts the request.
`EventStreamResponse` does the same for a client that stops reading.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import httpx
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask
from starlette.types import Message, Receive, Scope, Send

from adaptserve.errors import APIError, UpstreamUnavailableError
from adaptserve.upstream.client import UpstreamStream

log = logging.getLogger(__name__)

_DATA = "data: "
UsageSink = Callable[[dict[str, Any]], None]


class CallRecord(Protocol):
    """What a relay reports to: the usage so far, a stream that broke (the engine
    failed: not metered), and a stream the client cut (metered up to the cut)."""

    def add_usage(self, usage: dict[str, Any] | None) -> None: ...

    def broke(self) -> None: ...

    def cut(self) -> None: ...


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


Finish = Callable[[str, str | None], dict[str, Any]]
_BROKEN = "The model server stopped while streaming; retry the request."


class ClientStalledError(Exception):
    """A send to the client did not complete within the stall timeout."""


class EventStreamResponse(StreamingResponse):
    """Server-sent events that give up on a client that stops reading. Once the socket
    buffers are full a send blocks, so the gateway reads nothing more from vLLM and
    holds at most those buffers; after `stall_timeout_s` of that the response ends,
    the events' generator is closed (its `finally` closes the upstream connection,
    and vLLM aborts the request) and the client's connection is dropped."""

    def __init__(self, events: AsyncIterator[bytes], stall_timeout_s: float, background: BackgroundTask) -> None:
        super().__init__(events, media_type="text/event-stream", background=background)
        self.events = events
        self.stall_timeout_s = stall_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_or_give_up(message: Message) -> None:
            try:
                if sys.version_info >= (3, 11):  # a deadline on this task: no new task per event
                    async with asyncio.timeout(self.stall_timeout_s):
                        await send(message)
                else:
                    await asyncio.wait_for(send(message), self.stall_timeout_s)
            except asyncio.TimeoutError as exc:
                raise ClientStalledError from exc

        try:
            await super().__call__(scope, receive, send_or_give_up)
        except ClientStalledError:
            log.warning("a client read nothing for %.0f s; its stream is aborted", self.stall_timeout_s)
        finally:
            await self.events.aclose()  # type: ignore[attr-defined]


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


async def relay(
    stream: UpstreamStream, public_name: str, call: CallRecord, *, usage: bool, continuous: bool, n: int = 1
) -> AsyncIterator[bytes]:
    running = RunningUsage(n)
    try:
        async for line in stream.lines():
            if not line:
                continue
            if line.startswith(_DATA) and line != "data: [DONE]":
                payload = rewrite_event(line[len(_DATA) :], public_name, call.add_usage, running, usage, continuous)
                if payload is None:
                    continue
                line = _DATA + payload
            yield (line + "\n\n").encode()
    except httpx.HTTPError as exc:
        # The engine died or the connection broke mid-stream: end with an error event
        # the OpenAI SDK raises on, instead of leaving the client hanging.
        log.warning("upstream stream broke: %r", exc)
        call.broke()
        yield _event(UpstreamUnavailableError(_BROKEN).body())
    except (GeneratorExit, asyncio.CancelledError):
        call.cut()  # the client left (or stalled): metered up to here
        raise
    finally:
        await stream.close()


async def relay_text(stream: UpstreamStream, call: CallRecord, finish: Finish) -> AsyncIterator[bytes]:
    """A chat stream → `{"delta": text}` events, then `finish(text, finish_reason)`'s
    event (or an error event) and `[DONE]`."""
    parts: list[str] = []
    reason = None
    running = RunningUsage()
    try:
        async for line in stream.lines():
            if not line.startswith(_DATA) or line == "data: [DONE]":
                continue
            event = json.loads(line[len(_DATA) :])
            if "error" in event:
                yield _event(event)
                return
            if event.get("usage"):
                call.add_usage(running.add(event))
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
        call.broke()
        yield _event(UpstreamUnavailableError(_BROKEN).body())
    except (GeneratorExit, asyncio.CancelledError):
        call.cut()
        raise
    finally:
        await stream.close()


def _event(payload: dict[str, Any]) -> bytes:
    return (_DATA + json.dumps(payload, separators=(",", ":"), ensure_ascii=False) + "\n\n").encode()
