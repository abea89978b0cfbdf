"""The `adaptserve` command: `serve` runs the gateway (and its vLLM child);
`prepare-model` converts the default model once; `eval` measures a template; the
admin groups (tenants, keys, adapters, models, templates) call a running server."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from adaptserve.cli_adapt import add_adapt_commands
from adaptserve.cli_admin import add_admin_commands, run_admin_command
from adaptserve.cli_bench import add_bench_command, add_soak_command, run_bench, run_soak_command
from adaptserve.cli_eval import add_eval_command, run_eval
from adaptserve.cli_quantize import add_quantize_command, run_quantize
from adaptserve.config import Settings, load_settings
from adaptserve.errors import ConfigurationError

log = logging.getLogger("adaptserve")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adaptserve", description="OpenAI-compatible LLM server with LoRA adapters over vLLM"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway and (unless --upstream) a vLLM child")
    serve.add_argument("--config", type=Path, help="YAML settings file (also ADAPTSERVE_CONFIG)")
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
    prepare = commands.add_parser("prepare-model", help="convert the default model once and print its folder")
    prepare.add_argument("--config", type=Path)
    serve.add_argument("--templates", type=Path, dest="templates_dir", help="apply the template files in this folder")
    add_eval_command(commands)
    add_quantize_command(commands)
    add_adapt_commands(commands)
    add_bench_command(commands)
    add_soak_command(commands)
    add_admin_commands(commands)
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("httpx", "httpx2"):  # one line per upstream call otherwise (httpx2: the openai SDK's)
        logging.getLogger(chatty).setLevel(logging.WARNING)


def serve(settings: Settings) -> None:
    from adaptserve.server import listen
    from adaptserve.server.app import create_app
    from adaptserve.tenancy.auth import ADMIN_KEY_FILE, ensure_api_key

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
    print(
        f'adaptserve: models: {settings.base_name} (or "default"), adapters: {", ".join(settings.adapters) or "none"}',
        flush=True,
    )
    print(f"adaptserve: {url.removesuffix('/v1')}/ready answers 200 once the model server is up", flush=True)
    if settings.admin_key is None:
        print(
            f"adaptserve: admin key: in {settings.data_dir / ADMIN_KEY_FILE} (the admin CLI reads it there)", flush=True
        )
    if settings.admin_port is not None:
        admin_host = settings.admin_host or settings.host
        print(f"adaptserve: admin API only at http://{admin_host}:{settings.admin_port}/admin", flush=True)
    listen.serve(app, settings)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    settable = {"config", "model", "host", "port", "upstreams", "templates_dir"}
    flags = {k: v for k, v in vars(args).items() if k in settable}
    try:
        settings = load_settings(**flags)
        _configure_logging(settings.log_level)
        if hasattr(args, "admin_request"):
            sys.exit(run_admin_command(args, settings))
        if hasattr(args, "run_eval"):
            sys.exit(run_eval(args, settings))
        if hasattr(args, "adapt_command"):
            sys.exit(args.adapt_command(args, settings))
        if hasattr(args, "run_bench"):
            sys.exit(run_bench(args, settings))
        if hasattr(args, "run_soak"):
            sys.exit(run_soak_command(args, settings))
        if hasattr(args, "run_quantize"):
            sys.exit(run_quantize(args, settings))
        if args.command == "prepare-model":
            from adaptserve.models import resolve_model

            print(resolve_model(settings.model, settings.resolved_models_dir))
        else:
            serve(settings)
    except ConfigurationError as exc:
        sys.exit(f"adaptserve: {exc}")


if __name__ == "__main__":
    main()
