"""Typed API errors and their OpenAI-shaped body.

Every error a client can see is an `APIError` subclass; one handler in
`server/app.py` renders it as `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class ConfigurationError(Exception):
    """Bad settings or a missing local resource; raised at start-up, not per request."""


class APIError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None
    carries_content: bool = False  # the message may quote a request or an answer (scrubbed for PII)

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(APIError):
    status = 400
    type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    code = "context_length_exceeded"


def invalid_from(exc: ValidationError, prefix: str = "") -> InvalidRequestError:
    """A pydantic error → 400 naming the first bad field in `param` (`a.b[0].c`)."""
    first = exc.errors()[0]
    param = ""
    for part in first["loc"]:
        param += f"[{part}]" if isinstance(part, int) else (f".{part}" if param else str(part))
    message = first["msg"].removeprefix("Value error, ")
    return InvalidRequestError(f"{prefix}{param}: {message}" if param else prefix + message, param=param or None)


class AuthenticationError(APIError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDeniedError(APIError):
    """The caller is known but may not do this (a tenant admin on an operator's route)."""

    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class NotFoundError(APIError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class RouteError(APIError):
    """A framework-level HTTP error (unknown route, wrong method) in our error shape."""

    type = "invalid_request_error"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message, code={404: "not_found", 405: "method_not_allowed"}.get(status))
        self.status = status


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model '{model}' does not exist or you do not have access to it.",
            param="model",
        )


class PayloadTooLargeError(APIError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class HeadersTooLargeError(APIError):
    status = 431
    type = "invalid_request_error"
    code = "headers_too_large"


class UpstreamUnavailableError(APIError):
    """No healthy vLLM server right now; clients should retry after a pause."""

    status = 503
    type = "server_error"
    code = "upstream_unavailable"

    def __init__(
        self, message: str = "The model server is starting or restarting; retry shortly.", retry_after: int = 5
    ) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class UpstreamDroppedError(UpstreamUnavailableError):
    """The model server's connection dropped after the request was sent: it read the
    request and may have worked on it before it died (on it, or under it)."""

    def __init__(self) -> None:
        super().__init__("The model server's connection dropped; retry shortly.")


class UpstreamTimeoutError(UpstreamUnavailableError):
    """The model server took longer than `request_timeout_s`; the request is aborted."""

    def __init__(self) -> None:
        super().__init__("The model server did not answer in time.")


class UpstreamError(APIError):
    """vLLM answered with an error we cannot attribute to the request."""

    status = 502
    type = "server_error"
    code = "upstream_error"


class EngineModelNotServedError(UpstreamError):
    """An engine in service answered that it does not serve the model a request went to
    without an adapter (a generate model of `models:`, or the base model sent straight):
    nothing to load, so a configuration error (the engine's `--served-model-name` and the
    gateway's name for it differ), not a passing one."""

    code = "engine_model_not_served"

    @classmethod
    def of(cls, model: str) -> EngineModelNotServedError:
        """The client's error names only the model it asked for: the engine's name for it
        is the configuration's, not the tenant's."""
        return cls(
            f"The model server for '{model}' does not serve it: the engine and the gateway name the model "
            "differently (served_model_name), a configuration error the operator must fix."
        )


class UpstreamServerError(UpstreamError):
    """vLLM answered 5xx (503 is `UpstreamUnavailableError`) while handling the request:
    it may have worked on it, and the failure may be the request's own (a request that
    crashes one engine would crash the next), so it is not sent to another replica."""


class ConflictError(APIError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class NameTakenError(ConflictError):
    """The name belongs to another owner (the operator or a tenant): nothing is added to it."""

    code = "name_taken"


class ModelUnavailableError(APIError):
    """The model exists but is held back for now (its adapter failed to load and is in
    its back-off): temporary, unlike a 404, so clients retry after `Retry-After`."""

    status = 503
    type = "server_error"
    code = "model_unavailable"

    def __init__(self, model: str, retry_after: int) -> None:
        super().__init__(
            f"The model '{model}' could not be loaded; it is tried again in {retry_after} s.",
            param="model",
            headers={"Retry-After": str(retry_after)},
        )


class RateLimitError(APIError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class QuotaExceededError(RateLimitError):
    """A tenant quota refused the request; `limit` says which (the metrics' label)."""

    def __init__(self, limit: str, message: str, retry_after: int) -> None:
        super().__init__(message, retry_after)
        self.limit = limit  # "concurrent", "requests_per_minute" or "tokens_per_minute"


class DatabaseUnavailableError(APIError):
    """The database did not answer; the request changed nothing and can be retried."""

    status = 503
    type = "server_error"
    code = "database_unavailable"

    def __init__(self, retry_after: int = 5) -> None:
        super().__init__(
            "The server's database is unavailable; retry shortly.", headers={"Retry-After": str(retry_after)}
        )


class StorageQuotaError(APIError):
    """A tenant's adapters would take more disk than `max_adapter_storage_bytes_per_tenant`."""

    status = 507
    type = "insufficient_quota"
    code = "storage_quota_exceeded"


class StorageError(APIError):
    """The data disk refused a write (full, read-only); nothing half-written was kept."""

    status = 507
    type = "server_error"
    code = "insufficient_storage"
