"""`/console`: the console's static files (`adaptserve.console`), each answered with
the console's security headers. Served on every listener: the page calls the API of
the origin it was loaded from (the tenant API, and the admin API where that listener
serves it)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from adaptserve import console
from adaptserve.errors import RouteError

router = APIRouter(prefix="/console", include_in_schema=False)


@router.get("")
def console_root() -> RedirectResponse:
    return RedirectResponse("/console/", status_code=308, headers=console.HEADERS)


@router.get("/")
def console_page() -> Response:
    return console_file("")


@router.get("/{name}")
def console_file(name: str) -> Response:
    found = console.asset(name)
    if found is None:
        raise RouteError(404, "Not Found")
    return Response(found.body, media_type=found.media_type, headers=console.HEADERS)
