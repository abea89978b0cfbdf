"""The package's shape, read from its source: imports run one way (server → serving →
templates/adapters/heads/tenancy/pii/upstream → config/db/errors), only `server/` speaks HTTP,
and heavy libraries stay behind their boundary (vLLM only in the child's launcher and
the engine plugin; peft/transformers only in the tools; llm-compressor only in
`quantize/`; Presidio only in `pii/`)."""

from __future__ import annotations

import ast
from pathlib import Path

import adaptserve

PACKAGE = Path(adaptserve.__file__).parent
LAYERS = {  # the gateway's layers; a module may import its own layer or lower ones
    "errors": 0,
    "durable": 0,
    "lru": 0,
    "safe_regex": 0,
    "config": 1,
    "engine_settings": 1,  # the engines' sections of Settings (vllm:, models:)
    "db": 1,
    "read_cache": 1,  # the per-request database reads, cached; emptied by db's commits
    "metrics": 1,
    "default_model": 1,
    "datasets": 1,
    "templates": 2,
    "adapters": 2,
    "heads": 2,
    "fit_reports": 2,  # the reports `fit` pushes (a store; the tool itself is fit/)
    "console": 2,  # the console's static files and their headers, served by server/routes/console.py
    "tenancy": 2,
    "pii": 2,
    "upstream": 2,
    "quantize.recipes": 2,  # which quantizations the engine serves: a table, no llm-compressor
    "engine_plugin": 2,  # names the variables the supervisor sets; vLLM only inside its functions
    "serving": 3,
    "server": 4,
}
ONLY_IN = {  # a top-level import -> the modules (path prefixes under the package) allowed to make it
    "vllm": ("upstream/vllm_main.py", "engine_plugin/"),
    "peft": ("training/", "fit/", "quantize/", "compress/", "bench/peft_server.py"),
    "transformers": (
        *("training/", "fit/", "quantize/", "compress/", "bench/peft_server.py"),
        "default_model.py",  # converting it
    ),
    "llmcompressor": ("quantize/",),
    "presidio_analyzer": ("pii/",),
    "tldextract": ("pii/",),
    "fastapi": ("server/", "bench/peft_server.py", "bench/fake_engine.py", "bench/sim_engine.py"),
    "starlette": ("server/", "bench/peft_server.py", "bench/fake_engine.py", "bench/sim_engine.py"),
}


def _modules() -> dict[str, list[str]]:
    """Each source file (relative path) → every module it imports (absolute names)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        names = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found[str(path.relative_to(PACKAGE))] = names
    return found


def _layer(dotted: str) -> int | None:
    """The layer of `a.b.c` (a module under the package, without `adaptserve.`)."""
    parts = dotted.split(".")
    for n in (2, 1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    return None


def test_no_module_imports_upward() -> None:
    upward = []
    for path, imported in _modules().items():
        own = _layer(path.removesuffix(".py").replace("/", "."))
        if own is None:
            continue  # the tools (adapt, fit, bench, cli, ...) sit on top of everything
        for name in imported:
            if not name.startswith("adaptserve."):
                continue
            target = name.removeprefix("adaptserve.")
            layer = _layer(target)
            if layer is None and target.split(".")[0] in {p.stem for p in PACKAGE.iterdir()}:
                layer = 99  # a tool: above every gateway layer
            if layer is not None and layer > own:
                upward.append(f"{path} imports {name}")
    assert not upward, upward


def test_heavy_and_http_libraries_stay_behind_their_boundary() -> None:
    misplaced = []
    for path, imported in _modules().items():
        for name in {n.split(".")[0] for n in imported}:
            allowed = ONLY_IN.get(name)
            if allowed is not None and not path.startswith(allowed):
                misplaced.append(f"{path} imports {name}")
    assert not misplaced, misplaced


def test_the_check_sees_imports() -> None:
    """The checks above mean something: they find the imports that are there."""
    modules = _modules()
    assert "adaptserve.serving.pipeline" in " ".join(modules["server/routes/openai.py"])
    assert "vllm" in {n.split(".")[0] for n in modules["upstream/vllm_main.py"]}
    assert _layer("server.state") == 4 and _layer("quantize.recipes") == 2 and _layer("fit.run") is None
    assert "evaluation" in {p.stem for p in PACKAGE.iterdir()}  # a one-file tool counts as a tool
