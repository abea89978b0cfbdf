"""`/v1/embeddings` below HTTP: an embedding model of `models:` (`engines.py`) answers a
tenant's texts or token ids, as chat is answered: the tenant may call the model (else
404, as for a name that does not exist; a generate model's name: 400), the inputs are
bounded (`bounds.py`: how many, how many tokens), admitted under the tenant's quotas
and metered (`Pipeline.metered`), screened under its PII policy (texts masked or
refused; token ids cannot be screened, so refused under `mask` and `block`), sent to
one ready upstream of the model's pool (another, once, when the first was unavailable:
`pooling_post`), and answered OpenAI-shaped: float lists, or base64 of little-endian
float32. The engine is always asked for base64 (a quarter of the bytes of float JSON,
and no floats to parse): passed on as it came, or unpacked to floats.
`dimensions` goes to the engine, whose refusal (a model without Matryoshka
representations) comes back as a 400 naming `dimensions` (`upstream/client.py`).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import struct
from collections.abc import Sequence
from typing import Any, Literal

from adaptserve.adapters.catalog import Target
from adaptserve.errors import (
    APIError,
    ContextLengthExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    ModelUnavailableError,
    UpstreamDroppedError,
    UpstreamError,
    UpstreamServerError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from adaptserve.serving.engines import Engine, Engines
from adaptserve.serving.forward import Forwarder
from adaptserve.serving.pipeline import Pipeline
from adaptserve.serving.record import CallRecord
from adaptserve.tenancy.auth import Principal
from adaptserve.upstream.client import AnswerTooLargeError

log = logging.getLogger(__name__)

Inputs = str | list[str] | list[int] | list[list[int]]
Encoding = Literal["float", "base64"]
PARAM = "input"
# Failures after the engine read the request, where vLLM does not say what it did: the reservation is charged.
_WORKED = (UpstreamTimeoutError, UpstreamDroppedError, UpstreamServerError, AnswerTooLargeError)
_AS_BASE64 = {"encoding_format": "base64", "embed_dtype": "float32", "endianness": "little"}  # OpenAI's base64


class EmbeddingService:
    def __init__(self, pipeline: Pipeline, engines: Engines) -> None:
        self._pipeline, self._engines = pipeline, engines

    async def embed(
        self, principal: Principal, model: str, inputs: Inputs, encoding: Encoding, dimensions: int | None
    ) -> dict[str, Any]:
        """One embeddings request → the OpenAI answer (`model` as the client named it)."""
        engine = self._engines.find(principal.tenant, model)
        if engine is None or engine.entry.role != "embed":
            raise await asyncio.to_thread(self._refusal, principal.tenant, model)
        batch = _as_batch(inputs)
        bounds = self._pipeline.bounds
        reserve = bounds.check_inputs(batch, engine.entry.max_model_len, PARAM)
        _within_rate(principal, reserve.total)
        async with self._pipeline.metered(principal, model, reserve, label="embeddings") as call:
            if principal.pii.screens:
                batch = await self._screened(principal, call, engine, batch)
            vectors = await self.vectors(engine, call, batch, dimensions)
            call.status = 200
        data = [{"object": "embedding", "index": i, "embedding": _encoded(v, encoding)} for i, v in enumerate(vectors)]
        return {"object": "list", "data": data, "model": model, "usage": _usage(call)}

    async def vectors(
        self, engine: Engine, call: CallRecord, batch: list[str] | list[list[int]], dimensions: int | None = None
    ) -> list[bytes]:
        """One engine call inside an admitted `call` (its usage added): the vectors in
        input order, as little-endian float32 bytes. The engine's dimension is noted
        (`Engine.dim`) from a call that did not ask for `dimensions`."""
        body: dict[str, Any] = {"model": engine.entry.engine_name, "input": batch, **_AS_BASE64}
        if dimensions is not None:
            body["dimensions"] = dimensions
        answer = await self._send(engine, call, body)
        vectors = _vectors(answer, len(batch))
        call.add_usage(answer.get("usage"), accumulate=True)
        if dimensions is None and vectors:
            engine.dim = len(vectors[0]) // 4
        return vectors

    async def dimension(self, engine: Engine) -> int | None:
        """The engine's vector size: noted from an answer, else asked with one short
        text (not a tenant's call: nothing is metered); None while it cannot answer."""
        if engine.dim is None and engine.pool.ready():
            body = {"model": engine.entry.engine_name, "input": ["dimension"], **_AS_BASE64}
            try:
                engine.dim = len(_vectors(await engine.pool.pick().post_json("/v1/embeddings", body), 1)[0]) // 4
            except APIError as exc:
                log.warning("embedding model %s did not say its dimension: %s", engine.name, exc.message)
        return engine.dim

    def _refusal(self, tenant: str, model: str) -> APIError:
        """Not an embedding model of the tenant's: a generate model it may call is a 400
        that says so; anything else the 404 of a name that does not exist."""
        try:
            if self._engines.find(tenant, model) is None:  # a model of `models:` of another role: the 400 below
                self._pipeline.resolve(tenant, model)
        except ModelUnavailableError:
            pass  # an adapter alias in its load back-off: still a generate model
        except ModelNotFoundError as exc:
            if self._engines.find(tenant, model) is None:
                return exc
        names = ", ".join(self._engines.names(tenant, "embed")) or "none is configured"
        return InvalidRequestError(
            f"The model '{model}' is not an embedding model; /v1/embeddings takes one of: {names}.",
            param="model",
            code="model_not_embedding",
        )

    async def _screened(
        self, principal: Principal, call: CallRecord, engine: Engine, batch: list[str] | list[list[int]]
    ) -> list[str]:
        """The texts under the tenant's policy (`mask`: placeholders stand for personal
        data, so its vectors never carry it; `block`: 400); the reservation grows if
        the masked texts may read more."""
        texts = [i for i in batch if isinstance(i, str)]
        if len(texts) != len(batch):
            raise InvalidRequestError(
                "token-id inputs cannot be checked for personal data, which this tenant's policy requires: send text",
                param=PARAM,
            )
        masked, _ = await self._pipeline.privacy.screen(principal, texts, PARAM)
        reservation = self._pipeline.bounds.check_inputs(masked, engine.entry.max_model_len, PARAM)
        self._pipeline.reserve_more(principal, call, reservation)
        return masked

    async def _send(self, engine: Engine, call: CallRecord, body: dict[str, Any]) -> dict[str, Any]:
        return await pooling_post(self._pipeline.forwarder, engine, call, "/v1/embeddings", body, PARAM)


async def pooling_post(
    forwarder: Forwarder, engine: Engine, call: CallRecord, path: str, body: dict[str, Any], param: str
) -> dict[str, Any]:
    """One request to a pooling engine inside an admitted `call`, through the
    `Forwarder` as chat goes: a replica unavailable before it read the request (refused,
    503) is passed over once for another ready one, and so is one that does not serve
    the model's name (the 502 of a configuration error where none is left); a dropped
    connection is not sent again (the engine may have worked). A failure after the
    engine read it charges the reservation; a too-long input names `param`; the engine's
    own name for the model is replaced by the one clients use."""
    target = Target(engine.name, engine.entry.engine_name, None, engine=engine.name)
    try:
        return await forwarder.forward(target, lambda upstream: upstream.post_json(path, body), _unread)
    except APIError as exc:
        if isinstance(exc, _WORKED):
            call.charge_reserved()  # the engine may have worked; how much, vLLM did not say
        if isinstance(exc, ContextLengthExceededError):
            exc.param = param
        for quote in "'`\"":  # vLLM quotes names either way
            exc.message = exc.message.replace(quote + engine.entry.engine_name + quote, quote + engine.name + quote)
        raise


def _unread(failed: UpstreamUnavailableError) -> bool:
    """Whether a pooling request may go to another replica: only when no engine read it
    (a dropped connection may have been worked on, and is the answer)."""
    return not isinstance(failed, UpstreamDroppedError)


def _within_rate(principal: Principal, tokens: int) -> None:
    """More than the tenant's tokens per minute is a 400 naming `input` (waiting would
    not help), before the quota gate's, which speaks of chat's `max_tokens`."""
    limit = principal.limits.tokens_per_minute
    if limit is not None and tokens > limit:
        raise InvalidRequestError(
            f"these inputs may read up to {tokens} tokens, more than the limit of {limit} tokens per minute; "
            "send fewer or shorter inputs",
            param=PARAM,
            code="tokens_over_limit",
        )


def _as_batch(inputs: Inputs) -> list[str] | list[list[int]]:
    """A string or a token-id list is one input; a list of either, several."""
    if isinstance(inputs, str):
        return [inputs]
    if inputs and all(isinstance(i, int) for i in inputs):
        return [[i for i in inputs if isinstance(i, int)]]
    return inputs  # type: ignore[return-value]  # list[str] or list[list[int]], as the route checked


def _vectors(answer: dict[str, Any], count: int) -> list[bytes]:
    """The engine's vectors in input order, as little-endian float32 bytes, checked for
    shape (an engine that answers floats all the same is understood too)."""
    try:
        items = sorted(answer["data"], key=lambda item: int(item["index"]))
        vectors = [_packed(item["embedding"]) for item in items]
    except (KeyError, TypeError, ValueError, struct.error) as exc:  # binascii.Error is a ValueError
        raise UpstreamError(f"The model server's embeddings are malformed: {exc!r}") from exc
    if len(vectors) != count:
        raise UpstreamError(f"The model server answered {len(vectors)} embeddings for {count} inputs")
    return vectors


def _packed(embedding: str | Sequence[float]) -> bytes:
    if isinstance(embedding, str):
        raw = base64.b64decode(embedding, validate=True)
        if len(raw) % 4:
            raise ValueError(f"{len(raw)} bytes are not float32 values")
        return raw
    return struct.pack(f"<{len(embedding)}f", *embedding)


def _encoded(raw: bytes, encoding: Encoding) -> list[float] | str:
    if encoding == "float":
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    return base64.b64encode(raw).decode("ascii")


def _usage(call: CallRecord) -> dict[str, int]:
    return {"prompt_tokens": call.prompt_tokens, "total_tokens": call.prompt_tokens + call.completion_tokens}
