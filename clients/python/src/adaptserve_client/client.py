"""`Client` and `AsyncClient`: the same methods (`api.Api`) over a blocking or an
asyncio transport, plus `.openai`, an `openai` SDK client for chat and completions
configured with the same server, key, timeout and retries."""

from __future__ import annotations

from typing import Any

import httpx

from adaptserve_client.api import Api
from adaptserve_client.calls import Retries
from adaptserve_client.transport import AsyncTransport, SyncTransport

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=5.0)


class _Connection:
    """What both clients keep: the server, the key, the timeout and the retry budget."""

    def __init__(self, base_url: str, api_key: str, timeout: float | httpx.Timeout | None, max_retries: int) -> None:
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.api_key, self.max_retries = api_key, max_retries
        self.timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        self._openai: Any = None

    def _http_settings(self) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.api_key}", "User-Agent": "adaptserve-client/0.1"}
        return {"base_url": self.base_url, "headers": headers, "timeout": self.timeout}

    def _openai_settings(self, openai_timeout: Any) -> dict[str, Any]:
        """`openai_timeout` is the installed SDK's own `openai.Timeout` class: it is handed the
        seconds as plain numbers, never an `httpx.Timeout`. openai 3 runs on `httpx2`, whose
        `Timeout` cannot read httpx's, and it cannot know which httpx this client uses."""
        t = httpx.Timeout(self.timeout)
        return {
            "base_url": self.base_url + "/v1",
            "api_key": self.api_key,
            "timeout": openai_timeout(None, connect=t.connect, read=t.read, write=t.write, pool=t.pool),
            "max_retries": self.max_retries,
        }


class Client(_Connection, Api):
    """Blocking client. `base_url` is the server (with or without `/v1`); `api_key` a
    tenant key, or the admin key for `.admin`. Use as a context manager or `close()`."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = 2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        _Connection.__init__(self, base_url, api_key, timeout, max_retries)
        self._http = httpx.Client(transport=transport, **self._http_settings())
        Api.__init__(self, SyncTransport(self._http, Retries(max_retries=max_retries)).send)

    @property
    def openai(self) -> Any:
        """An `openai.OpenAI` for `/v1/chat/completions`, `/v1/completions`, `/v1/models`."""
        if self._openai is None:
            import openai

            self._openai = openai.OpenAI(**self._openai_settings(openai.Timeout))
        return self._openai

    def close(self) -> None:
        self._http.close()
        if self._openai is not None:
            self._openai.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncClient(_Connection, Api):
    """The same methods as `Client`, each to be awaited; `.openai` is an `AsyncOpenAI`."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = 2,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
    ) -> None:
        _Connection.__init__(self, base_url, api_key, timeout, max_retries)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.AsyncClient(transport=transport, limits=limits, **self._http_settings())
        Api.__init__(self, AsyncTransport(self._http, Retries(max_retries=max_retries)).send)

    @property
    def openai(self) -> Any:
        if self._openai is None:
            import openai

            self._openai = openai.AsyncOpenAI(**self._openai_settings(openai.Timeout))
        return self._openai

    async def close(self) -> None:
        await self._http.aclose()
        if self._openai is not None:
            await self._openai.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()
