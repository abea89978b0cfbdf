"""The two ways a `Call` is sent: blocking (httpx.Client) and asyncio (httpx.AsyncClient).
Each is the same loop: send, ask `Retries`, wait, try again, then parse or raise."""

from __future__ import annotations

import asyncio
import time
from typing import TypeVar

import httpx

from adaptserve_client.calls import Call, Retries

T = TypeVar("T")


class SyncTransport:
    def __init__(self, http: httpx.Client, retries: Retries) -> None:
        self.http, self.retries = http, retries

    def send(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = self.http.request(**call.request_kwargs())
            except httpx.TransportError as exc:
                wait: float | None = self.retries.after_error(attempt, exc)
            else:
                wait = self.retries.after_response(attempt, response)
                if wait is None:
                    return call.finish(response)
            time.sleep(wait)
            attempt += 1


class AsyncTransport:
    def __init__(self, http: httpx.AsyncClient, retries: Retries) -> None:
        self.http, self.retries = http, retries

    async def send(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = await self.http.request(**call.request_kwargs())
            except httpx.TransportError as exc:
                wait: float | None = self.retries.after_error(attempt, exc)
            else:
                wait = self.retries.after_response(attempt, response)
                if wait is None:
                    return call.finish(response)
            await asyncio.sleep(wait)
            attempt += 1
