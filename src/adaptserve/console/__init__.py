"""The console: the web page the gateway serves at `/console` (docs/console.md). Its
files live in `static/` beside this module: plain ES modules, one stylesheet, one HTML
page, nothing built and nothing fetched from elsewhere. This module finds a file by its
name (only the files that are there: no path walks out of the folder) and says what
headers every console answer carries: a strict Content-Security-Policy (scripts, styles
and connections to this origin only, no inline script or style), no framing, no
referrer, no sniffing."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)

HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: a new release's modules load together
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str


@cache
def _names() -> frozenset[str]:
    """The files of `static/` (one level: the console has no sub-folders)."""
    folder = resources.files(__package__).joinpath("static")
    return frozenset(f.name for f in folder.iterdir() if f.is_file())


def asset(name: str) -> Asset | None:
    """The file `name` of the console ("" is the page), or None where there is none."""
    name = name or "index.html"
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    if name not in _names() or suffix not in MEDIA_TYPES:
        return None
    body = resources.files(__package__).joinpath("static", name).read_bytes()
    return Asset(body, MEDIA_TYPES[suffix])
