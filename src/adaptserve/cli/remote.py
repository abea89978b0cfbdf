"""The command line's side of a running server: where it is (`--url`), the keys a
command uses (`--key` for a tenant's calls, `--admin-key` for the admin API; each
falls back to the settings, then to the file the server wrote), whose an adapter push
makes it (`push_as`: the tenant's unless told `--global`) and the push itself (the
adapter, and the template bound to it with its chosen scoring)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptserve_client import AdaptserveError, Client
from pydantic import SecretStr

from adaptserve.config import Settings
from adaptserve.errors import ConfigurationError
from adaptserve.pii.policy import PiiPolicy
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


def owner_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Whose a pushed adapter is: the tenant's (by default), or global (the operator's)."""
    parser.add_argument(
        "--tenant-admin-key",
        help="push as the tenant with this admin key of its own (default: one made with the admin key for the "
        "push and deleted after it)",
    )
    parser.add_argument(
        "--global",
        dest="global_",
        action="store_true",
        help="push with the admin key as a global adapter, which every tenant may use (default: the tenant's own)",
    )


@dataclass(frozen=True)
class PushAs:
    """The key an adapter push uses and whose the adapter becomes: `tenant`'s (its
    admin key), or global (`tenant` None: the operator's key). `mint`: `key` is the
    operator's, used only to make a short-lived admin key of `tenant` for the push."""

    key: str
    tenant: str | None
    mint: bool = False


def push_as(tenant: str | None, tenant_admin_key: str | None, operator_key: Callable[[], str], global_: bool) -> PushAs:
    """Pushes are the tenant's unless told `--global`: an adapter trained on a tenant's
    data is not every tenant's to list, alias and call. `operator_key` is asked only
    when it is needed."""
    if global_:
        if tenant_admin_key is not None:
            raise ConfigurationError("--global pushes with the operator's admin key, not --tenant-admin-key")
        return PushAs(operator_key(), None)
    if tenant is None:
        raise ConfigurationError(
            "say whose adapter this is: --tenant NAME (the tenant's own) or --global (every tenant may use it)"
        )
    if tenant_admin_key is not None:
        return PushAs(tenant_admin_key, tenant)
    return PushAs(operator_key(), tenant, mint=True)


@contextmanager
def acting_as(url: str, who: PushAs) -> Iterator[str]:
    """The admin key to push with: `who.key`, or an admin key of `who.tenant` made with
    the operator's key for the duration and deleted after (so the server records the
    adapter as the tenant's)."""
    if not who.mint:
        yield who.key
        return
    assert who.tenant is not None
    with Client(url, who.key, timeout=60) as client:
        try:
            made = client.admin.keys.create(who.tenant, role="admin")
        except AdaptserveError as exc:
            raise ConfigurationError(f"the server at {url} refused an admin key for {who.tenant}: {exc}") from exc
        try:
            yield made["key"]
        finally:
            try:
                client.admin.keys.delete(who.tenant, made["id"])
            except AdaptserveError:
                print(
                    f"adaptserve: could not delete the push's admin key {made['id']} of {who.tenant}", file=sys.stderr
                )


def pii_policy(url: str, admin_key: str, tenant: str) -> PiiPolicy:
    """`tenant`'s PII policy, read through the admin API (its admin key or the operator's)."""
    try:
        with Client(url, admin_key, timeout=60) as client:
            return PiiPolicy.model_validate(client.admin.tenants.pii(tenant))
    except AdaptserveError as exc:
        raise ConfigurationError(f"could not read tenant {tenant}'s PII policy from {url}: {exc}") from exc


def push_adapter(
    url: str, key: str, folder: Path, name: str, tenant: str | None, alias: str | None, base: str | None = None
) -> dict:
    """Upload an adapter folder (for LLM base `base`: None, the server's base model),
    make the new version active, point `tenant`'s `alias` at it: the running server
    serves it with no restart."""
    with Client(url, key, timeout=600) as client:
        try:
            stored = client.admin.adapters.push(folder, name, base=base)
            if stored["active_version"] != stored["version"]:
                client.admin.adapters.activate(name, stored["version"])
            out = {"adapter": name, "version": stored["version"], "rank": stored["rank"], "base": stored["base"]}
            if alias is not None:
                client.admin.aliases.set(tenant, alias, adapter=name)
                out |= {"tenant": tenant, "alias": alias}
        except AdaptserveError as exc:
            raise ConfigurationError(f"the server at {url} refused the adapter: {exc}") from exc
    return out


def apply_template(url: str, key: str, document: dict[str, Any], tenant: str | None) -> dict:
    """Apply a template document as `tenant`'s (a new version, active; the identical
    one when nothing changed)."""
    with Client(url, key, timeout=600) as client:
        try:
            stored = client.admin.templates.apply(document["name"], document, tenant=tenant)
        except AdaptserveError as exc:
            raise ConfigurationError(f"the server at {url} refused template {document['name']}: {exc}") from exc
    return {"name": document["name"], "tenant": tenant, "version": stored["version"]}
