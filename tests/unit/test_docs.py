"""The documentation against the code: the generated references (docs/cli.md,
docs/configuration.md) are what scripts/gen_docs.py writes now, every route the app
registers is in docs/api.md, and every relative link and #anchor in the repository's
Markdown files resolves (GitHub's heading slugs)."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from fastapi.routing import APIRoute

from adaptserve.config import Settings
from adaptserve.server.app import create_app

ROOT = Path(__file__).resolve().parents[2]
# Folders of generated or local output (see .gitignore), never documentation.
SKIPPED = {"fit-results", "eval-results", "build", "dist", "__pycache__", "node_modules", "adapters", "adapter"}
LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
IMAGE = re.compile(r"!\[[^\]]*\]\(\s*([^)\s]+)")
FENCE = re.compile(r"^\s*(```|~~~)")


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page", ["docs/cli.md", "docs/configuration.md"])
def test_generated_reference_matches_the_code(page: str) -> None:
    expected = _generator().PAGES[page]()
    committed = (ROOT / page).read_text()
    assert committed == expected, f"{page} is stale: run `make docs` and commit it"


def test_every_registered_route_is_in_the_api_page(tmp_path: Path, base_model: Path) -> None:
    settings = Settings(data_dir=tmp_path, model=str(base_model), upstreams=["http://127.0.0.1:9"])
    app = create_app(settings)
    page = (ROOT / "docs" / "api.md").read_text()
    missing = [
        f"{method} {route.path}"
        for route in app.routes
        if isinstance(route, APIRoute) and route.include_in_schema  # the /admin catch-all: a sentence
        for method in sorted(route.methods)
        if f"{method} {route.path}" not in page
    ]
    assert not missing, f"routes missing from docs/api.md: {missing}"
    for documented in ("/docs", "/openapi.json"):
        assert documented in page


def _markdown_files() -> Iterator[Path]:
    for path in sorted(ROOT.rglob("*.md")):
        parts = path.relative_to(ROOT).parts
        if any(p.startswith(".") or p in SKIPPED or p.endswith(".egg-info") for p in parts[:-1]):
            continue
        yield path


def _prose(text: str) -> Iterator[str]:
    """The lines outside fenced code blocks."""
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower-cased, punctuation other
    than '-' and '_' dropped, each space a '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in _prose(path.read_text()):
        if match := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line):
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
        found.update(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", line))
    return found


def test_slug_follows_github() -> None:
    assert slug("Finding the best classifier: `adaptserve fit`") == "finding-the-best-classifier-adaptserve-fit"
    assert slug("Replica routing (`adaptserve bench --scenarios routing`)") == (
        "replica-routing-adaptserve-bench---scenarios-routing"
    )
    assert slug("Tenants, adapters and models") == "tenants-adapters-and-models"


def _broken_links(path: Path) -> Iterator[str]:
    for line in _prose(path.read_text()):
        line = re.sub(r"`[^`]*`", "", line)  # inline code is not a link
        for target in LINK.findall(line) + IMAGE.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            resolved = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(ROOT)}: {target}"
            if not resolved.exists():
                yield f"{where} (no such file)"
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                yield f"{where} (no such anchor)"


def test_every_relative_link_and_anchor_resolves() -> None:
    broken = [problem for path in _markdown_files() for problem in _broken_links(path)]
    assert not broken, "broken links:\n" + "\n".join(broken)


TEST_REF = re.compile(r"`(tests/[\w/]+\.py|\.\.)(?:::([\w]+))?")


def test_every_test_security_md_names_exists() -> None:
    """SECURITY.md's guarantees each name the tests that hold them: a renamed or deleted
    test must not leave a claim pointing at nothing. `..::name` is in the file named last."""
    missing, current = [], None
    for found in TEST_REF.finditer((ROOT / "SECURITY.md").read_text()):
        path, name = found.groups()
        if path != "..":
            current = ROOT / path
            if not current.exists():
                missing.append(path)
                continue
        if name and (current is None or not re.search(rf"^(async )?def {name}\b", current.read_text(), re.M)):
            missing.append(f"{current}::{name}")
    assert not missing, missing
