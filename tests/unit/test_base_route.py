"""How base requests reach the engine (`base_via_zero_adapter`: auto, true, false) and
how the gateway learns that the supervised engine's plugin is active."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from adaptserve.adapters.spec import BaseModelSpec
from adaptserve.config import Settings
from adaptserve.engine_plugin import ENABLE_ENV, PLUGIN, STATUS_ENV
from adaptserve.server.backends import _base_route, _on_up
from adaptserve.server.gateway import Gateway
from adaptserve.serving.picker import Picker
from adaptserve.upstream.supervisor import Supervisor


class StubSupervisor:
    def __init__(self, active: bool) -> None:
        self.active = active

    def plugin_active(self) -> bool:
        return self.active


def supervisor(tmp_path: Path, **vllm: object) -> Supervisor:
    return Supervisor(Settings(vllm=vllm).vllm, tmp_path, "m", tmp_path / "logs" / "vllm.log")


def test_the_child_is_told_to_load_the_plugin_unless_it_is_off(tmp_path: Path) -> None:
    env = supervisor(tmp_path).environment()
    assert env[ENABLE_ENV] == PLUGIN and env[STATUS_ENV] == str(tmp_path / "logs" / "engine-plugin")
    assert ENABLE_ENV not in supervisor(tmp_path, engine_plugin=False).environment()


@pytest.mark.parametrize(
    ("verdicts", "active"),
    [([], False), ([True], True), ([True, True, True], True), ([True, False, True], False)],
)
def test_the_plugin_counts_as_active_only_if_every_process_says_so(tmp_path, verdicts, active) -> None:
    sup = supervisor(tmp_path)
    (tmp_path / "logs").mkdir()
    for pid, verdict in enumerate(verdicts):
        (tmp_path / "logs" / f"engine-plugin.{pid}.json").write_text(json.dumps({"active": verdict}))
    assert sup.plugin_active() is active
    sup._clear_plugin_status()  # what a restart does first
    assert sup.plugin_active() is False


@pytest.mark.parametrize(
    ("mode", "plugin", "zero"),
    [("auto", True, False), ("auto", False, True), (True, True, True), (False, False, False)],
)
def test_base_requests_use_the_zero_adapter_only_where_needed(fake, base_model, tmp_path, mode, plugin, zero):
    settings = Settings(
        data_dir=tmp_path, model=str(base_model), upstreams=[fake.url], base_via_zero_adapter=mode, api_key="k"
    )
    gateway = Gateway.build(settings)
    _base_route(settings, BaseModelSpec.read(base_model), gateway.catalog)
    picker = Picker(gateway.residency)
    on_up = _on_up(settings, gateway.catalog, gateway.residency, picker, StubSupervisor(plugin), gateway.metrics)
    asyncio.run(on_up(gateway.pool.upstreams[0], []))
    target = gateway.catalog.base_target("default")
    assert (target.adapter is not None) is zero
    assert (target.internal_name != "tiny-base") is zero
    assert any(name.startswith("tiny-base--") for name in fake.loaded) is zero
    gateway.db.dispose()
