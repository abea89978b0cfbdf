"""Per-tenant quotas, enforced in this gateway process: requests per minute, tokens
per minute (sliding 60-second windows) and concurrent requests. Over a limit → 429
`rate_limit_exceeded` with `Retry-After`. With several gateway replicas each one
enforces the limits on its own share of the traffic.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from dataclasses import dataclass

from adaptserve.errors import RateLimitError

WINDOW_S = 60.0


@dataclass(frozen=True)
class Limits:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None


class QuotaGate:
    def __init__(self) -> None:
        self._requests: dict[str, deque[float]] = defaultdict(deque)
        self._tokens: dict[str, deque[tuple[float, int]]] = defaultdict(deque)
        self._active: dict[str, int] = defaultdict(int)

    def admit(self, tenant: str, limits: Limits) -> None:
        """Count a new request in, or raise 429. Call `release` when it ends."""
        now = time.monotonic()
        requests, tokens = self._requests[tenant], self._tokens[tenant]
        while requests and requests[0] <= now - WINDOW_S:
            requests.popleft()
        while tokens and tokens[0][0] <= now - WINDOW_S:
            tokens.popleft()
        if limits.max_concurrent is not None and self._active[tenant] >= limits.max_concurrent:
            raise RateLimitError(f"tenant {tenant} has {limits.max_concurrent} requests in flight, its limit", 1)
        if limits.requests_per_minute is not None and len(requests) >= limits.requests_per_minute:
            raise RateLimitError(f"over {limits.requests_per_minute} requests per minute", _wait(requests[0], now))
        used = sum(n for _, n in tokens)
        if limits.tokens_per_minute is not None and used >= limits.tokens_per_minute:
            raise RateLimitError(f"over {limits.tokens_per_minute} tokens per minute", _wait(tokens[0][0], now))
        requests.append(now)
        self._active[tenant] += 1

    def release(self, tenant: str, tokens: int) -> None:
        self._active[tenant] -= 1
        if tokens:
            self._tokens[tenant].append((time.monotonic(), tokens))


def _wait(oldest: float, now: float) -> int:
    return max(1, math.ceil(oldest + WINDOW_S - now))
