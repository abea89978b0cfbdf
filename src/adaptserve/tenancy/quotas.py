"""Per-tenant quotas: requests per minute, tokens per minute (sliding 60-second
windows) and concurrent requests. Over a limit → 429 `rate_limit_exceeded` with
`Retry-After`. Counted in this process; with several gateway replicas on PostgreSQL,
`others` holds the other replicas' counts (`shared_quotas.py` keeps it about a second
old) and every check adds them, so the limits hold for the tenant as a whole.

Tokens are reserved, then settled. A request is admitted only if the tokens charged
in the last minute, plus every reservation still open, plus this request's worst case
(`reserve`: prompt + max_tokens × n, see `serving`'s estimate) fit under
`tokens_per_minute`; when it ends its reservation is replaced by what it really used,
which the estimate bounds. So the tokens charged in any 60-second window never exceed the
limit, whatever the size or concurrency of the requests. A request whose worst case
alone is over the limit can never pass: it is a 400 naming `max_tokens`. A request sent
to another replica after an attempt that reached an engine reserves its worst case
again (`extend`), or is not sent again. State is keyed by the
tenant's uid: a tenant created again under a deleted one's name starts afresh.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from dataclasses import dataclass

from adaptserve.errors import InvalidRequestError, QuotaExceededError

WINDOW_S = 60.0
OTHERS_STALE_S = 10.0  # the others' counts are not trusted longer (the database is unreachable)


@dataclass(frozen=True)
class Share:
    """One replica's live counts for a tenant (or several replicas' together)."""

    requests: int = 0  # admitted in the last minute
    tokens: int = 0  # charged in the last minute plus reserved now
    active: int = 0


@dataclass(frozen=True)
class Limits:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None


class QuotaGate:
    def __init__(self) -> None:
        self._requests: dict[str, deque[float]] = defaultdict(deque)
        self._tokens: dict[str, deque[tuple[float, int]]] = defaultdict(deque)
        self._reserved: dict[str, int] = defaultdict(int)
        self._active: dict[str, int] = defaultdict(int)
        self._others: dict[str, Share] = {}  # tenant uid -> the other gateway replicas' counts
        self._others_at = -math.inf  # when they were read: a view older than OTHERS_STALE_S is dropped

    def admit(self, tenant: str, limits: Limits, reserve: int = 0) -> None:
        """Count a new request in, reserving `reserve` tokens, or raise 429. Call
        `release(tenant, reserve, used)` when it ends, however it ends."""
        now = time.monotonic()
        self._check(tenant, limits, reserve, now)
        self._requests[tenant].append(now)
        self._active[tenant] += 1
        self._reserved[tenant] += reserve

    def check(self, tenant: str, limits: Limits) -> None:
        """Raise the 429 `admit` would, counting nothing: a cheap refusal before a
        costly step that comes before admission."""
        self._check(tenant, limits, 0, time.monotonic())

    def extend(self, tenant: str, limits: Limits, extra: int) -> None:
        """An admitted request needs `extra` tokens more than it reserved (its masked
        body is longer, or it is sent again after a dropped connection), or 429; its
        `release` then gives back the sum."""
        now = time.monotonic()
        if limits.tokens_per_minute is not None:
            self._prune(tenant, now)
            self._check_tokens(tenant, limits.tokens_per_minute, extra, self._other(tenant, now).tokens, now)
        self._reserved[tenant] += extra

    def _check(self, tenant: str, limits: Limits, reserve: int, now: float) -> None:
        self._prune(tenant, now)
        requests, other = self._requests[tenant], self._other(tenant, now)
        if limits.max_concurrent is not None and self._active[tenant] + other.active >= limits.max_concurrent:
            raise QuotaExceededError("concurrent", f"{limits.max_concurrent} requests are in flight, the limit", 1)
        if limits.requests_per_minute is not None and len(requests) + other.requests >= limits.requests_per_minute:
            wait = _wait(requests[0], now) if requests else 1  # the others' oldest is not known here
            message = f"over {limits.requests_per_minute} requests per minute"
            raise QuotaExceededError("requests_per_minute", message, wait)
        if limits.tokens_per_minute is not None:
            self._check_tokens(tenant, limits.tokens_per_minute, reserve, other.tokens, now)

    def _prune(self, tenant: str, now: float) -> None:
        requests, tokens = self._requests[tenant], self._tokens[tenant]
        while requests and requests[0] <= now - WINDOW_S:
            requests.popleft()
        while tokens and tokens[0][0] <= now - WINDOW_S:
            tokens.popleft()

    def _other(self, tenant: str, now: float) -> Share:
        return self._others.get(tenant, Share()) if now - self._others_at < OTHERS_STALE_S else Share()

    def release(self, tenant: str, reserved: int, used: int) -> None:
        """The request ended: its reservation becomes the `used` tokens."""
        self._active[tenant] -= 1
        self._reserved[tenant] -= reserved
        if used:
            self._tokens[tenant].append((time.monotonic(), used))

    def set_others(self, others: dict[str, Share]) -> None:
        """The other replicas' counts, as just read (`shared_quotas.py`)."""
        self._others, self._others_at = others, time.monotonic()

    def shares(self) -> dict[str, Share]:
        """This replica's live counts per tenant: what it tells the others."""
        cutoff = time.monotonic() - WINDOW_S
        return {tenant: self._own(tenant, cutoff) for tenant in set(self._requests) | set(self._active)}

    def _own(self, tenant: str, cutoff: float) -> Share:
        """This replica's counts of `tenant` since `cutoff` (nothing is pruned or created)."""
        return Share(
            sum(1 for t in self._requests.get(tenant, ()) if t > cutoff),
            sum(n for t, n in self._tokens.get(tenant, ()) if t > cutoff) + self._reserved.get(tenant, 0),
            self._active.get(tenant, 0),
        )

    def current(self, tenant: str) -> Share:
        """The tenant's counts now, this replica's and the others' together: what its next
        request is admitted against (nothing is pruned or created for it)."""
        now = time.monotonic()
        cutoff = now - WINDOW_S
        other = self._other(tenant, now)
        requests = sum(1 for t in self._requests.get(tenant, ()) if t > cutoff)
        tokens = sum(n for t, n in self._tokens.get(tenant, ()) if t > cutoff) + self._reserved.get(tenant, 0)
        return Share(requests + other.requests, tokens + other.tokens, self._active.get(tenant, 0) + other.active)

    def headroom(self, tenant: str, limits: Limits) -> dict:
        """Each limit of the tenant, what it uses of it now and what is left (None: no limit)."""
        used = self.current(tenant)
        counts = {
            "requests_per_minute": (limits.requests_per_minute, used.requests),
            "tokens_per_minute": (limits.tokens_per_minute, used.tokens),
            "max_concurrent": (limits.max_concurrent, used.active),
        }
        return {
            "window_s": WINDOW_S,
            "limits": {
                name: {"limit": limit, "used": now, "left": None if limit is None else max(0, limit - now)}
                for name, (limit, now) in counts.items()
            },
        }

    def _check_tokens(self, tenant: str, limit: int, reserve: int, others: int, now: float) -> None:
        if reserve > limit:  # waiting would not help: a 400, not a 429
            raise InvalidRequestError(
                f"this request may use up to {reserve} tokens (prompt + max_tokens × n), more than the "
                f"limit of {limit} tokens per minute; lower max_tokens or n",
                param="max_tokens",
                code="tokens_over_limit",
            )
        tokens = self._tokens[tenant]
        charged = sum(n for _, n in tokens)
        if charged + self._reserved[tenant] + others + reserve > limit:
            wait = _wait(tokens[0][0], now) if tokens else 1  # only open reservations: they end soon
            raise QuotaExceededError("tokens_per_minute", f"over {limit} tokens per minute (in use or reserved)", wait)


def _wait(oldest: float, now: float) -> int:
    return max(1, math.ceil(oldest + WINDOW_S - now))
