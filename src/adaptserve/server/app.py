"""`create_app(settings)`: the FastAPI app, its lifespan and the one error renderer."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from adaptserve.config import Settings
from adaptserve.errors import APIError, InvalidRequestError, RouteError
from adaptserve.server.audit import AuditMiddleware
from adaptserve.server.edge import Edge, render
from adaptserve.server.gateway import Gateway
from adaptserve.server.routes import adapters, admin, console, fit_reports, heads, health, openai, templates

log = logging.getLogger(__name__)

ROUTERS = (
    openai.router,
    health.router,
    admin.router,
    adapters.router,
    templates.router,
    templates.admin_router,
    console.router,
    heads.router,
    fit_reports.router,
    admin.unknown_router,  # last: only what no route above matched
)


def create_app(settings: Settings) -> FastAPI:
    gateway = Gateway.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(title="adaptserve", lifespan=lifespan)
    app.state.gateway = gateway
    for router in ROUTERS:
        # The routes as each router built them at import: `app.include_router` would build
        # every one again (its parameters and dependencies analysed anew, ~100 ms an app)
        # to add a prefix, tags or dependencies, and these routers get none added. The
        # routes are the same objects in every app of a process (they hold no state of
        # one); `app.dependency_overrides` does not reach them (nothing here uses it).
        app.router.routes.extend(router.routes)
    _install_error_handlers(app)
    app.add_middleware(AuditMiddleware, audit=gateway.audit, metrics=gateway.metrics)
    app.add_middleware(Edge, settings=settings)
    if settings.cors_origins:  # off unless configured: browsers may not call the API cross-origin
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["authorization", "content-type"],
        )
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return render(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"] if p not in ("body", "query", "path")) or None
        message = f"{param}: {first['msg']}" if param else f"the request body: {first['msg']}"
        return render(InvalidRequestError(message, param=param))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return render(RouteError(exc.status_code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = uuid.uuid4().hex
        log.exception("unexpected error (request id %s)", request_id)
        return render(APIError(f"The server had an error processing your request (request id {request_id})."))
