"""Tenant admin keys: a tenant's admin manages its own keys, aliases, adapters,
templates and usage, reads only its own audit entries, inherits nothing of a deleted
namesake, and an admin key is not an API key, nor the reverse. (Every admin route tried
against another tenant's objects: test_tenant_admin_routes.py.)"""

from __future__ import annotations

import pytest

from tests.helpers import ADMIN_KEY, call_as, make_two_tenants, tenant_admin_key, upload


@pytest.fixture
def two_tenants(gateway, adapters) -> dict[str, str]:
    return make_two_tenants(gateway, adapters)


def test_a_tenant_admin_manages_its_own_tenant(gateway, two_tenants) -> None:
    acme = two_tenants["acme"]
    assert call_as(gateway, acme, "GET", "/admin/tenants").json()["data"][0]["name"] == "acme"
    assert len(call_as(gateway, acme, "GET", "/admin/tenants").json()["data"]) == 1
    names = {a["name"]: a["owner"] for a in call_as(gateway, acme, "GET", "/admin/adapters").json()["data"]}
    assert names == {"acme-ad": "acme", "alpha": None, "beta": None}  # its own and the global ones
    assert call_as(gateway, acme, "PUT", "/admin/tenants/acme/models/g", json={"adapter": "alpha"}).status_code == 200
    assert [t["owner"] for t in call_as(gateway, acme, "GET", "/admin/templates").json()["data"]] == ["acme"]
    reply = gateway.client(api_key=two_tenants["acme-api"]).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.model == "m"
    entries = call_as(gateway, acme, "GET", "/admin/audit").json()["data"]
    assert entries and {e["tenant"] for e in entries} == {"acme"}
    assert any(e["actor"].startswith("acme/key_") for e in entries)


def test_another_tenants_adapter_name_is_taken_not_shown(gateway, two_tenants, adapters) -> None:
    refused = upload(gateway, "globex-ad", adapters["alpha"], key=two_tenants["acme"])
    assert refused.status_code == 409 and refused.json()["error"]["param"] == "name"
    assert call_as(gateway, two_tenants["acme"], "GET", "/admin/usage").json()["data"] == []


def test_admin_keys_and_api_keys_do_not_stand_in_for_each_other(gateway, two_tenants) -> None:
    assert call_as(gateway, two_tenants["acme-api"], "GET", "/admin/tenants").status_code == 401
    assert call_as(gateway, two_tenants["acme"], "GET", "/v1/models").status_code == 401
    assert call_as(gateway, ADMIN_KEY, "GET", "/v1/models").status_code == 401
    bad = gateway.admin("POST", "/tenants/acme/keys", json={"role": "root"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "role"
    listed = gateway.admin("GET", "/tenants/acme/keys").json()["data"]
    assert sorted(k["role"] for k in listed) == ["admin", "api"]


def test_a_tenant_reads_only_what_concerns_it_in_the_audit_trail(gateway, two_tenants, adapters) -> None:
    acme, globex = two_tenants["acme"], two_tenants["globex"]
    assert call_as(gateway, globex, "DELETE", "/admin/tenants/acme/keys/key_x").status_code == 404  # aimed at acme
    seen_by_acme = call_as(gateway, acme, "GET", "/admin/audit", params={"limit": 1000}).json()["data"]
    assert not [e for e in seen_by_acme if e["actor"].startswith("globex/")]
    mine = call_as(gateway, globex, "GET", "/admin/audit").json()["data"][0]
    assert (mine["action"], mine["tenant"], mine["status"]) == (
        "DELETE /admin/tenants/{tenant}/keys/{key_id}",
        "globex",
        404,
    )
    assert upload(gateway, "acme-ad", adapters["beta"], key=acme).status_code == 201  # its own adapter's new version
    pushed = call_as(gateway, acme, "GET", "/admin/audit").json()["data"][0]
    assert (pushed["action"], pushed["tenant"]) == ("POST /admin/adapters", "acme")
    versions = call_as(gateway, acme, "GET", "/admin/adapters/alpha").json()["versions"]
    assert "upstreams" not in versions[0] and "error" not in versions[0]  # engine addresses are the operator's
    assert "upstreams" in gateway.admin("GET", "/adapters/alpha").json()["versions"][0]


def test_a_tenant_created_again_does_not_inherit_the_old_ones_adapters(gateway, two_tenants) -> None:
    gateway.admin("DELETE", "/tenants/acme")
    gateway.admin("POST", "/tenants", json={"name": "acme"})
    again = tenant_admin_key(gateway, "acme")
    assert call_as(gateway, again, "GET", "/admin/adapters/acme-ad").status_code == 404
    assert (
        call_as(gateway, again, "PUT", "/admin/tenants/acme/models/m", json={"adapter": "acme-ad"}).status_code == 404
    )
    assert gateway.admin("GET", "/adapters/acme-ad").json()["owner"] == "(a deleted tenant)"


def _versions(gateway, name: str) -> tuple[str | None, str | None, list[str]]:
    """An adapter's owner, active version and versions, as the operator sees them."""
    found = gateway.admin("GET", f"/adapters/{name}").json()
    return found["owner"], found["active_version"], [v["version"] for v in found["versions"]]


# (who uploads, under whose name): tenant first then operator, operator first then a
# tenant, one tenant then another. The name's owner keeps it whatever the weights.
SQUATS = [("operator", "acme-ad", "beta"), ("acme", "alpha", "beta"), ("globex", "acme-ad", "beta")]


@pytest.mark.parametrize(("uploader", "name", "weights"), SQUATS, ids=[f"{u} on {n}" for u, n, _ in SQUATS])
def test_an_upload_never_adds_a_version_to_someone_elses_name(gateway, two_tenants, adapters, uploader, name, weights):
    before = _versions(gateway, name)
    key = None if uploader == "operator" else two_tenants[uploader]
    refused = upload(gateway, name, adapters[weights], key=key)
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["param"]) == ("name_taken", "name")
    if uploader == "operator":
        assert "tenant acme" in error["message"]  # the operator is told who holds it
    else:
        assert "tenant" not in error["message"]  # a tenant learns only that the name is taken
    assert _versions(gateway, name) == before  # nothing added, the owner's versions intact
    reply = gateway.client(api_key=two_tenants["acme-api"]).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.model == "m"  # the owner's adapter still serves


def test_the_operator_derives_nothing_into_a_tenants_name(gateway, two_tenants) -> None:
    before = _versions(gateway, "acme-ad")
    refused = gateway.admin("POST", "/adapters/alpha/compress", json={"rank": 2, "name": "acme-ad"})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "name_taken"
    assert _versions(gateway, "acme-ad") == before


def test_a_tenant_admin_pins_only_released_versions_of_a_global_adapter(gateway, two_tenants, adapters) -> None:
    acme = two_tenants["acme"]
    staged = upload(gateway, "alpha", adapters["beta"]).json()  # the operator's new version, not activated
    assert staged["active_version"] != staged["version"]
    pin = {"adapter": "alpha", "version": staged["version"]}
    refused = call_as(gateway, acme, "PUT", "/admin/tenants/acme/models/next", json=pin)
    assert refused.status_code == 403 and refused.json()["error"]["param"] == "version", refused.text
    compress = {"rank": 2, "name": "mine", "version": staged["version"]}
    derived = call_as(gateway, acme, "POST", "/admin/adapters/alpha/compress", json=compress)
    assert derived.status_code == 403  # nor read through a derivation
    assert call_as(gateway, acme, "GET", "/admin/adapters/mine").status_code == 404
    assert "next" not in [a["alias"] for a in gateway.admin("GET", "/tenants/acme/models").json()["data"]]
    released = {"adapter": "alpha", "version": staged["active_version"]}
    assert call_as(gateway, acme, "PUT", "/admin/tenants/acme/models/now", json=released).status_code == 200
    assert gateway.admin("PUT", "/tenants/acme/models/next", json=pin).status_code == 200  # the operator may
    assert gateway.admin("POST", "/adapters/alpha/activate", json={"version": staged["version"]}).status_code == 200
    assert call_as(gateway, acme, "PUT", "/admin/tenants/acme/models/later", json=pin).status_code == 200


@pytest.mark.parametrize("allowed", [False, True])
def test_a_tenant_admin_makes_base_aliases_only_if_the_operator_allows(start_gateway, adapters, allowed) -> None:
    gateway = start_gateway(adapters=adapters, tenant_base_aliases=allowed)
    keys = make_two_tenants(gateway, adapters)
    response = call_as(gateway, keys["acme"], "PUT", "/admin/tenants/acme/models/raw", json={"base": True})
    aliases = [a["alias"] for a in gateway.admin("GET", "/tenants/acme/models").json()["data"]]
    if allowed:
        assert response.status_code == 200 and "raw" in aliases
    else:
        assert response.status_code == 403 and response.json()["error"]["code"] == "permission_denied"
        assert aliases == ["m"]
        body = {"model": "raw", "messages": [{"role": "user", "content": "x"}]}
        gone = gateway.post("/v1/chat/completions", body, key=keys["acme-api"])
        assert gone.status_code == 404
