"""The audit trail: every admin mutation and every attempt at one is recorded (who,
what, on what, outcome, before/after versions, from where), reads are not, no key
ever reaches it, it filters, and the API cannot change it."""

from __future__ import annotations

import json

import httpx

from tests.helpers import (
    ADMIN_KEY,
    SENTIMENT,
    assert_openai_error,
    call_as,
    gateway_metric,
    tenant_admin_key,
    upload,
)


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
    invalid, missing = reversed(trail(gateway))  # the refused key is counted, not written
    assert (invalid["actor"], invalid["status"]) == ("operator", 400)
    assert (missing["tenant"], missing["status"]) == ("nobody", 404)
    assert gateway_metric(gateway, "adaptserve_admin_unauthenticated_total", status="401") == 1

    assert trail(gateway, actor="unauthenticated") == []
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


def test_a_tenant_created_again_reads_none_of_the_old_ones_entries(gateway) -> None:
    gateway.admin("POST", "/tenants", json={"name": "acme"})
    old = tenant_admin_key(gateway, "acme")
    assert call_as(gateway, old, "PUT", "/admin/tenants/acme/models/secret-alias", json={"base": True}).status_code
    gateway.admin("PUT", "/tenants/acme/models/other", json={"base": True})  # the operator, on the old acme
    gateway.admin("DELETE", "/tenants/acme")
    gateway.admin("POST", "/tenants", json={"name": "acme"})
    again = tenant_admin_key(gateway, "acme")
    seen = call_as(gateway, again, "GET", "/admin/audit", params={"limit": 1000}).json()["data"]
    assert seen  # its own key's creation
    assert "secret-alias" not in json.dumps(seen) and "/models/other" not in json.dumps(seen)
    assert not [e for e in seen if e["action"] == "DELETE /admin/tenants/{tenant}"]
    old_key_id = trail(gateway, action="PUT /admin/tenants/{tenant}/models")[-1]["actor"]
    assert old_key_id.startswith("acme/key_") and old_key_id not in json.dumps(seen)
    # The operator still reads both by name.
    assert len(trail(gateway, tenant="acme", action="PUT /admin/tenants/{tenant}/models")) == 2


def test_keyless_posts_to_unknown_admin_paths_are_throttled_and_not_written(start_gateway) -> None:
    gateway = start_gateway(auth_failures_per_minute=10)
    before = len(trail(gateway, limit=1000))
    # From another loopback address than the operator's reads below: the throttle is per address.
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=10) as attacker:
        statuses = [attacker.post(f"{gateway.url}/admin/nothing-{i}", json={}).status_code for i in range(50)]
        wrong = {"Authorization": "Bearer no"}
        bad_key = attacker.post(gateway.url + "/admin/tenants", json={"name": "x"}, headers=wrong)
    assert statuses == [401] * 10 + [429] * 40
    assert bad_key.status_code == 429
    assert len(trail(gateway, limit=1000)) == before  # counted, not written
    assert gateway_metric(gateway, "adaptserve_admin_unauthenticated_total", status="401") == 10
    assert gateway_metric(gateway, "adaptserve_admin_unauthenticated_total", status="429") == 41


def test_a_known_key_on_an_unknown_path_is_404_and_a_wrong_method_405(gateway) -> None:
    assert_openai_error(gateway.admin("POST", "/nothing"), 404, "not_found")
    assert_openai_error(gateway.admin("PATCH", "/tenants"), 405, "method_not_allowed")
    assert_openai_error(httpx.delete(gateway.url + "/admin/audit"), 401, "invalid_api_key")


def test_a_tenant_admin_reads_no_operator_addresses(gateway) -> None:
    gateway.admin("POST", "/tenants", json={"name": "acme"})
    acme = tenant_admin_key(gateway, "acme")
    gateway.admin("PUT", "/tenants/acme/models/m", json={"base": True})  # the operator acting on acme
    call_as(gateway, acme, "PUT", "/admin/tenants/acme/models/n", json={"base": True})  # acme itself
    seen = call_as(gateway, acme, "GET", "/admin/audit").json()["data"]
    by_operator = [e for e in seen if e["actor"] == "operator"]
    own = [e for e in seen if e["actor"].startswith("acme/")]
    assert by_operator and own
    assert all(e["address"] is None for e in by_operator)  # the operator's addresses are the operator's
    assert all(e["address"] == "127.0.0.1" for e in own)  # its own requests' addresses are its own
    assert "127.0.0.1" not in json.dumps(by_operator)
    assert all("tenant_uid" not in e for e in seen)
    assert {e["address"] for e in trail(gateway)} == {"127.0.0.1"}  # the operator reads them all


def test_the_upgrade_gives_existing_entries_the_uid_of_the_tenant_of_their_time(database_url, tmp_path) -> None:
    """Revision 0007: an entry written before the live tenant of its name existed was a
    deleted namesake's, and gets no uid (no tenant admin reads it); later ones, the live one's."""
    from sqlalchemy import text

    from adaptserve.db import Database

    db = Database.for_data_dir(database_url, tmp_path)
    db.migrate("0006")
    with db.engine.begin() as c:
        c.execute(text("INSERT INTO tenants (name, uid, created_at) VALUES ('acme', 'u-new', '2026-02-01')"))
        for at, tenant in (("2026-01-15", "acme"), ("2026-03-01", "acme"), ("2026-03-02", "")):
            c.execute(  # literals (typed by the database): a bound string is not a timestamp on PostgreSQL
                text(
                    "INSERT INTO audit_log (at, actor, action, target, tenant, status, address, detail)"
                    f" VALUES ('{at}', 'operator', 'POST /admin/x', '/admin/x', '{tenant}', 200, '10.0.0.1', '{{}}')"
                )
            )
    db.migrate()
    with db.engine.connect() as c:
        rows = c.execute(text("SELECT tenant, tenant_uid FROM audit_log ORDER BY at")).all()
    assert [tuple(r) for r in rows] == [("acme", ""), ("acme", "u-new"), ("", "")]
    db.dispose()
