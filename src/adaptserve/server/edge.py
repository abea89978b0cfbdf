"""What every HTTP request passes before a route runs: the header-size limit (431;
the HTTP parser bounds what it buffers, see `listen`), the body-size limit (413 from
Content-Length before a byte is read, or as soon as a streamed body outgrows it) and,
when the operator gives the admin API its own listener, which listener serves what
(the console's files: both).
`render` (an `APIError` → its JSON response) lives here because the edge answers
before the app's exception handlers exist for the request."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adaptserve.config import Settings
from adaptserve.errors import APIError, HeadersTooLargeError, PayloadTooLargeError, RouteError

UPLOAD_PATH = "/admin/adapters"
ADMIN_ONLY = ("/admin", "/metrics")
PROBES = ("/health", "/ready")
EVERYWHERE = "/console"  # the console's files: each listener's page calls its own API


def render(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


class Edge:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.admin_port = settings.admin_port
        self.body_limit = settings.max_request_bytes
        self.upload_limit = settings.max_adapter_bytes
        self.header_limit = settings.max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = self.upload_limit if path == UPLOAD_PATH and _multipart(scope) else self.body_limit
        error = self._misrouted(scope, path) or self._head_too_large(scope) or _declared_too_large(scope, limit)
        if error is not None:
            await render(error)(scope, receive, send)
            return
        await self.app(scope, _bounded(receive, limit), send)

    def _head_too_large(self, scope: Scope) -> APIError | None:
        size = len(scope["raw_path"]) + len(scope["query_string"])
        size += sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        if size > self.header_limit:
            return HeadersTooLargeError(f"The request line and headers are larger than {self.header_limit} bytes.")
        return None

    def _misrouted(self, scope: Scope, path: str) -> APIError | None:
        """With `admin_port` set, the admin listener serves only the admin API and the
        probes, and the tenant listener never serves the admin API. Both answer the
        same 404 an unknown route gets. The console's files are served on both."""
        if self.admin_port is None or path == EVERYWHERE or path.startswith(EVERYWHERE + "/"):
            return None
        server = scope.get("server")
        on_admin = server is not None and server[1] == self.admin_port
        admin_path = path.startswith(ADMIN_ONLY)
        if admin_path != on_admin and not (on_admin and path in PROBES):
            return RouteError(404, "Not Found")
        return None


def _multipart(scope: Scope) -> bool:
    return any(name == b"content-type" and value.startswith(b"multipart/form-data") for name, value in scope["headers"])


def _declared_too_large(scope: Scope, limit: int) -> APIError | None:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            return PayloadTooLargeError(f"The request body is larger than {limit} bytes.")
    return None


def _bounded(receive: Receive, limit: int) -> Receive:
    """`receive` that raises 413 once the body read so far passes `limit` (a chunked
    body or a Content-Length that lied), so no route ever holds more than that."""
    seen = 0

    async def bounded() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise PayloadTooLargeError(f"The request body is larger than {limit} bytes.")
        return message

    return bounded
