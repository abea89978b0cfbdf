"""Probes: /health (the gateway process answers) and /ready (it can serve)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from adaptserve.server.deps import GatewayDep

router = APIRouter()


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/ready")
async def ready(gateway: GatewayDep) -> JSONResponse:
    states = [u.state.value for u in gateway.pool.upstreams]
    ok = gateway.pool.ready()
    return JSONResponse({"ready": ok, "upstreams": states}, status_code=200 if ok else 503)
