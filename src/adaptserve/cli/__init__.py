"""The `adaptserve` command line: `main.py` builds the parser and dispatches; one module
per command group (serve, admin, adapt, evaluate, fit, bench, quantize); `remote.py`
finds the server, the keys, and pushes adapters to a running server."""

from adaptserve.cli.main import main

__all__ = ["main"]
