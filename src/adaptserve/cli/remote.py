"""The command line's side of a running server: where it is (`--url`), the keys a
command uses (`--key` for a tenant's calls, `--admin-key` for the admin API; each
falls back to the settings, then to the file the server wrote), and an adapter push."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adaptserve_client import AdaptserveError, Client
from pydantic import SecretStr

from adaptserve.config import Settings
from adaptserve.errors import ConfigurationError
from adaptserve.tenancy.auth import ADMIN_KEY_FILE, KEY_FILE


def flags(*, tenant_key: bool, admin_key: bool) -> argparse.ArgumentParser:
    """A parent parser with `--url` and the key flags a command needs."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--url", help="the server (default http://HOST:PORT from the settings)")
    if tenant_key:
        parser.add_argument("--key", help="a tenant's API key (default: ADAPTSERVE_API_KEY or DATA_DIR/api_key)")
    if admin_key:
        parser.add_argument("--admin-key", help="the admin key (default: ADAPTSERVE_ADMIN_KEY or DATA_DIR/admin_key)")
    return parser


def server_url(args: argparse.Namespace, settings: Settings) -> str:
    return (args.url or f"http://{settings.host}:{settings.port}").rstrip("/")


def tenant_key(settings: Settings, given: str | None = None) -> str:
    """--key, else the settings' API key, else the one the server wrote."""
    return _key(given, settings.api_key, settings.data_dir / KEY_FILE, "API key: pass --key or set ADAPTSERVE_API_KEY")


def admin_key(settings: Settings, given: str | None = None) -> str:
    """--admin-key, else the settings' admin key, else the one the server wrote."""
    missing = "admin key: pass --admin-key or set ADAPTSERVE_ADMIN_KEY"
    return _key(given, settings.admin_key, settings.data_dir / ADMIN_KEY_FILE, missing)


def _key(given: str | None, configured: SecretStr | None, written: Path, missing: str) -> str:
    key = given or (configured.get_secret_value() if configured else None)
    if key is None and written.is_file():
        key = written.read_text().strip()
    if key is None:
        sys.exit(f"adaptserve: no {missing}")
    return key


def push_adapter(url: str, key: str, folder: Path, name: str, tenant: str | None, alias: str | None) -> dict:
    """Upload an adapter folder, make the new version active, point `tenant`'s
    `alias` at it: the running server serves it with no restart."""
    with Client(url, key, timeout=600) as client:
        try:
            stored = client.admin.adapters.push(folder, name)
            if stored["active_version"] != stored["version"]:
                client.admin.adapters.activate(name, stored["version"])
            out = {"adapter": name, "version": stored["version"], "rank": stored["rank"]}
            if alias is not None:
                client.admin.aliases.set(tenant, alias, adapter=name)
                out |= {"tenant": tenant, "alias": alias}
        except AdaptserveError as exc:
            raise ConfigurationError(f"the server at {url} refused the adapter: {exc}") from exc
    return out
