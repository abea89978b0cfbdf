"""One HTTP call described as data (`Call`): method, path, body and how to read the
answer. The sync and async clients send the same `Call`s; only the transport differs.
`Retries` decides, for both, whether and how long to wait before trying again."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx

from adaptserve_client.errors import APIConnectionError, from_response, retry_after_seconds

T = TypeVar("T")

RETRY_STATUS = (429, 503)  # nothing was done: over a quota, or the model server is (re)starting


def json_body(response: httpx.Response) -> Any:
    return response.json() if response.content else None


def as_is(data: Any) -> Any:
    return data


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[Any], T] = as_is  # gets the decoded JSON (None for an empty answer)
    json: Any = None
    params: dict[str, str] | None = None
    content: bytes | None = None
    data: dict[str, str] | None = None
    files: dict[str, Any] | None = None
    headers: dict[str, str] | None = None

    def request_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"method": self.method, "url": self.path}
        for name in ("json", "params", "content", "data", "files", "headers"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value
        return kwargs

    def finish(self, response: httpx.Response) -> T:
        """The parsed answer, or the typed error for an error status."""
        if response.is_error:
            raise from_response(response)
        return self.parse(json_body(response))


@dataclass(frozen=True)
class Retries:
    """Retry 429 and 503 (honouring `Retry-After`) and connections that never opened,
    with exponential back-off and jitter. A wait longer than `max_wait_s` is not
    waited: the error is raised with its `retry_after` instead."""

    max_retries: int = 2
    backoff_s: float = 0.5
    max_wait_s: float = 60.0

    def after_response(self, attempt: int, response: httpx.Response) -> float | None:
        """Seconds to wait before the next attempt, or None to stop here."""
        if response.status_code not in RETRY_STATUS or attempt >= self.max_retries:
            return None
        asked = retry_after_seconds(response)
        wait = asked if asked is not None else self._backoff(attempt)
        return wait if wait <= self.max_wait_s else None

    def after_error(self, attempt: int, error: httpx.TransportError) -> float:
        """Retry only when the request cannot have reached the server; else raise."""
        if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout) and attempt < self.max_retries:
            return self._backoff(attempt)
        raise APIConnectionError(f"{type(error).__name__}: {error}") from error

    def _backoff(self, attempt: int) -> float:
        return min(self.max_wait_s, self.backoff_s * 2**attempt) * (0.5 + random.random() / 2)
