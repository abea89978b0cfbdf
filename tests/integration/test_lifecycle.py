"""The adapter lifecycle table (tests/lifecycle.py) against the real engine. Which
version served an answer is told by comparing it with each version's solo answer.
(The gateway-restart steps run in the unit suite; the engine restart has its own test.)"""

from __future__ import annotations

import httpx

from tests.helpers import ADMIN_KEY, common_prefix
from tests.lifecycle import LIFECYCLE, Lifecycle, request_body


class EngineBackend:
    def __init__(self, server) -> None:
        self.server = server
        self.references: dict[str, str] = {}  # version -> solo answer

    def _reference(self, version: str, label: str) -> str:
        if version not in self.references:
            alias = f"ref-{label}"
            self.server.admin("POST", "/tenants", json={"name": "lc-ref"})
            key = self.server.admin("POST", "/tenants/lc-ref/keys").json()["key"]
            self.server.admin("PUT", f"/tenants/lc-ref/models/{alias}", json={"adapter": "sup", "version": version})
            reply = httpx.post(
                self.server.url + "/v1/chat/completions",
                json=request_body(alias),
                timeout=300,
                headers={"Authorization": f"Bearer {key}"},
            ).json()
            self.references[version] = reply["choices"][0]["message"]["content"]
            self.server.admin("DELETE", f"/tenants/lc-ref/models/{alias}")
        return self.references[version]

    def which(self, answer: str, versions: dict[str, str]) -> str:
        refs = {label: self._reference(v, label) for label, v in versions.items()}
        assert len(set(refs.values())) == len(refs), f"the versions must answer differently: {refs}"
        scores = {label: common_prefix(answer, ref) for label, ref in refs.items()}
        best = max(scores, key=scores.get)
        return best if list(scores.values()).count(scores[best]) == 1 else f"unclear {scores}"

    def resident(self, internal: str) -> bool:
        return internal in httpx.get(self.server.vllm_url() + "/v1/models").text

    def stream_body(self, alias: str) -> dict:
        # Long enough to still be generating when the swap happens.
        return {
            "model": alias,
            "messages": [{"role": "user", "content": "Write one sentence about the sea."}],
            "max_tokens": 300,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
        }

    def restart(self) -> str:
        raise NotImplementedError("the session's server is shared")


def test_adapter_lifecycle_on_the_engine(server, adapter_dirs):
    backend = EngineBackend(server)
    folders = {"v1": adapter_dirs["a1"], "v2": adapter_dirs["a2"]}
    Lifecycle(server.url, ADMIN_KEY, folders, backend).run(LIFECYCLE)
