"""The admin commands of the `adaptserve` CLI. Each one is a call to a running server's
`/admin` API through `adaptserve_client` (so it works against a remote gateway too);
output is JSON, and an error answer is printed as its OpenAI error body (exit 1)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adaptserve_client import AdaptserveError, APIConnectionError, APIStatusError, Client
from adaptserve_client.api import Admin

from adaptserve.config import Settings
from adaptserve.errors import ConfigurationError
from adaptserve.tenancy.auth import ADMIN_KEY_FILE

# group -> (verb -> (positional arguments, what it calls on the admin namespace))
Handler = Callable[[Admin, argparse.Namespace], Any]


def _command_table() -> dict[str, dict[str, tuple[list[str], Handler]]]:
    return {
        "tenants": {
            "create": (["name"], lambda c, a: c.tenants.create(a.name)),
            "list": ([], lambda c, a: c.tenants.list()),
            "delete": (["name"], lambda c, a: c.tenants.delete(a.name)),
        },
        "keys": {
            "create": (["tenant"], lambda c, a: c.keys.create(a.tenant)),
            "list": (["tenant"], lambda c, a: c.keys.list(a.tenant)),
            "delete": (["tenant", "key_id"], lambda c, a: c.keys.delete(a.tenant, a.key_id)),
        },
        "adapters": {
            "push": (["path"], _push),
            "list": ([], lambda c, a: c.adapters.list()),
            "show": (["name"], lambda c, a: c.adapters.get(a.name)),
            "activate": (["name", "version"], lambda c, a: c.adapters.activate(a.name, a.version)),
            "delete": (["name"], lambda c, a: c.adapters.delete(a.name)),
        },
        "templates": {
            "apply": (["file"], _apply_template),
            "list": ([], lambda c, a: c.templates.list()),
            "show": (["name"], lambda c, a: c.templates.versions(a.name, a.tenant)),
            "activate": (["name", "version"], lambda c, a: c.templates.activate(a.name, int(a.version), a.tenant)),
            "delete": (["name"], lambda c, a: c.templates.delete(a.name, a.tenant)),
        },
        "models": {
            "set": (["tenant", "alias"], _set_alias),
            "list": (["tenant"], lambda c, a: c.aliases.list(a.tenant)),
            "delete": (["tenant", "alias"], lambda c, a: c.aliases.delete(a.tenant, a.alias)),
        },
    }


def add_admin_commands(commands: argparse._SubParsersAction) -> None:
    for group, subcommands in _command_table().items():
        parser = commands.add_parser(group, help=f"manage {group} on a running server")
        verbs = parser.add_subparsers(dest="verb", required=True)
        for verb, (arguments, handler) in subcommands.items():
            sub = verbs.add_parser(verb)
            for argument in arguments:
                sub.add_argument(argument)
            _add_connection_flags(sub)
            if (group, verb) == ("adapters", "push"):
                sub.add_argument("--name", required=True, help="the adapter's name")
                sub.add_argument(
                    "--server-path",
                    action="store_true",
                    help="send the path for the server to read instead of uploading the folder",
                )
            if group == "templates" and verb != "list":
                sub.add_argument("--tenant", help="the owning tenant (default: a global template)")
            if (group, verb) == ("templates", "apply"):
                sub.add_argument("--no-activate", action="store_true", help="store the version without activating it")
            if (group, verb) == ("models", "set"):
                sub.add_argument("--adapter", help="the adapter this alias serves")
                sub.add_argument("--version", help="pin a version (default: follow the active one)")
                sub.add_argument("--base", action="store_true", help="serve the base model under this alias")
            sub.set_defaults(admin_request=handler)


def _add_connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the server (default http://HOST:PORT from the settings)")
    parser.add_argument("--admin-key", help="default: ADAPTSERVE_ADMIN_KEY or DATA_DIR/admin_key")
    parser.add_argument("--config", type=Path)


def _push(admin: Admin, args: argparse.Namespace) -> Any:
    folder = Path(args.path).expanduser().resolve()
    if args.server_path:
        return admin.adapters.register_path(args.name, str(folder))
    return admin.adapters.push(folder, args.name)


def _apply_template(admin: Admin, args: argparse.Namespace) -> Any:
    """Checked here first (a clear error without a round trip), then sent as written."""
    from adaptserve.errors import InvalidRequestError
    from adaptserve.templates.spec import load_document

    text = Path(args.file).read_text()
    try:
        spec = load_document(text)
    except InvalidRequestError as exc:
        sys.exit(f"adaptserve: {args.file}: {exc.message}")
    return admin.templates.apply(spec.name, text, tenant=args.tenant, activate=not args.no_activate)


def _set_alias(admin: Admin, args: argparse.Namespace) -> Any:
    return admin.aliases.set(args.tenant, args.alias, adapter=args.adapter, version=args.version, base=args.base)


def admin_key(settings: Settings, given: str | None = None) -> str:
    """--admin-key, else the settings' admin key, else the one the server wrote."""
    key = given or (settings.admin_key.get_secret_value() if settings.admin_key else None)
    if key is None and (settings.data_dir / ADMIN_KEY_FILE).is_file():
        key = (settings.data_dir / ADMIN_KEY_FILE).read_text().strip()
    if key is None:
        sys.exit("adaptserve: no admin key: pass --admin-key or set ADAPTSERVE_ADMIN_KEY")
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


def run_admin_command(args: argparse.Namespace, settings: Settings) -> int:
    url = args.url or f"http://{settings.host}:{settings.port}"
    with Client(url, admin_key(settings, args.admin_key), timeout=600) as client:
        try:
            result = args.admin_request(client.admin, args)
        except APIConnectionError as exc:
            sys.exit(f"adaptserve: cannot reach {url}: {exc}")
        except APIStatusError as exc:
            print(json.dumps(exc.body(), indent=2))
            return 1
    if result is not None:
        print(json.dumps(result, indent=2))
    return 0
