"""The OpenAI-compatible routes: chat, completions, models."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse

from adaptserve.server.deps import BodyDep, GatewayDep, PrincipalDep
from adaptserve.server.pipeline import Endpoint

router = APIRouter(prefix="/v1")


@router.post("/chat/completions", response_model=None)
async def chat(gateway: GatewayDep, principal: PrincipalDep, body: BodyDep) -> JSONResponse | StreamingResponse:
    return await gateway.pipeline.handle(Endpoint.CHAT, body, principal)


@router.post("/completions", response_model=None)
async def completions(gateway: GatewayDep, principal: PrincipalDep, body: BodyDep) -> JSONResponse | StreamingResponse:
    return await gateway.pipeline.handle(Endpoint.COMPLETIONS, body, principal)


@router.get("/models")
async def models(gateway: GatewayDep, principal: PrincipalDep) -> dict:
    base = gateway.registry.base_name
    entries = [{"id": base, "object": "model", "created": gateway.started, "owned_by": "adaptserve", "parent": None}]
    for adapter in gateway.registry.served():
        entries.append(
            {
                "id": adapter.name,
                "object": "model",
                "created": adapter.created,
                "owned_by": "adaptserve",
                "parent": base,
            }
        )
    return {"object": "list", "data": entries}
