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

from adaptserve_client import APIConnectionError, APIStatusError, Client
from adaptserve_client.api import Admin

from adaptserve.cli import remote
from adaptserve.config import Settings

# group -> (verb -> (positional arguments, what it calls on the admin namespace))
Handler = Callable[[Admin, argparse.Namespace], Any]


def _command_table() -> dict[str, dict[str, tuple[list[str], Handler]]]:
    return {
        "tenants": {
            "create": (["name"], lambda c, a: c.tenants.create(a.name)),
            "list": ([], lambda c, a: c.tenants.list()),
            "delete": (["name"], lambda c, a: c.tenants.delete(a.name)),
            "pii": (["name"], _pii),
        },
        "keys": {
            "create": (["tenant"], lambda c, a: c.keys.create(a.tenant, "admin" if a.admin else "api")),
            "list": (["tenant"], lambda c, a: c.keys.list(a.tenant)),
            "delete": (["tenant", "key_id"], lambda c, a: c.keys.delete(a.tenant, a.key_id)),
        },
        "adapters": {
            "push": (["path"], _push),
            "list": ([], lambda c, a: c.adapters.list()),
            "bases": ([], lambda c, a: c.adapters.bases()),
            "show": (["name"], lambda c, a: c.adapters.get(a.name)),
            "activate": (["name", "version"], lambda c, a: c.adapters.activate(a.name, a.version)),
            "delete": (["name"], lambda c, a: c.adapters.delete(a.name)),
            "compress": (["name"], _compress),
            "merge": (["name"], _merge),
        },
        "templates": {
            "apply": (["file"], _apply_template),
            "list": ([], lambda c, a: c.templates.list()),
            "show": (["name"], lambda c, a: c.templates.versions(a.name, a.tenant)),
            "activate": (["name", "version"], lambda c, a: c.templates.activate(a.name, int(a.version), a.tenant)),
            "delete": (["name"], lambda c, a: c.templates.delete(a.name, a.tenant)),
        },
        "heads": {
            "push": (["file"], _push_head),
            "list": ([], lambda c, a: c.heads.list()),
            "show": (["name"], lambda c, a: c.heads.get(a.name, a.tenant)),
            "activate": (["name", "version"], lambda c, a: c.heads.activate(a.name, a.version, a.tenant)),
            "rollback": (["name"], lambda c, a: c.heads.rollback(a.name, a.tenant)),
            "delete": (["name"], lambda c, a: c.heads.delete(a.name, a.tenant)),
        },
        "audit": {
            "list": (
                [],
                lambda c, a: c.audit(tenant=a.tenant, actor=a.actor, action=a.action, since=a.since, limit=a.limit),
            ),
        },
        "models": {
            "set": (["tenant", "alias"], _set_alias),
            "list": (["tenant"], lambda c, a: c.aliases.list(a.tenant)),
            "delete": (["tenant", "alias"], lambda c, a: c.aliases.delete(a.tenant, a.alias)),
        },
    }


def add(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    connection = remote.flags(tenant_key=False, admin_key=True)
    for group, subcommands in _command_table().items():
        what = "read the audit trail" if group == "audit" else f"manage {group}"
        parser = commands.add_parser(group, help=f"{what} on a running server")
        verbs = parser.add_subparsers(dest="verb", required=True)
        for verb, (arguments, handler) in subcommands.items():
            sub = verbs.add_parser(verb, parents=[common, connection])
            for argument in arguments:
                sub.add_argument(argument)
            if (group, verb) == ("adapters", "push"):
                sub.add_argument("--name", required=True, help="the adapter's name")
                sub.add_argument(
                    "--server-path",
                    action="store_true",
                    help="send the path for the server to read instead of uploading the folder",
                )
                sub.add_argument(
                    "--base", help="the LLM base it is for: a generate model of models: (default: the base model)"
                )
            if group == "adapters":
                _algebra_flags(sub, verb)
            if group == "templates" and verb != "list":
                sub.add_argument("--tenant", help="the owning tenant (default: a global template)")
            if group == "heads" and verb != "list":
                sub.add_argument("--tenant", help="the owning tenant (default: a global head)")
            if (group, verb) == ("heads", "push"):
                sub.add_argument("--name", required=True, help="the head's name")
                sub.add_argument("--no-activate", action="store_true", help="store the version without activating it")
            if (group, verb) == ("templates", "apply"):
                sub.add_argument("--no-activate", action="store_true", help="store the version without activating it")
            if (group, verb) == ("tenants", "pii"):
                sub.add_argument(
                    "--mode", choices=["off", "log", "mask", "block"], help="set the policy (else: show it)"
                )
                sub.add_argument("--deny", action="append", default=[], help="a word always masked (repeatable)")
                sub.add_argument("--pattern", action="append", default=[], help="ENTITY=REGEX (repeatable)")
            if (group, verb) == ("keys", "create"):
                sub.add_argument("--admin", action="store_true", help="a tenant admin key (its tenant's admin API)")
            if group == "audit":
                sub.add_argument("--tenant", help="only what concerns this tenant")
                sub.add_argument("--actor", help='only this actor ("operator", "unauthenticated")')
                sub.add_argument("--action", help='only actions starting so (e.g. "DELETE", "POST /admin/adapters")')
                sub.add_argument("--since", help="only from this time on (ISO 8601)")
                sub.add_argument("--limit", type=int, help="at most this many, newest first (default 100)")
            if (group, verb) == ("models", "set"):
                sub.add_argument("--adapter", help="the adapter this alias serves")
                sub.add_argument("--version", help="pin a version (default: follow the active one)")
                sub.add_argument("--base", action="store_true", help="serve the base model under this alias")
            sub.set_defaults(run=run, admin_request=handler)


def _algebra_flags(sub: argparse.ArgumentParser, verb: str) -> None:
    """`adapters compress` and `adapters merge`'s own flags."""
    if verb == "compress":
        target = sub.add_mutually_exclusive_group(required=True)
        target.add_argument("--rank", type=int, help="reduce every module's update to this rank")
        target.add_argument("--energy", type=float, help="keep this share (0-1] of each module's energy")
        sub.add_argument("--version", help="the version to reduce (default: the active one)")
        sub.add_argument("--as", dest="into", help="store the result as this adapter (default: a new version)")
    if verb == "merge":
        sub.add_argument("sources", nargs="+", metavar="SOURCE", help="ADAPTER[@VERSION][=WEIGHT]")
        sub.add_argument("--method", choices=["cat", "linear", "ties", "dare"], default="linear")
        sub.add_argument("--rank", type=int, help="the result's rank (linear/ties/dare; default: the largest)")
        sub.add_argument("--density", type=float, help="ties/dare: the share of entries kept (default 0.5)")
        sub.add_argument("--seed", type=int, help="dare: the random drops' seed")


def _push(admin: Admin, args: argparse.Namespace) -> Any:
    folder = Path(args.path).expanduser().resolve()
    if args.server_path:
        return admin.adapters.register_path(args.name, str(folder), base=args.base)
    return admin.adapters.push(folder, args.name, base=args.base)


def _compress(admin: Admin, args: argparse.Namespace) -> Any:
    return admin.adapters.compress(args.name, rank=args.rank, energy=args.energy, version=args.version, into=args.into)


def _merge(admin: Admin, args: argparse.Namespace) -> Any:
    sources = []
    for source in args.sources:
        name, _, weight = source.partition("=")
        try:
            sources.append((name, float(weight) if weight else 1.0))
        except ValueError:
            sys.exit(f"adaptserve: {source!r}: write ADAPTER[@VERSION][=WEIGHT], the weight a number")
    return admin.adapters.merge(
        args.name, sources, method=args.method, rank=args.rank, density=args.density, seed=args.seed
    )


def _push_head(admin: Admin, args: argparse.Namespace) -> Any:
    """A head's JSON file (what `train --method head --out` writes), checked here first."""
    from adaptserve.errors import InvalidRequestError
    from adaptserve.heads.artifact import HeadArtifact

    try:
        head = json.loads(Path(args.file).read_text())
        HeadArtifact.parse(head)
    except (OSError, ValueError) as exc:
        sys.exit(f"adaptserve: {args.file}: {exc}")
    except InvalidRequestError as exc:
        sys.exit(f"adaptserve: {args.file}: {exc.message}")
    return admin.heads.push(args.name, head, tenant=args.tenant, activate=not args.no_activate)


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


def _pii(admin: Admin, args: argparse.Namespace) -> Any:
    if args.mode is None:
        if args.deny or args.pattern:
            sys.exit("adaptserve: --deny and --pattern go with --mode (the whole policy is set at once)")
        return admin.tenants.pii(args.name)
    patterns = []
    for pattern in args.pattern:
        entity, _, regex = pattern.partition("=")
        if not regex:
            sys.exit(f"adaptserve: --pattern {pattern!r}: write ENTITY=REGEX")
        patterns.append({"entity": entity, "regex": regex})
    return admin.tenants.set_pii(args.name, args.mode, args.deny, patterns)


def _set_alias(admin: Admin, args: argparse.Namespace) -> Any:
    return admin.aliases.set(args.tenant, args.alias, adapter=args.adapter, version=args.version, base=args.base)


def run(args: argparse.Namespace, settings: Settings) -> int:
    url = remote.server_url(args, settings)
    with Client(url, remote.admin_key(settings, args.admin_key), timeout=600) as client:
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
