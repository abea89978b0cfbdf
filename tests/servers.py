"""Run an ASGI app with uvicorn on a free loopback port in a background thread."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import uvicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerThread:
    def __init__(self, app: object, port: int | None = None, config: uvicorn.Config | None = None) -> None:
        """Serve `app` on loopback (`port` or a free one), or exactly as `config` says."""
        if config is None:
            config = uvicorn.Config(app, host="127.0.0.1", port=port or free_port(), log_level="warning")
        self.port = config.port
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, ready_path: str = "/health", timeout_s: float = 10.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + ready_path, timeout=1.0).status_code < 500:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{self.url}{ready_path} did not come up")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
