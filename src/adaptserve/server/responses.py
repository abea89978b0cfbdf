"""Answers → HTTP responses: a JSON body, or server-sent events that give up on a client
that stops reading. The OpenAI routes' one decision (streamed or not) is `openai`."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from adaptserve.server.protocol import ChatRequest, CompletionRequest, check_request
from adaptserve.serving.answers import StreamingAnswer
from adaptserve.serving.pipeline import Endpoint, Pipeline
from adaptserve.tenancy.auth import Principal

log = logging.getLogger(__name__)

SCHEMAS: dict[Endpoint, type[ChatRequest | CompletionRequest]] = {
    Endpoint.CHAT: ChatRequest,
    Endpoint.COMPLETIONS: CompletionRequest,
}


async def openai(
    pipeline: Pipeline, endpoint: Endpoint, body: dict[str, Any], principal: Principal, stall_timeout_s: float
) -> JSONResponse | StreamingResponse:
    """An OpenAI request from a client, checked, then answered as vLLM answers it."""
    request = check_request(SCHEMAS[endpoint], body)
    if not request.stream:
        return JSONResponse((await pipeline.call(principal, request.model, endpoint, body)).body)
    return EventStreamResponse(await pipeline.stream(principal, request.model, endpoint, body), stall_timeout_s)


class ClientStalledError(Exception):
    """A send to the client did not complete within the stall timeout."""


class EventStreamResponse(StreamingResponse):
    """A `StreamingAnswer`'s events as server-sent events. Once the socket buffers are
    full a send blocks, so the gateway reads nothing more from vLLM and holds at most
    those buffers; after `stall_timeout_s` of that the response ends. However it ends
    (finished, the client gone or stalled, or before the first event), the answer is
    closed: the upstream connection closes (vLLM aborts the request) and the admission
    is released."""

    def __init__(self, answer: StreamingAnswer, stall_timeout_s: float) -> None:
        super().__init__(answer.events, media_type="text/event-stream")
        self.answer = answer
        self.stall_timeout_s = stall_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_or_give_up(message: Message) -> None:
            try:
                async with asyncio.timeout(self.stall_timeout_s):  # a deadline on this task: no new task per event
                    await send(message)
            except TimeoutError as exc:
                raise ClientStalledError from exc

        try:
            await super().__call__(scope, receive, send_or_give_up)
        except ClientStalledError:
            log.warning("a client read nothing for %.0f s; its stream is aborted", self.stall_timeout_s)
        finally:
            await self.answer.aclose()
