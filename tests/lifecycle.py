"""The adapter lifecycle as data, shared by the unit suite (fake vLLM) and the
integration suite (real vLLM). Each step is an admin or tenant call over HTTP; a
small backend says which version served an answer and whether vLLM holds a version.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import httpx

# (step, arguments, expected); versions are labels ("v1", "v2") of two adapter folders.
LIFECYCLE = [
    ("tenant", ("acme",), 201),
    ("upload", ("sup", "v1"), 201),
    ("alias", ("acme", "support", {"adapter": "sup"}), 200),
    ("alias", ("acme", "pinned", {"adapter": "sup", "version": "v1"}), 200),
    ("request", ("acme", "support"), "v1"),
    ("upload", ("sup", "v2"), 201),
    ("request", ("acme", "support"), "v1"),  # a new version is not live until activated
    ("stream_open", ("acme", "support"), None),  # a long stream in flight on v1
    ("activate", ("sup", "v2"), 200),
    ("request", ("acme", "support"), "v2"),  # new requests get the new version at once
    ("request", ("acme", "pinned"), "v1"),  # a pinned alias keeps its version
    ("stream_finish", (), "v1"),  # the in-flight stream was not cut and stayed on v1
    ("resident", ("sup", "v1"), True),  # the pinned alias still uses v1: not unloaded in 5 s
    ("alias", ("acme", "pinned", {"adapter": "sup", "version": "v2"}), 200),
    ("activate", ("sup", "v1"), 200),
    ("activate", ("sup", "v2"), 200),
    ("unloaded", ("sup", "v1"), True),  # retired and idle: unloaded from vLLM
    ("delete", ("sup",), 409),  # aliases still point at it
    ("unalias", ("acme", "support"), 204),
    ("unalias", ("acme", "pinned"), 204),
    ("delete", ("sup",), 204),
    ("request", ("acme", "support"), 404),
    ("unloaded", ("sup", "v2"), True),
]
AFTER_RESTART = [
    ("restart", (), None),
    ("upload", ("sup", "v1"), 201),  # the same content comes back as the same version
    ("alias", ("acme", "support", {"adapter": "sup"}), 200),
    ("request", ("acme", "support"), "v1"),
]


def request_body(alias: str) -> dict[str, Any]:
    """What every `request` step sends; a backend's reference answers must use the same."""
    return {
        "model": alias,
        "messages": [{"role": "user", "content": "Write one sentence about the sea."}],
        "max_tokens": 24,
        "temperature": 0,
    }


class Backend(Protocol):
    def which(self, answer: str, versions: dict[str, str]) -> str:
        """The label of the version that produced `answer`."""

    def resident(self, internal: str) -> bool: ...

    def stream_body(self, alias: str) -> dict[str, Any]: ...

    def restart(self) -> str:
        """Restart the gateway (state kept); returns its new URL."""


class Lifecycle:
    def __init__(self, url: str, admin_key: str, folders: dict[str, Path], backend: Backend) -> None:
        self.url, self.admin_key, self.folders, self.backend = url, admin_key, folders, backend
        self.versions: dict[str, str] = {}
        self.keys: dict[str, str] = {}
        self.stream: dict[str, Any] = {}

    def run(self, steps: list[tuple[str, tuple, Any]]) -> None:
        for number, (step, args, expected) in enumerate(steps, start=1):
            outcome = getattr(self, step)(*args)
            if expected is not None:
                assert outcome == expected, f"step {number} {step}{args}: got {outcome!r}, expected {expected!r}"

    def _admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(
            method, f"{self.url}/admin{path}", headers={"Authorization": f"Bearer {self.admin_key}"}, timeout=60, **kw
        )

    def tenant(self, name: str) -> int:
        status = self._admin("POST", "/tenants", json={"name": name}).status_code
        self.keys[name] = self._admin("POST", f"/tenants/{name}/keys").json()["key"]
        return status

    def upload(self, name: str, label: str) -> int:
        response = self._admin("POST", "/adapters", json={"name": name, "path": str(self.folders[label])})
        self.versions[label] = response.json()["version"]
        return response.status_code

    def alias(self, tenant: str, alias: str, body: dict) -> int:
        body = {**body, "version": self.versions.get(body.get("version"), body.get("version"))}
        return self._admin("PUT", f"/tenants/{tenant}/models/{alias}", json=body).status_code

    def unalias(self, tenant: str, alias: str) -> int:
        return self._admin("DELETE", f"/tenants/{tenant}/models/{alias}").status_code

    def activate(self, name: str, label: str) -> int:
        return self._admin("POST", f"/adapters/{name}/activate", json={"version": self.versions[label]}).status_code

    def delete(self, name: str) -> int:
        return self._admin("DELETE", f"/adapters/{name}").status_code

    def request(self, tenant: str, alias: str) -> str | int:
        response = httpx.post(
            f"{self.url}/v1/chat/completions",
            json=request_body(alias),
            timeout=300,
            headers={"Authorization": f"Bearer {self.keys[tenant]}"},
        )
        if response.status_code != 200:
            return response.status_code
        return self.backend.which(response.json()["choices"][0]["message"]["content"], self.versions)

    def stream_open(self, tenant: str, alias: str) -> None:
        first = threading.Event()

        def read() -> None:
            pieces = []
            with httpx.stream(
                "POST",
                f"{self.url}/v1/chat/completions",
                json=self.backend.stream_body(alias),
                headers={"Authorization": f"Bearer {self.keys[tenant]}"},
                timeout=300,
            ) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        choices = json.loads(line[6:])["choices"]
                        pieces.append(choices[0]["delta"].get("content") or "" if choices else "")
                        first.set()
            self.stream["text"] = "".join(pieces)
            first.set()

        self.stream["thread"] = threading.Thread(target=read)
        self.stream["thread"].start()
        first.wait(timeout=300)

    def stream_finish(self) -> str:
        self.stream["thread"].join(timeout=300)
        return self.backend.which(self.stream["text"], self.versions)

    def resident(self, name: str, label: str) -> bool:
        """Whether vLLM still holds the version after 5 s in which a wrong background
        unload would have taken it (a window: what must not happen, on any machine)."""
        return self._held_until(name, label, 5.0)

    def unloaded(self, name: str, label: str) -> bool:
        """Whether vLLM lets the version go: waited for, up to a minute, since a busy
        engine may be slow to unload (a version never unloaded stays for good)."""
        return not self._held_until(name, label, 60.0)

    def _held_until(self, name: str, label: str, seconds: float) -> bool:
        internal = f"{name}--{self.versions[label]}"
        deadline = time.monotonic() + seconds
        while self.backend.resident(internal) and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.backend.resident(internal)

    def restart(self) -> None:
        self.url = self.backend.restart()
