"""The one request path every OpenAI call takes: check → resolve → ensure the adapter
is loaded → forward → rename the model in the answer.

Routes call `Pipeline.handle` and return what it returns; nothing else forwards.
"""

from __future__ import annotations

import enum
import logging
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse

from adaptserve.adapters.registry import AdapterRegistry, Target
from adaptserve.errors import ContextLengthExceededError, UpstreamUnavailableError
from adaptserve.server.protocol import ChatRequest, CompletionRequest, check_request
from adaptserve.server.streaming import relay
from adaptserve.tenancy.auth import Principal
from adaptserve.upstream.client import UpstreamModelMissingError
from adaptserve.upstream.pool import UpstreamPool

log = logging.getLogger(__name__)


class Endpoint(enum.Enum):
    CHAT = ("/v1/chat/completions", "messages", ChatRequest)
    COMPLETIONS = ("/v1/completions", "prompt", CompletionRequest)

    def __init__(self, path: str, prompt_param: str, schema: type) -> None:
        self.path = path
        self.prompt_param = prompt_param
        self.schema = schema


class Pipeline:
    def __init__(self, pool: UpstreamPool, registry: AdapterRegistry) -> None:
        self._pool = pool
        self._registry = registry

    async def handle(
        self, endpoint: Endpoint, body: dict[str, Any], principal: Principal
    ) -> JSONResponse | StreamingResponse:
        request = check_request(endpoint.schema, body)
        target = self._registry.resolve(request.model)
        forwarded = {**body, "model": target.internal_name}
        try:
            return await self._forward(endpoint, forwarded, target, bool(request.stream))
        except ContextLengthExceededError as exc:
            exc.param = endpoint.prompt_param
            raise

    async def _forward(
        self, endpoint: Endpoint, body: dict[str, Any], target: Target, stream: bool
    ) -> JSONResponse | StreamingResponse:
        # Two tries: if the upstream lost the adapter (it restarted between health
        # checks), the first try fails before any output and we load it again.
        for _attempt in range(2):
            upstream = self._pool.pick()
            await self._registry.ensure_loaded(upstream, target.adapter)
            try:
                if stream:
                    opened = await upstream.open_stream(endpoint.path, body)
                    return StreamingResponse(relay(opened, target.public_name), media_type="text/event-stream")
                result = await upstream.post_json(endpoint.path, body)
            except UpstreamModelMissingError:
                log.warning("%s lost %s; loading it again", upstream.url, target.internal_name)
                self._registry.forget(upstream, target.adapter)
                continue
            result["model"] = target.public_name
            return JSONResponse(result)
        raise UpstreamUnavailableError("The model server could not load the model; retry shortly.")
