"""The audit trail: every admin mutation and every attempt at one is recorded (who,
what, on what, outcome, before/after versions, from where), reads are not, no key
ever reaches it, it filters, and the API cannot change it."""

from __future__ import annotations

import json

import httpx

from tests.helpers import ADMIN_KEY, SENTIMENT, upload


def trail(gw, **params) -> list[dict]:
    response = gw.admin("GET", "/audit", params=params)
    assert response.status_code == 200
    return response.json()["data"]


def test_every_admin_mutation_is_recorded_with_its_outcome(gateway, adapters) -> None:
    gateway.admin("POST", "/tenants", json={"name": "acme"})
    key = gateway.admin("POST", "/tenants/acme/keys").json()
    gateway.admin("PUT", "/tenants/acme/models/m", json={"base": True})
    gateway.admin("PUT", "/tenants/acme/models/m", json={"adapter": "alpha"})
    gateway.admin("PUT", "/tenants/acme/quotas", json={"requests_per_minute": 5})
    pushed = upload(gateway, "alpha", adapters["beta"]).json()["version"]  # a second version of alpha
    first = gateway.admin("GET", "/adapters/alpha").json()["active_version"]
    gateway.admin("POST", "/adapters/alpha/activate", json={"version": pushed})
    gateway.admin("PUT", "/templates/sent", params={"tenant": "acme"}, content=json.dumps(SENTIMENT))
    gateway.admin("DELETE", f"/tenants/acme/keys/{key['id']}")
    gateway.admin("GET", "/tenants")  # a read: not recorded

    entries = list(reversed(trail(gateway)))
    assert [(e["action"], e["status"]) for e in entries] == [
        ("POST /admin/tenants", 201),
        ("POST /admin/tenants/{tenant}/keys", 201),
        ("PUT /admin/tenants/{tenant}/models/{alias}", 200),
        ("PUT /admin/tenants/{tenant}/models/{alias}", 200),
        ("PUT /admin/tenants/{tenant}/quotas", 200),
        ("POST /admin/adapters", 201),
        ("POST /admin/adapters/{name}/activate", 200),
        ("PUT /admin/templates/{name}", 201),
        ("DELETE /admin/tenants/{tenant}/keys/{key_id}", 204),
    ]
    assert {e["actor"] for e in entries} == {"operator"} and {e["address"] for e in entries} == {"127.0.0.1"}
    assert [e["tenant"] for e in entries] == [None, *["acme"] * 4, None, None, "acme", "acme"]
    assert entries[2]["detail"] == {"before": None, "after": "base"}
    assert entries[3]["detail"] == {"before": "base", "after": "alpha"}
    assert entries[5]["detail"] == {"after": pushed}
    assert entries[6]["detail"] == {"before": first, "after": pushed}
    assert entries[6]["target"] == "/admin/adapters/alpha/activate"
    everything = json.dumps(trail(gateway, limit=1000))
    assert key["key"] not in everything and ADMIN_KEY not in everything  # never a key


def test_refused_attempts_are_recorded_and_the_trail_filters(gateway) -> None:
    headers = {"Authorization": "Bearer wrong"}
    assert httpx.post(gateway.url + "/admin/tenants", json={"name": "x"}, headers=headers).status_code == 401
    assert gateway.admin("POST", "/tenants", json={"name": "bad name!"}).status_code == 400
    assert gateway.admin("DELETE", "/tenants/nobody").status_code == 404
    refused, invalid, missing = reversed(trail(gateway))
    assert (refused["actor"], refused["status"]) == ("unauthenticated", 401)
    assert (invalid["actor"], invalid["status"]) == ("operator", 400)
    assert (missing["tenant"], missing["status"]) == ("nobody", 404)

    assert [e["status"] for e in trail(gateway, actor="unauthenticated")] == [401]
    assert [e["status"] for e in trail(gateway, action="DELETE")] == [404]
    assert [e["status"] for e in trail(gateway, tenant="nobody")] == [404]
    assert len(trail(gateway, limit=2)) == 2
    assert trail(gateway, since="2999-01-01T00:00:00Z") == []
    assert gateway.admin("GET", "/audit", params={"limit": 0}).status_code == 400


def test_the_api_cannot_change_the_trail(gateway) -> None:
    gateway.admin("POST", "/tenants", json={"name": "acme"})
    before = trail(gateway)
    for method in ("DELETE", "PUT", "POST", "PATCH"):
        assert gateway.admin(method, "/audit").status_code == 405
    after = trail(gateway)
    assert after[len(after) - len(before) :] == before  # nothing changed; the attempts were added
    assert [e["status"] for e in after[: len(after) - len(before)]] == [405] * 4
