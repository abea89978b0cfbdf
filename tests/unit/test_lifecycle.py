"""The adapter lifecycle as data: each step, and what must be true after it."""

from __future__ import annotations

import json
import threading
import time

import httpx

from tests.unit.factories import make_adapter

# (step, arguments, expected): versions are labels ("v1", "v2") mapped to uploads.
LIFECYCLE = [
    ("tenant", ("acme",), 201),
    ("upload", ("sup", "v1"), 201),
    ("alias", ("acme", "support", {"adapter": "sup"}), 200),
    ("alias", ("acme", "pinned", {"adapter": "sup", "version": "v1"}), 200),
    ("request", ("acme", "support"), "v1"),
    ("upload", ("sup", "v2"), 201),
    ("request", ("acme", "support"), "v1"),  # a new version is not live until activated
    ("stream_open", ("acme", "support"), None),  # a slow stream in flight on v1
    ("activate", ("sup", "v2"), 200),
    ("request", ("acme", "support"), "v2"),  # new requests get the new version at once
    ("request", ("acme", "pinned"), "v1"),  # a pinned alias keeps its version
    ("stream_finish", (), "v1"),  # the in-flight stream was not cut and stayed on v1
    ("resident", ("sup", "v1"), True),  # the pinned alias still uses v1
    ("alias", ("acme", "pinned", {"adapter": "sup", "version": "v2"}), 200),
    ("activate", ("sup", "v1"), 200),
    ("activate", ("sup", "v2"), 200),
    ("resident", ("sup", "v1"), False),  # retired and idle: unloaded from vLLM
    ("delete", ("sup",), 409),  # aliases still point at it
    ("unalias", ("acme", "support"), 204),
    ("unalias", ("acme", "pinned"), 204),
    ("delete", ("sup",), 204),
    ("request", ("acme", "support"), 404),
    ("resident", ("sup", "v2"), False),
    ("restart", (), None),
    ("upload", ("sup", "v1"), 201),  # the same content comes back as the same version
    ("alias", ("acme", "support", {"adapter": "sup"}), 200),
    ("request", ("acme", "support"), "v1"),
]


class Lifecycle:
    def __init__(self, start_gateway, fake, tmp_path) -> None:
        self.start, self.fake = start_gateway, fake
        self.gw = start_gateway()
        self.folders = {"v1": make_adapter(tmp_path / "v1", seed=21), "v2": make_adapter(tmp_path / "v2", seed=22)}
        self.versions: dict[str, str] = {}
        self.keys: dict[str, str] = {}
        self.stream: dict = {}

    def admin(self, method, path, **kw):
        return self.gw.admin(method, path, **kw).status_code

    def tenant(self, name):
        status = self.admin("POST", "/tenants", json={"name": name})
        self.keys[name] = self.gw.admin("POST", f"/tenants/{name}/keys").json()["key"]
        return status

    def upload(self, name, label):
        response = self.gw.admin("POST", "/adapters", json={"name": name, "path": str(self.folders[label])})
        self.versions[label] = response.json()["version"]
        return response.status_code

    def alias(self, tenant, alias, body):
        body = {**body, "version": self.versions.get(body.get("version"), body.get("version"))}
        return self.admin("PUT", f"/tenants/{tenant}/models/{alias}", json=body)

    def unalias(self, tenant, alias):
        return self.admin("DELETE", f"/tenants/{tenant}/models/{alias}")

    def activate(self, name, label):
        return self.admin("POST", f"/adapters/{name}/activate", json={"version": self.versions[label]})

    def delete(self, name):
        return self.admin("DELETE", f"/adapters/{name}")

    def label_of(self, internal: str) -> str:
        return {v: k for k, v in self.versions.items()}[internal.split("--")[1]]

    def request(self, tenant, alias):
        response = self.gw.post(
            "/v1/chat/completions",
            {"model": alias, "messages": [{"role": "user", "content": "q"}]},
            key=self.keys[tenant],
        )
        if response.status_code != 200:
            return response.status_code
        return self.label_of(self.fake.requests[-1]["model"])

    def stream_open(self, tenant, alias):
        self.fake.token_delay_s = 0.1
        body = {"model": alias, "messages": [{"role": "user", "content": "q"}], "max_tokens": 20, "stream": True}
        headers = {"Authorization": f"Bearer {self.keys[tenant]}"}

        def read() -> None:
            with httpx.stream("POST", self.gw.url + "/v1/chat/completions", json=body, headers=headers) as r:
                pieces = [
                    json.loads(line[6:])["choices"][0]["delta"].get("content", "")
                    for line in r.iter_lines()
                    if line.startswith("data: {")
                ]
            self.stream["text"] = "".join(pieces)

        self.stream["thread"] = threading.Thread(target=read)
        self.stream["thread"].start()
        while self.fake.streams_open == 0:
            time.sleep(0.01)

    def stream_finish(self):
        self.stream["thread"].join(timeout=10)
        self.fake.token_delay_s = 0.0
        return self.label_of(self.stream["text"].split("]")[0].lstrip("["))

    def resident(self, name, label):
        """Whether vLLM holds the version, after giving background unloads a second."""
        internal = f"{name}--{self.versions[label]}"
        deadline = time.monotonic() + 1.0
        while internal in self.fake.loaded and time.monotonic() < deadline:
            time.sleep(0.02)
        return internal in self.fake.loaded

    def restart(self):
        self.gw.server.stop()
        self.fake.restart()
        self.gw = self.start()


def test_adapter_lifecycle(start_gateway, fake, tmp_path):
    life = Lifecycle(start_gateway, fake, tmp_path)
    for number, (step, args, expected) in enumerate(LIFECYCLE, start=1):
        outcome = getattr(life, step)(*args)
        if expected is not None:
            assert outcome == expected, f"step {number} {step}{args}: got {outcome!r}, expected {expected!r}"


def test_least_recently_used_idle_adapter_is_unloaded_to_make_room(start_gateway, fake, tmp_path):
    gw = start_gateway(max_resident_adapters=2)
    for i, name in enumerate(("x", "y", "z")):
        gw.admin("POST", "/adapters", json={"name": name, "path": str(make_adapter(tmp_path / name, seed=30 + i))})
        gw.admin("PUT", f"/tenants/default/models/{name}", json={"adapter": name})
    for name in ("x", "y", "x", "z"):  # y is then the least recently used
        response = gw.post("/v1/chat/completions", {"model": name, "messages": [{"role": "user", "content": "q"}]})
        assert response.status_code == 200
    assert {n.split("--")[0] for n in fake.loaded} == {"tiny-base", "x", "z"}  # the zero adapter is never evicted
