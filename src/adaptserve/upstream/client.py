"""HTTP client for one vLLM OpenAI server, and the translation of its errors.

This is the only module that reads vLLM's error texts: it turns them into typed
errors (`errors.py`) so nothing else matches on message strings.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from adaptserve.errors import (
    APIError,
    ContextLengthExceededError,
    InvalidRequestError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)

log = logging.getLogger(__name__)

_CONTEXT_MARKERS = ("maximum context length", "context length is", "maximum model length")


class UpstreamModelMissingError(APIError):
    """vLLM does not know the model name we sent: the adapter is not resident (the
    engine restarted, or another gateway unloaded it). The pipeline reloads and
    retries; a client never sees this error."""

    status = 502
    code = "upstream_model_missing"


class AdapterLoadError(APIError):
    """vLLM refused an adapter; the message is vLLM's reason."""

    status = 502
    code = "adapter_load_failed"


class AnswerTooLargeError(APIError):
    """A non-streamed answer larger than the gateway holds (`max_response_bytes`)."""

    status = 502
    type = "server_error"
    code = "answer_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"The answer is larger than {limit} bytes; send the request with stream=true.")


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DOWN = "down"


@dataclass
class UpstreamStream:
    """An open SSE response whose status was 200; iterate `events()` then `close()`."""

    response: httpx.Response

    async def lines(self) -> AsyncIterator[str]:
        async for line in self.response.aiter_lines():
            yield line

    async def close(self) -> None:
        await self.response.aclose()


class Upstream:
    """One vLLM server. `generation` grows each time it comes (back) up, so callers
    can tell that adapters loaded under an older generation are gone."""

    def __init__(self, url: str, timeout_s: float, max_answer_bytes: int = 64 * 1024 * 1024) -> None:
        self.url = url.rstrip("/")
        self.max_answer_bytes = max_answer_bytes
        self.state = State.STARTING
        self.generation = 0
        self._http = httpx.AsyncClient(
            base_url=self.url,
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        )

    def __repr__(self) -> str:
        return f"Upstream({self.url}, {self.state.value}, gen {self.generation})"

    async def aclose(self) -> None:
        await self._http.aclose()

    def mark_down(self) -> None:
        if self.state is State.READY:
            log.warning("upstream %s is down", self.url)
        self.state = State.DOWN

    async def health(self) -> bool:
        try:
            response = await self._http.get("/health", timeout=5.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A non-streamed call; an answer over `max_answer_bytes` is not held whole."""
        request = self._http.build_request("POST", path, json=body)
        try:
            response = await self._http.send(request, stream=True)
            try:
                content = await _read_bounded(response, self.max_answer_bytes, truncate=response.status_code != 200)
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            raise self._unavailable(exc) from exc
        if response.status_code != 200:
            raise translate_error(response.status_code, content)
        return json.loads(content)

    async def open_stream(self, path: str, body: dict[str, Any]) -> UpstreamStream:
        """Send a streaming request; errors before the first byte raise here, so the
        gateway can still answer with a proper HTTP status."""
        request = self._http.build_request("POST", path, json=body)
        try:
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._unavailable(exc) from exc
        if response.status_code != 200:
            content = await response.aread()
            await response.aclose()
            raise translate_error(response.status_code, content)
        return UpstreamStream(response)

    async def load_adapter(self, name: str, path: str) -> None:
        try:
            response = await self._http.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
        except httpx.HTTPError as exc:
            raise self._unavailable(exc) from exc
        if response.status_code == 200:
            return
        message = _error_message(response.content)
        if response.status_code == 400 and "already been loaded" in message:
            return  # resident from an earlier gateway life: names are content-addressed
        raise AdapterLoadError(f"vLLM refused adapter {name}: {message}")

    async def unload_adapter(self, name: str) -> None:
        try:
            response = await self._http.post("/v1/unload_lora_adapter", json={"lora_name": name})
        except httpx.HTTPError as exc:
            raise self._unavailable(exc) from exc
        if response.status_code not in (200, 404):
            log.warning("unloading %s from %s: %s", name, self.url, _error_message(response.content))

    def _unavailable(self, exc: Exception) -> UpstreamUnavailableError:
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            return UpstreamTimeoutError()
        self.mark_down()
        return UpstreamUnavailableError()


async def _read_bounded(response: httpx.Response, limit: int, truncate: bool) -> bytes:
    """The body, up to `limit` bytes: an answer over it is refused; an error's is cut."""
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            if truncate:
                break
            raise AnswerTooLargeError(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _error_message(content: bytes) -> str:
    try:
        body = json.loads(content)
    except ValueError:
        return content.decode(errors="replace")[:500]
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return str(error.get("message") or error.get("detail") or error)
        return str(body.get("message") or body.get("detail") or error)
    return str(body)


def _error_param(content: bytes) -> str | None:
    try:
        error = json.loads(content).get("error", {})
        param = error.get("param") if isinstance(error, dict) else None
    except (ValueError, AttributeError):
        return None
    return param if isinstance(param, str) else None


def translate_error(status: int, content: bytes) -> APIError:
    """vLLM's HTTP error → our typed error (vLLM puts the HTTP integer in `code`)."""
    message = _error_message(content)
    param = _error_param(content)
    lowered = message.lower()
    if status == 404 and "does not exist" in lowered:
        return UpstreamModelMissingError(message)
    if status in (400, 422):
        if any(marker in lowered for marker in _CONTEXT_MARKERS):
            return ContextLengthExceededError(message, param=param or "messages")
        return InvalidRequestError(message, param=param)
    if status == 503:
        return UpstreamUnavailableError()
    return UpstreamError(f"The model server failed: {message}")
