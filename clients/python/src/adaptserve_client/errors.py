"""Typed exceptions for adaptserve's OpenAI-shaped errors
(`{"error": {"message", "type", "param", "code"}}`), one class per status."""

from __future__ import annotations

from typing import Any

import httpx


class AdaptserveError(Exception):
    """Anything this client raises."""


class APIConnectionError(AdaptserveError):
    """The server could not be reached, or did not answer in time."""


class APIStatusError(AdaptserveError):
    """The server answered with an error status; the OpenAI error fields are attributes."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code or type or 'error'}: {message}")
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class BadRequestError(APIStatusError):
    """400: the request is malformed or a field is wrong (`param` names it)."""


class AuthenticationError(APIStatusError):
    """401: missing or wrong key."""


class NotFoundError(APIStatusError):
    """404: unknown model, template, adapter, tenant (or not yours)."""


class ConflictError(APIStatusError):
    """409: e.g. deleting an adapter an alias still uses."""


class PayloadTooLargeError(APIStatusError):
    """413: the body is over the server's limit."""


class RateLimitError(APIStatusError):
    """429: over a tenant quota; `retry_after` says when to come back."""


class InternalServerError(APIStatusError):
    """5xx: the gateway or the model server failed (503: starting or restarting)."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    429: RateLimitError,
}


def retry_after_seconds(response: httpx.Response) -> float | None:
    """`Retry-After` as seconds (the delta form; an HTTP date is not used by adaptserve)."""
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def from_fields(status: int, error: Any, retry_after: float | None = None) -> APIStatusError:
    """The exception for one error object, e.g. an item of a batch answer."""
    if not isinstance(error, dict):
        error = {"message": str(error)}
    cls = _BY_STATUS.get(status, InternalServerError if status >= 500 else APIStatusError)
    return cls(
        status,
        str(error.get("message") or ""),
        type=error.get("type"),
        param=error.get("param"),
        code=error.get("code"),
        retry_after=retry_after,
    )


def from_response(response: httpx.Response) -> APIStatusError:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        error = {"message": response.text[:500] or response.reason_phrase}
    return from_fields(response.status_code, error, retry_after_seconds(response))
