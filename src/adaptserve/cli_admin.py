"""The admin commands of the `adaptserve` CLI. Each one is a call to the running
server's `/admin` API (so it works against a remote gateway too); output is JSON."""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
from pathlib import Path
from typing import Any

import httpx

from adaptserve.config import Settings
from adaptserve.errors import ConfigurationError, error_message
from adaptserve.tenancy.auth import ADMIN_KEY_FILE

# command -> (subcommand -> (arguments, handler)); a handler returns (method, path, request kwargs)
Handler = Any


def _command_table() -> dict[str, dict[str, tuple[list[str], Handler]]]:
    return {
        "tenants": {
            "create": (["name"], lambda a: ("POST", "/tenants", {"json": {"name": a.name}})),
            "list": ([], lambda a: ("GET", "/tenants", {})),
            "delete": (["name"], lambda a: ("DELETE", f"/tenants/{a.name}", {})),
        },
        "keys": {
            "create": (["tenant"], lambda a: ("POST", f"/tenants/{a.tenant}/keys", {})),
            "list": (["tenant"], lambda a: ("GET", f"/tenants/{a.tenant}/keys", {})),
            "delete": (["tenant", "key_id"], lambda a: ("DELETE", f"/tenants/{a.tenant}/keys/{a.key_id}", {})),
        },
        "adapters": {
            "push": (["path"], _push),
            "list": ([], lambda a: ("GET", "/adapters", {})),
            "show": (["name"], lambda a: ("GET", f"/adapters/{a.name}", {})),
            "activate": (
                ["name", "version"],
                lambda a: ("POST", f"/adapters/{a.name}/activate", {"json": {"version": a.version}}),
            ),
            "delete": (["name"], lambda a: ("DELETE", f"/adapters/{a.name}", {})),
        },
        "templates": {
            "apply": (["file"], _apply_template),
            "list": ([], lambda a: ("GET", "/templates", {})),
            "show": (["name"], lambda a: ("GET", f"/templates/{a.name}", {"params": _owner(a)})),
            "activate": (
                ["name", "version"],
                lambda a: (
                    "POST",
                    f"/templates/{a.name}/activate",
                    {"json": {"version": int(a.version)}, "params": _owner(a)},
                ),
            ),
            "delete": (["name"], lambda a: ("DELETE", f"/templates/{a.name}", {"params": _owner(a)})),
        },
        "models": {
            "set": (["tenant", "alias"], _set_alias),
            "list": (["tenant"], lambda a: ("GET", f"/tenants/{a.tenant}/models", {})),
            "delete": (["tenant", "alias"], lambda a: ("DELETE", f"/tenants/{a.tenant}/models/{a.alias}", {})),
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


def _push(args: argparse.Namespace) -> tuple[str, str, dict]:
    folder = Path(args.path).expanduser().resolve()
    if args.server_path:
        return "POST", "/adapters", {"json": {"name": args.name, "path": str(folder)}}
    return "POST", "/adapters", _upload(folder, args.name)


def _upload(folder: Path, name: str) -> dict[str, Any]:
    """The multipart body of an adapter upload: the folder's files as a .tar.gz."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for file in sorted(folder.iterdir()):
            if file.is_file():
                tar.add(file, arcname=file.name)
    return {"data": {"name": name}, "files": {"file": (f"{name}.tar.gz", buffer.getvalue(), "application/gzip")}}


def _apply_template(args: argparse.Namespace) -> tuple[str, str, dict]:
    """Checked here first (a clear error without a round trip), then sent as written."""
    from adaptserve.errors import InvalidRequestError
    from adaptserve.templates.spec import load_document

    text = Path(args.file).read_text()
    try:
        spec = load_document(text)
    except InvalidRequestError as exc:
        sys.exit(f"adaptserve: {args.file}: {exc.message}")
    params = _owner(args) | ({"activate": "false"} if args.no_activate else {})
    return "PUT", f"/templates/{spec.name}", {"content": text.encode(), "params": params}


def _owner(args: argparse.Namespace) -> dict[str, str]:
    return {"tenant": args.tenant} if getattr(args, "tenant", None) else {}


def _set_alias(args: argparse.Namespace) -> tuple[str, str, dict]:
    body = {"base": True} if args.base else {"adapter": args.adapter, "version": args.version}
    return "PUT", f"/tenants/{args.tenant}/models/{args.alias}", {"json": body}


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
    `alias` at the adapter: the running server serves it with no restart."""
    with httpx.Client(base_url=f"{url}/admin", headers={"Authorization": f"Bearer {key}"}, timeout=600) as client:
        stored = _checked(client.post("/adapters", **_upload(folder, name)))
        if stored["active_version"] != stored["version"]:
            _checked(client.post(f"/adapters/{name}/activate", json={"version": stored["version"]}))
        out = {"adapter": name, "version": stored["version"], "rank": stored["rank"]}
        if alias is not None:
            _checked(client.put(f"/tenants/{tenant}/models/{alias}", json={"adapter": name}))
            out |= {"tenant": tenant, "alias": alias}
    return out


def _checked(response: httpx.Response) -> dict:
    if response.is_error:
        raise ConfigurationError(f"the server refused {response.request.url.path}: {error_message(response)}")
    return response.json()


def run_admin_command(args: argparse.Namespace, settings: Settings) -> int:
    url = (args.url or f"http://{settings.host}:{settings.port}").rstrip("/")
    key = admin_key(settings, args.admin_key)
    method, path, kwargs = args.admin_request(args)
    try:
        response = httpx.request(
            method, f"{url}/admin{path}", headers={"Authorization": f"Bearer {key}"}, timeout=600, **kwargs
        )
    except httpx.HTTPError as exc:
        sys.exit(f"adaptserve: cannot reach {url}: {exc}")
    if response.content:
        print(json.dumps(response.json(), indent=2))
    return 0 if response.is_success else 1
