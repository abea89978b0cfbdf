"""Relays vLLM's server-sent events to the client, renaming the model on the way.

The upstream response is closed in `finally`: when the client disconnects, Starlette
cancels this generator, the connection to vLLM closes, and vLLM aborts the request.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import httpx

from adaptserve.errors import UpstreamUnavailableError
from adaptserve.upstream.client import UpstreamStream

log = logging.getLogger(__name__)

_DATA = "data: "


def rename_event(payload: str, public_name: str) -> str:
    event = json.loads(payload)
    if isinstance(event, dict) and "model" in event:
        event["model"] = public_name
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


async def relay(stream: UpstreamStream, public_name: str) -> AsyncIterator[bytes]:
    try:
        async for line in stream.lines():
            if not line:
                continue
            if line.startswith(_DATA) and line != "data: [DONE]":
                line = _DATA + rename_event(line[len(_DATA) :], public_name)
            yield (line + "\n\n").encode()
    except httpx.HTTPError as exc:
        # The engine died or the connection broke mid-stream: end with an error event
        # the OpenAI SDK raises on, instead of leaving the client hanging.
        log.warning("upstream stream broke: %r", exc)
        error = UpstreamUnavailableError("The model server stopped while streaming; retry the request.")
        yield (_DATA + json.dumps(error.body()) + "\n\n").encode()
    finally:
        await stream.close()
