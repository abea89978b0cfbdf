"""The benchmark scripts' server: `adaptserve.bench.served.Served` with this repository's
templates applied at start-up."""

from __future__ import annotations

from pathlib import Path

from adaptserve.bench.served import ADMIN_KEY, KEY
from adaptserve.bench.served import Served as _Served
from adaptserve.config import load_settings

ROOT = Path(__file__).parents[1]
MODELS_DIR = load_settings().resolved_models_dir
__all__ = ["ADMIN_KEY", "KEY", "MODELS_DIR", "ROOT", "Served"]


class Served(_Served):
    def __init__(self, model: Path | str, data: Path, port: int, env: dict[str, str] | None = None) -> None:
        super().__init__(model, data, port, MODELS_DIR, env, templates=ROOT / "templates")
