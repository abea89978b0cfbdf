"""Admin writes of one name at the same moment, as two operators' scripts or a retried
deploy make them: each answers as it would alone (created, updated, or 409 for a
second creation), never a 500, and what is stored afterwards is one of the writes."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.helpers import SENTIMENT, RunningGateway, make_adapter, random_head, upload

WRITERS = 8


def at_once(write: Callable[[int], httpx.Response]) -> list[int]:
    """`write(i)` from WRITERS threads released together → their statuses."""
    start, statuses = threading.Barrier(WRITERS), [0] * WRITERS

    def run(i: int) -> None:
        start.wait()
        statuses[i] = write(i).status_code

    threads = [threading.Thread(target=run, args=(i,)) for i in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(statuses)


def test_one_alias_written_at_once_is_one_of_the_writes(gateway: RunningGateway) -> None:
    adapters = ["alpha", "beta"]
    for name in ("race-0", "race-1", "race-2"):
        path = f"/tenants/default/models/{name}"
        statuses = at_once(lambda i, path=path: gateway.admin("PUT", path, json={"adapter": adapters[i % 2]}))
        assert statuses == [200] * WRITERS
        [alias] = [a for a in gateway.admin("GET", "/tenants/default/models").json()["data"] if a["alias"] == name]
        assert alias["adapter"] in adapters


def test_one_head_pushed_at_once_is_stored_once(embed_gateway: RunningGateway) -> None:
    same = random_head(["a", "b"], seed=1)
    for name in ("race-0", "race-1", "race-2"):
        statuses = at_once(lambda i, name=name: embed_gateway.admin("PUT", f"/heads/{name}", json=same))
        assert statuses.count(201) == 1 and set(statuses) <= {200, 201}, statuses
        assert len(embed_gateway.admin("GET", f"/heads/{name}").json()["versions"]) == 1
    heads = [random_head(["a", "b"], seed=10 + i) for i in range(WRITERS)]  # different contents
    statuses = at_once(lambda i: embed_gateway.admin("PUT", "/heads/many", json=heads[i]))
    assert set(statuses) <= {200, 201, 409} and 500 not in statuses, statuses
    assert embed_gateway.admin("GET", "/heads/many").status_code == 200


def test_one_adapter_uploaded_at_once_is_stored_once(gateway: RunningGateway, tmp_path: Path) -> None:
    folder = make_adapter(tmp_path / "same", seed=7)
    statuses = at_once(lambda i: upload(gateway, "raced", folder))
    assert set(statuses) <= {200, 201} and statuses.count(201) >= 1, statuses  # a thread that failed reads 0
    assert len(gateway.admin("GET", "/adapters/raced").json()["versions"]) == 1


def test_one_template_applied_at_once_is_one_version(gateway: RunningGateway) -> None:
    doc = json.dumps(SENTIMENT)
    statuses = at_once(lambda i: gateway.admin("PUT", "/templates/sent", content=doc))
    assert statuses.count(201) == 1 and set(statuses) <= {200, 201}, statuses
    assert [v["version"] for v in gateway.admin("GET", "/templates/sent").json()["versions"]] == [1]


def test_one_tenant_created_at_once_exists_once(gateway: RunningGateway) -> None:
    statuses = at_once(lambda i: gateway.admin("POST", "/tenants", json={"name": "twice"}))
    assert statuses == [201] + [409] * (WRITERS - 1)
