"""Bearer-key authentication. Keys are kept only as SHA-256 hashes and compared in
constant time; the plain key exists in memory just long enough to be hashed. Failed
attempts are throttled per client address (`AuthThrottle`)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

from adaptserve.errors import AuthenticationError, PermissionDeniedError, RateLimitError
from adaptserve.pii.policy import DEFAULT_POLICY, PiiPolicy
from adaptserve.tenancy.quotas import Limits

log = logging.getLogger(__name__)

DEFAULT_TENANT = "default"
KEY_FILE = "api_key"
ADMIN_KEY_FILE = "admin_key"


@dataclass(frozen=True)
class Principal:
    """An authenticated tenant: its name, its never-reused uid (what usage, quota
    windows and the cache salt are keyed by), its quotas, its prefix-cache salt and its
    PII policy."""

    tenant: str
    uid: str = ""
    limits: Limits = field(default_factory=Limits)
    cache_salt: str = ""
    pii: PiiPolicy = DEFAULT_POLICY


@dataclass(frozen=True)
class Actor:
    """Who calls the admin API: the operator (the admin key: everything), or a tenant's
    admin key (its own tenant's keys, aliases, adapters, templates, usage; nothing of
    another tenant's, which answers the same 404 as a name that does not exist)."""

    tenant: str | None = None  # None: the operator
    key_id: str = "operator"
    uid: str = ""

    @property
    def name(self) -> str:
        """What the audit trail records: never the key, only its id."""
        return "operator" if self.tenant is None else f"{self.tenant}/{self.key_id}"

    def require_operator(self) -> None:
        if self.tenant is not None:
            raise PermissionDeniedError("Only the operator's admin key may do this.")

    def sees(self, tenant: str) -> bool:
        return self.tenant is None or self.tenant == tenant


OPERATOR = Actor()


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer(authorization: str | None) -> str:
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthenticationError("Missing API key: send 'Authorization: Bearer <key>'.")
    return key.strip()


def key_matches(authorization: str | None, key_hash: str) -> bool:
    """Whether the bearer key is the one hashed to `key_hash` (the admin key, the
    metrics key): compared in constant time. No key at all is a 401."""
    return hmac.compare_digest(hash_key(bearer(authorization)), key_hash)


class AuthThrottle:
    """At most `per_minute` failed authentications per client address in any sliding
    minute. Over it, the address gets 429 whatever it sends (a right key included)
    until its oldest failure is a minute old, so keys cannot be guessed at speed.
    Addresses are forgotten oldest-first past `max_addresses`: memory stays bounded."""

    WINDOW_S = 60.0

    def __init__(self, per_minute: int, max_addresses: int = 100_000) -> None:
        self._limit = per_minute
        self._max_addresses = max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()  # sync dependencies run in worker threads

    def check(self, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            failures = self._failures.get(address)
            while failures and failures[0] <= now - self.WINDOW_S:
                failures.popleft()
            if failures is None or len(failures) < self._limit:
                return
            wait = math.ceil(failures[0] + self.WINDOW_S - now)
        raise RateLimitError("Too many failed authentication attempts from this address.", retry_after=max(wait, 1))

    def failed(self, address: str) -> None:
        with self._lock:
            failures = self._failures.setdefault(address, deque(maxlen=self._limit))
            failures.append(time.monotonic())
            self._failures.move_to_end(address)
            while len(self._failures) > self._max_addresses:
                self._failures.popitem(last=False)
            reached = len(failures) == self._limit
        if reached:  # once per episode, not once per refused request
            log.warning("%d failed authentications from %s in a minute; refusing it for now", self._limit, address)


def ensure_api_key(configured: str | None, data_dir: Path, file_name: str = KEY_FILE) -> tuple[str, Path | None]:
    """A key: the configured one, else the one stored in the data folder, else a new
    one written there with mode 0600. Returns (key, file or None)."""
    if configured:
        return configured, None
    path = data_dir / file_name
    if path.is_file():
        return path.read_text().strip(), path
    data_dir.mkdir(parents=True, exist_ok=True)
    key = "sk-as-" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    log.info("generated an API key in %s", path)
    return key, path
