"""What a pipeline call hands back: `Answer` (a non-streamed answer, its `model`
renamed) and `StreamingAnswer`, the single owner of a streamed call's admission (lease,
quota reservation, call record) and upstream connection until it is closed. Nothing
here speaks HTTP: `server/responses.py` turns both into responses."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from adaptserve.adapters.catalog import Target
from adaptserve.serving.record import CallRecord
from adaptserve.serving.relay import Relay
from adaptserve.upstream.client import UpstreamStream


@dataclass
class Answer:
    """A non-streamed upstream answer (its `model` already renamed) and where it ran."""

    body: dict[str, Any]
    target: Target


class StreamingAnswer:
    """An upstream stream that started well, and the single owner of what it holds: the
    admission (lease, quota reservation, call record) and the upstream connection.
    `events` (the client's bytes) is iterated at most once; `aclose()` (idempotent)
    releases everything, whether the events finished, broke, were cut by the client,
    or never started."""

    def __init__(
        self, stream: UpstreamStream, target: Target, call: CallRecord, held: AsyncExitStack, relay: Relay
    ) -> None:
        self.target, self.call = target, call
        self._held = held
        self.events: AsyncGenerator[bytes, None] = self._relayed(relay, stream)

    async def _relayed(self, relay: Relay, stream: UpstreamStream) -> AsyncGenerator[bytes, None]:
        try:
            # Closed here, not when it is garbage: a stalled or departed client cuts the
            # relay (its record says so) before the admission settles the call.
            async with contextlib.aclosing(relay(stream, self.call)) as events:
                async for event in events:
                    if self.call.first_event is None:
                        self.call.first_event = time.perf_counter()
                    yield event
        finally:
            await self._held.aclose()  # the events' end is the admission's end

    async def aclose(self) -> None:
        await self.events.aclose()  # runs its `finally` if it started
        await self._held.aclose()  # a second close is a no-op
