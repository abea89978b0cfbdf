"""The OpenAI-compatible routes: chat, completions, embeddings, models."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse

from adaptserve.server import responses
from adaptserve.server.deps import BodyDep, GatewayDep, PrincipalDep
from adaptserve.server.protocol import (
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    check_embedding,
    documented_body,
)
from adaptserve.serving.pipeline import Endpoint

router = APIRouter(prefix="/v1")


@router.post("/chat/completions", response_model=None, openapi_extra=documented_body(ChatRequest))
async def chat(gateway: GatewayDep, principal: PrincipalDep, body: BodyDep) -> JSONResponse | StreamingResponse:
    stall = gateway.settings.stream_stall_timeout_s
    return await responses.openai(gateway.pipeline, Endpoint.CHAT, body, principal, stall)


@router.post("/completions", response_model=None, openapi_extra=documented_body(CompletionRequest))
async def completions(gateway: GatewayDep, principal: PrincipalDep, body: BodyDep) -> JSONResponse | StreamingResponse:
    stall = gateway.settings.stream_stall_timeout_s
    return await responses.openai(gateway.pipeline, Endpoint.COMPLETIONS, body, principal, stall)


@router.post("/embeddings", openapi_extra=documented_body(EmbeddingRequest))
async def embeddings(gateway: GatewayDep, principal: PrincipalDep, body: BodyDep) -> JSONResponse:
    """Vectors from an embedding model of `models:` (docs/embeddings.md). A JSONResponse:
    thousands of floats need no walk through FastAPI's encoder."""
    request = check_embedding(body)
    answer = await gateway.embeddings.embed(
        principal, request.model, request.input, request.encoding_format, request.dimensions
    )
    return JSONResponse(answer)


@router.get("/models")
def models(gateway: GatewayDep, principal: PrincipalDep) -> dict:
    """Only the caller's aliases, and only those that can be served now; then the
    models of `models:` it may call."""
    engines = [
        {"id": e.name, "object": "model", "created": gateway.started, "owned_by": principal.tenant, "parent": None}
        for e in gateway.engines.servable(principal.tenant)
    ]
    entries = [
        {
            "id": alias.alias,
            "object": "model",
            "created": gateway.started,
            "owned_by": principal.tenant,
            # An adapter alias's parent is the base model: the adapter's catalog name is the admin's.
            "parent": None if alias.base else gateway.catalog.base_name,
        }
        for alias in gateway.pipeline.servable(principal.tenant)
    ]
    return {"object": "list", "data": entries + engines}


@router.get("/pii")
async def pii(principal: PrincipalDep) -> dict:
    """The caller's PII mode (what tools that store the tenant's text follow). The deny
    list and patterns are the admin's to read: the names in them are personal data."""
    return {"mode": principal.pii.mode.value}


@router.get("/usage")
async def usage(gateway: GatewayDep, principal: PrincipalDep, since: datetime | None = None) -> dict:
    """The caller's own usage, per model alias and hour."""
    return {"data": await gateway.meter.query(principal.tenant, since, uid=principal.uid)}


@router.get("/quota")
async def quota(gateway: GatewayDep, principal: PrincipalDep) -> dict:
    """The caller's quotas, what it uses of each in the last minute (tokens: charged and
    reserved; concurrent: in flight) and what is left. On the event loop, where the
    counts change: no I/O, and never read while they are being written."""
    return gateway.quotas.headroom(principal.uid, principal.limits)
