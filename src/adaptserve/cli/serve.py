"""`adaptserve serve` runs the gateway (and, unless `--upstream`/`--upstream-dns`, its vLLM child);
`adaptserve prepare-model` converts the default model once and prints its folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from adaptserve.config import Settings
from adaptserve.errors import ConfigurationError


def add(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    serve = commands.add_parser("serve", parents=[common], help="run the gateway and (unless --upstream) a vLLM child")
    serve.add_argument("--model", help='"default" or a model folder (also ADAPTSERVE_MODEL)')
    serve.add_argument("--host", help="bind address (also ADAPTSERVE_HOST; default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (also ADAPTSERVE_PORT; default 8000)")
    serve.add_argument(
        "--upstream",
        action="append",
        dest="upstreams",
        metavar="URL",
        help="front this vLLM server instead of starting one (repeatable)",
    )
    serve.add_argument(
        "--upstream-dns",
        dest="upstream_dns",
        metavar="URL",
        help="front every address behind this URL's host (a headless Service), re-resolved as replicas come and go",
    )
    serve.add_argument("--templates", type=Path, dest="templates_dir", help="apply the template files in this folder")
    serve.set_defaults(run=run_serve)
    prepare = commands.add_parser(
        "prepare-model", parents=[common], help="convert the default model once and print its folder"
    )
    prepare.set_defaults(run=run_prepare)


def run_prepare(args: argparse.Namespace, settings: Settings) -> int:
    from adaptserve.default_model import resolve_model

    print(resolve_model(settings.model, settings.resolved_models_dir))
    return 0


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    from adaptserve.server import listen
    from adaptserve.server.app import create_app
    from adaptserve.tenancy.auth import ADMIN_KEY_FILE, ensure_api_key

    if settings.templates_dir is not None and not settings.templates_dir.is_dir():
        raise ConfigurationError(f"templates_dir (--templates): {settings.templates_dir} is not a folder")
    app = create_app(settings)
    configured = settings.api_key.get_secret_value() if settings.api_key else None
    _, key_file = ensure_api_key(configured, settings.data_dir)
    url = f"http://{settings.host}:{settings.port}/v1"
    print(f"adaptserve: OpenAI-compatible API at {url}", flush=True)
    if key_file is None:
        print("adaptserve: API key: the one you configured (ADAPTSERVE_API_KEY or the settings file)", flush=True)
    else:
        # The key itself is never printed or logged: consoles end up in log files.
        print(f"adaptserve: API key: in {key_file} (mode 0600; `cat` it)", flush=True)
    adapters = ", ".join(settings.adapters) or "none"
    extra = "".join(f", {entry.role}: {entry.name}" for entry in settings.models)  # models: (docs/embeddings.md)
    print(f'adaptserve: models: {settings.base_name} (or "default"), adapters: {adapters}{extra}', flush=True)
    print(f"adaptserve: {url.removesuffix('/v1')}/ready answers 200 once the model server is up", flush=True)
    if settings.admin_key is None:
        admin_file = settings.data_dir / ADMIN_KEY_FILE
        print(f"adaptserve: admin key: in {admin_file} (the admin CLI reads it there)", flush=True)
    if settings.admin_port is not None:
        admin_host = settings.admin_host or settings.host
        print(f"adaptserve: admin API only at http://{admin_host}:{settings.admin_port}/admin", flush=True)
    listen.serve(app, settings)
    return 0
