"""The `adaptserve` command: one parser, one dispatch. Each command group's module adds
its subcommands with `add(commands, common)` and names its handler with
`set_defaults(run=...)`; `main` builds the settings once and calls it."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from adaptserve.cli import adapt, admin, bench, compress, evaluate, fit, quantize, serve
from adaptserve.config import load_settings
from adaptserve.errors import ConfigurationError

# The flags that are settings too (a flag beats the environment and the settings file).
SETTINGS_FLAGS = ("config", "model", "host", "port", "upstreams", "upstream_dns", "templates_dir")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="adaptserve", description="OpenAI-compatible LLM server with LoRA adapters over vLLM"
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="YAML settings file (also ADAPTSERVE_CONFIG)")
    commands = top.add_subparsers(dest="command", required=True)
    for group in (serve, evaluate, fit, quantize, compress, adapt, bench, admin):
        group.add(commands, common)
    return top


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("httpx", "httpx2"):  # one line per upstream call otherwise (httpx2: the openai SDK's)
        logging.getLogger(chatty).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        settings = load_settings(**{k: v for k, v in vars(args).items() if k in SETTINGS_FLAGS})
        _configure_logging(settings.log_level)
        sys.exit(args.run(args, settings))
    except ConfigurationError as exc:
        sys.exit(f"adaptserve: {exc}")
