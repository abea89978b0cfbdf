"""Probes: /health (the gateway process answers) and /ready (it can serve); and
/metrics for Prometheus (the metrics key or the admin key: it names tenants and their
models)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from adaptserve.server.deps import GatewayDep, MetricsReaderDep

router = APIRouter()


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/ready")
async def ready(gateway: GatewayDep) -> JSONResponse:
    """200 once the generate model and every model of `models:` has a ready upstream."""
    states = [u.state.value for u in gateway.pool.upstreams]
    ok = gateway.pool.ready() and gateway.engines.ready()
    body = {"ready": ok, "upstreams": states}
    if len(gateway.engines):
        body["models"] = gateway.engines.states()
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics")
def metrics(gateway: GatewayDep, _: MetricsReaderDep) -> Response:
    return Response(gateway.metrics.render(), media_type=CONTENT_TYPE_LATEST)
