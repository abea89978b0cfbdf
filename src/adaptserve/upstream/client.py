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
    UpstreamDroppedError,
    UpstreamError,
    UpstreamServerError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from adaptserve.upstream.load import EngineLoad

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0
# vLLM's uvicorn closes a connection idle for VLLM_HTTP_TIMEOUT_KEEP_ALIVE (5 s by
# default). A pooled connection kept exactly as long races that close: the gateway
# writes a request into a socket the server is shutting. Ours expire first.
KEEPALIVE_EXPIRY_S = 2.0
_CONTEXT_MARKERS = ("maximum context length", "context length is", "maximum model length")
# vLLM's refusals of an embeddings request's `dimensions` (no Matryoshka representation, or out of range).
_DIMENSIONS_MARKERS = ("matryoshka", "supports dimensions")
# Failures before the server could have read the whole request: nothing reached it.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.WriteError)


class UpstreamModelMissingError(APIError):
    """vLLM does not know the model name we sent: the adapter is not resident (the
    engine restarted, or another gateway unloaded it). The pipeline reloads and
    retries (`serving/forward.py`); a name sent without an adapter (a pooling engine's
    too, `serving/embeddings.py`) has nothing to load, a configuration error
    (`EngineModelNotServedError`). A client never sees this error."""

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


class Probe(enum.Enum):
    """One /health probe. A refused connection means no server is there; a slow or
    failed answer may be a busy engine, so the pool counts those before giving up."""

    OK = "ok"
    FAILED = "failed"
    REFUSED = "refused"


@dataclass
class UpstreamStream:
    """An open SSE response whose status was 200; iterate `lines()` then `close()`
    (it counts as in flight on its upstream until then)."""

    response: httpx.Response
    upstream: Upstream | None = None
    model: str = ""  # what vLLM serves it with: counted in `Upstream.models` until closed

    async def lines(self) -> AsyncIterator[str]:
        async for line in self.response.aiter_lines():
            yield line

    async def close(self) -> None:
        await self.response.aclose()
        if self.upstream is not None:
            self.upstream.count_out(self.model)
            self.upstream = None


@dataclass(frozen=True)
class ModelList:
    """What an engine's /v1/models says: the names it serves now, and its context
    length (vLLM's `max_model_len` on each card; None where no card says)."""

    names: frozenset[str]
    max_model_len: int | None = None

    @classmethod
    def parse(cls, answer: Any) -> ModelList:
        cards = answer["data"]
        lengths = [c.get("max_model_len") for c in cards]
        said = [n for n in lengths if isinstance(n, int) and not isinstance(n, bool) and n > 0]
        return cls(frozenset(str(c["id"]) for c in cards), min(said, default=None))


class Upstream:
    """One vLLM server. `generation` grows each time it comes (back) up, so callers
    can tell that adapters loaded under an older generation are gone."""

    def __init__(
        self,
        url: str,
        timeout_s: float,
        max_answer_bytes: int = 64 * 1024 * 1024,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.max_answer_bytes = max_answer_bytes
        self.state = State.STARTING
        self.generation = 0
        self.inflight = 0  # this gateway's requests on it now (streams until closed)
        self.models: dict[str, int] = {}  # the same, by the model (adapter) vLLM serves them with
        self.engine = EngineLoad()  # as last scraped (only with several upstreams: `scrape`)
        self.max_model_len: int | None = None  # the context it reported when it came up (None: it did not say)
        self._http = httpx.AsyncClient(
            base_url=self.url,
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            limits=httpx.Limits(
                max_connections=None, max_keepalive_connections=256, keepalive_expiry=KEEPALIVE_EXPIRY_S
            ),
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"Upstream({self.url}, {self.state.value}, gen {self.generation})"

    async def aclose(self) -> None:
        await self._http.aclose()

    def mark_down(self) -> None:
        if self.state is State.READY:
            log.warning("upstream %s is down", self.url)
        self.state = State.DOWN

    @property
    def load(self) -> float:
        """How busy it is, for picking. The engine's count covers every gateway replica
        but is a scrape old; this gateway's in-flight count is fresh but its own: the
        larger of the two, plus the engine's queue again (a queued request waits for a
        batch slot, the cost that picking a replica can avoid)."""
        return max(self.inflight, self.engine.running + self.engine.waiting) + self.engine.waiting

    def count_in(self, model: str) -> None:
        """A request of this gateway's on `model` is in flight here."""
        self.inflight += 1
        self.models[model] = self.models.get(model, 0) + 1

    def count_out(self, model: str) -> None:
        self.inflight -= 1
        left = self.models.get(model, 0) - 1
        if left > 0:
            self.models[model] = left
        else:
            self.models.pop(model, None)

    async def scrape(self) -> None:
        """Refresh `engine` from vLLM's /metrics; a failed scrape keeps the last one
        (health is the probe's business)."""
        try:
            response = await self._live().get("/metrics", timeout=PROBE_TIMEOUT_S)
            if response.status_code == 200:
                self.engine = EngineLoad.parse(response.text)
        except (httpx.HTTPError, UpstreamUnavailableError, ValueError, IndexError) as exc:
            log.debug("scraping %s failed: %r", self.url, exc)

    async def listed_models(self) -> ModelList:
        """The names vLLM serves now: the base model and every adapter loaded in this
        engine's life (by any gateway); a restarted engine lists none of the earlier
        ones. And the context length it reports."""
        try:
            response = await self._live().get("/v1/models", timeout=PROBE_TIMEOUT_S)
        except httpx.HTTPError as exc:
            raise self._unavailable(exc) from exc
        if response.status_code != 200:
            raise translate_error(response.status_code, response.content)
        try:
            return ModelList.parse(response.json())
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UpstreamError(f"The model server's model list is malformed: {exc!r}") from exc

    async def probe(self) -> Probe:
        try:
            response = await self._http.get("/health", timeout=PROBE_TIMEOUT_S)
        except httpx.ConnectError:
            return Probe.REFUSED
        except httpx.HTTPError:
            return Probe.FAILED
        return Probe.OK if response.status_code == 200 else Probe.FAILED

    async def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A non-streamed call; an answer over `max_answer_bytes` is not held whole."""
        model = str(body.get("model", ""))
        self.count_in(model)
        try:
            status, content = await self._exchange(path, body)
        finally:
            self.count_out(model)
        if status != 200:
            raise translate_error(status, content)
        return json.loads(content)

    async def open_stream(self, path: str, body: dict[str, Any]) -> UpstreamStream:
        """Send a streaming request; errors before the first byte raise here, so the
        gateway can still answer with a proper HTTP status."""
        request = self._live().build_request("POST", path, json=body)
        try:
            response = await self._send(request)
        except httpx.HTTPError as exc:
            raise self._unavailable(exc) from exc
        if response.status_code != 200:
            content = await response.aread()
            await response.aclose()
            raise translate_error(response.status_code, content)
        model = str(body.get("model", ""))
        self.count_in(model)
        return UpstreamStream(response, self, model)

    async def load_adapter(self, name: str, path: str) -> None:
        status, content = await self._exchange("/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})
        if status == 200:
            return
        message = _error_message(content)
        if status == 400 and "already been loaded" in message:
            return  # resident from an earlier gateway life: names are content-addressed
        raise AdapterLoadError(f"vLLM refused adapter {name}: {message}")

    async def unload_adapter(self, name: str) -> None:
        status, content = await self._exchange("/v1/unload_lora_adapter", {"lora_name": name})
        if status not in (200, 404):
            log.warning("unloading %s from %s: %s", name, self.url, _error_message(content))

    async def _exchange(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        """One non-streamed POST (`_send`: once more if it never reached the server) →
        its status and body; a 200 over `max_answer_bytes` is refused, an error's cut."""
        request = self._live().build_request("POST", path, json=body)
        try:
            response = await self._send(request)
            try:
                content = await _read_bounded(response, self.max_answer_bytes, truncate=response.status_code != 200)
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            raise self._unavailable(exc) from exc
        return response.status_code, content

    async def _send(self, request: httpx.Request) -> httpx.Response:
        """Send, once more on a fresh connection if the first try never reached the
        server (a pooled connection it had just closed): safe, nothing was read."""
        try:
            return await self._http.send(request, stream=True)
        except _NOT_SENT as exc:
            log.info("%s: %s before the request was sent; sending it once more", self.url, type(exc).__name__)
        return await self._http.send(request, stream=True)

    def _live(self) -> httpx.AsyncClient:
        """Its connection pool, unless it was closed (it left the pool: DNS)."""
        if self._http.is_closed:
            raise UpstreamUnavailableError()
        return self._http

    def _unavailable(self, exc: Exception) -> UpstreamUnavailableError:
        """A transport failure → a timeout, a connection that never carried the request,
        or one dropped after it was sent (the server read it: `UpstreamDroppedError`)."""
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            return UpstreamTimeoutError()
        self.mark_down()
        return UpstreamUnavailableError() if isinstance(exc, _NOT_SENT) else UpstreamDroppedError()


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
    """vLLM's HTTP error → our typed error (vLLM puts the HTTP integer in `code`). Its
    message is vLLM's, which may quote the request: marked `carries_content`."""
    error = _translated(status, content)
    error.carries_content = True
    return error


def _translated(status: int, content: bytes) -> APIError:
    message = _error_message(content)
    param = _error_param(content)
    lowered = message.lower()
    if status == 404 and "does not exist" in lowered:
        return UpstreamModelMissingError(message)
    if status in (400, 422):
        if any(marker in lowered for marker in _CONTEXT_MARKERS):
            return ContextLengthExceededError(message, param=param or "messages")
        if any(marker in lowered for marker in _DIMENSIONS_MARKERS):
            return InvalidRequestError(message, param="dimensions")
        return InvalidRequestError(message, param=param)
    if status == 503:
        return UpstreamUnavailableError()
    if status >= 500:
        return UpstreamServerError(f"The model server failed: {message}")
    return UpstreamError(f"The model server failed: {message}")
