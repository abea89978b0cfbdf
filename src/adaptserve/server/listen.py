"""The gateway's HTTP listeners: one uvicorn server on `host:port`, and a second on
`admin_host:admin_port` when the operator gives the admin API its own address (the
`Edge` middleware decides what each serves). Both parse HTTP with h11, whose buffer
limit refuses a request line and headers over `max_header_bytes` before they are
held whole (httptools buffers a header of any size)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Literal

import uvicorn
from starlette.types import ASGIApp

from adaptserve.config import Settings

# Longer than clients keep an idle connection (httpx and the openai SDK: 5 s, uvicorn's
# default too), so a client never sends on a connection the server is closing.
KEEP_ALIVE_S = 65


def configs(app: ASGIApp, settings: Settings) -> list[uvicorn.Config]:
    """The tenant listener (it runs the app's lifespan), then the admin one if separate."""

    def config(host: str, port: int, lifespan: Literal["on", "off"]) -> uvicorn.Config:
        return uvicorn.Config(
            app,
            host=host,
            port=port,
            lifespan=lifespan,
            log_level=settings.log_level.lower(),
            timeout_keep_alive=KEEP_ALIVE_S,
            http="h11",
            h11_max_incomplete_event_size=settings.max_header_bytes,
        )

    listeners = [config(settings.host, settings.port, "on")]
    if settings.admin_port is not None:
        listeners.append(config(settings.admin_host or settings.host, settings.admin_port, "off"))
    return listeners


class FollowerServer(uvicorn.Server):
    """A second listener: it leaves signals to the first, which stops it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_all(listeners: list[uvicorn.Config]) -> None:
    """Serve on every listener until the first one stops (Ctrl-C, SIGTERM)."""
    main = uvicorn.Server(listeners[0])
    followers = [FollowerServer(config) for config in listeners[1:]]
    tasks = [asyncio.create_task(f.serve()) for f in followers]
    try:
        await main.serve()
    finally:
        for follower in followers:
            follower.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)


def serve(app: ASGIApp, settings: Settings) -> None:
    asyncio.run(serve_all(configs(app, settings)))
