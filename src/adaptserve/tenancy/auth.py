"""Bearer-key authentication. Keys are kept only as SHA-256 hashes and compared in
constant time; the plain key exists in memory just long enough to be hashed."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from adaptserve.errors import AuthenticationError
from adaptserve.tenancy.quotas import Limits

log = logging.getLogger(__name__)

DEFAULT_TENANT = "default"
KEY_FILE = "api_key"
ADMIN_KEY_FILE = "admin_key"


@dataclass(frozen=True)
class Principal:
    tenant: str
    limits: Limits = field(default_factory=Limits)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer(authorization: str | None) -> str:
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthenticationError("Missing API key: send 'Authorization: Bearer <key>'.")
    return key.strip()


def check_admin(authorization: str | None, admin_key_hash: str) -> None:
    if not hmac.compare_digest(hash_key(bearer(authorization)), admin_key_hash):
        raise AuthenticationError("Incorrect admin key provided.")


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
