"""The adapter lifecycle table (tests/lifecycle.py) against the fake vLLM, restart
included; and LRU residency."""

from __future__ import annotations

from tests.helpers import ADMIN_KEY, make_adapter
from tests.lifecycle import AFTER_RESTART, LIFECYCLE, Lifecycle


class FakeBackend:
    """The fake answers "[<internal name>] echo: ..." and records what it holds."""

    def __init__(self, fake, start_gateway) -> None:
        self.fake, self.start = fake, start_gateway
        self.gateway = start_gateway()

    def which(self, answer: str, versions: dict[str, str]) -> str:
        version = answer.split("]")[0].lstrip("[").split("--")[1]
        return {v: k for k, v in versions.items()}[version]

    def resident(self, internal: str) -> bool:
        return internal in self.fake.loaded

    def stream_body(self, alias: str) -> dict:
        self.fake.token_delay_s = 0.1  # 20 tokens: two seconds in flight
        return {"model": alias, "messages": [{"role": "user", "content": "q"}], "max_tokens": 20, "stream": True}

    def restart(self) -> str:
        self.gateway.server.stop()
        self.fake.restart()
        self.gateway = self.start()
        return self.gateway.url


def test_adapter_lifecycle(start_gateway, fake, tmp_path):
    backend = FakeBackend(fake, start_gateway)
    folders = {"v1": make_adapter(tmp_path / "v1", seed=21), "v2": make_adapter(tmp_path / "v2", seed=22)}
    Lifecycle(backend.gateway.url, ADMIN_KEY, folders, backend).run(LIFECYCLE + AFTER_RESTART)


def test_least_recently_used_idle_adapter_is_unloaded_to_make_room(start_gateway, fake, tmp_path):
    gw = start_gateway(max_resident_adapters=2)
    for i, name in enumerate(("x", "y", "z")):
        gw.admin("POST", "/adapters", json={"name": name, "path": str(make_adapter(tmp_path / name, seed=30 + i))})
        gw.admin("PUT", f"/tenants/default/models/{name}", json={"adapter": name})
    for name in ("x", "y", "x", "z"):  # y is then the least recently used
        response = gw.post("/v1/chat/completions", {"model": name, "messages": [{"role": "user", "content": "q"}]})
        assert response.status_code == 200
    assert {n.split("--")[0] for n in fake.loaded} == {"tiny-base", "x", "z"}  # the zero adapter is never evicted


def test_concurrent_loads_evict_different_adapters(start_gateway, fake, tmp_path):
    """Two cold adapters at once with no room: each load evicts its own victim."""
    import concurrent.futures

    gw = start_gateway(max_resident_adapters=2)
    for i, name in enumerate(("p", "q", "r", "s")):
        gw.admin("POST", "/adapters", json={"name": name, "path": str(make_adapter(tmp_path / name, seed=40 + i))})
        gw.admin("PUT", f"/tenants/default/models/{name}", json={"adapter": name})
    body = {"messages": [{"role": "user", "content": "q"}]}
    for name in ("p", "q"):
        assert gw.post("/v1/chat/completions", body | {"model": name}).status_code == 200
    unloads = fake.unload_calls.copy()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda n: gw.post("/v1/chat/completions", body | {"model": n}), ("r", "s")))
    assert [a.status_code for a in answers] == [200, 200]
    evicted = [n.split("--")[0] for n in fake.unload_calls[len(unloads) :]]
    assert sorted(evicted) == ["p", "q"]  # not p twice
    assert {n.split("--")[0] for n in fake.loaded} == {"tiny-base", "r", "s"}
