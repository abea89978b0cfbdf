"""Upstreams from DNS: a URL whose host is a Kubernetes headless Service (or any name
with several A/AAAA records) stands for one upstream per address, re-resolved every
`interval_s` so replicas that scale up or down are found without a restart."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from adaptserve.upstream.client import Upstream

log = logging.getLogger(__name__)


@dataclass
class Discovery:
    url: str  # e.g. http://vllm-engines:8000
    interval_s: float
    make: Callable[[str], Upstream]  # an Upstream for one discovered URL

    async def resolve(self) -> list[str] | None:
        """One URL per address now behind the name (sorted); None when the lookup
        failed (the caller keeps what it has: a DNS hiccup does not empty the pool)."""
        parts = urlsplit(self.url)
        if parts.hostname is None:
            raise ValueError(f"upstream_dns needs a host name: {self.url}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, OSError) as exc:
            log.warning("resolving %s failed: %s", parts.hostname, exc)
            return None
        addresses = {str(info[4][0]) for info in infos}
        return sorted(f"{parts.scheme}://{_host(a)}:{port}" for a in addresses)


def _host(address: str) -> str:
    return f"[{address}]" if ipaddress.ip_address(address.split("%")[0]).version == 6 else address
