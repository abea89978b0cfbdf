"""Every admin route, aimed with one tenant's admin key at another tenant's objects (or
at the operator's), answers as if they did not exist (404) or refuses (403), and
changes nothing. The cases change nothing, so they share one gateway per database."""

from __future__ import annotations

import json

import pytest

from tests.helpers import SENTIMENT, call_as, make_adapter, make_two_tenants


@pytest.fixture(scope="module")
def shared_tenants(shared_gateway, tmp_path_factory) -> dict[str, str]:
    """The same two tenants on the module's gateway, for the tests that change nothing."""
    root = tmp_path_factory.mktemp("tenant-adapters")
    adapters = {"alpha": make_adapter(root / "alpha", seed=1), "beta": make_adapter(root / "beta", seed=2)}
    return make_two_tenants(shared_gateway, adapters)


# Every admin route, aimed at globex's objects (or at the operator's), with acme's admin key.
OTHERS = [
    ("GET", "/admin/tenants/globex/keys", {}, 404),
    ("POST", "/admin/tenants/globex/keys", {"json": {"role": "admin"}}, 404),
    ("DELETE", "/admin/tenants/globex/keys/key_x", {}, 404),
    ("GET", "/admin/tenants/globex/models", {}, 404),
    ("PUT", "/admin/tenants/globex/models/m", {"json": {"base": True}}, 404),
    ("DELETE", "/admin/tenants/globex/models/m", {}, 404),
    ("PUT", "/admin/tenants/acme/models/x", {"json": {"adapter": "globex-ad"}}, 404),  # its adapter
    ("GET", "/admin/adapters/globex-ad", {}, 404),
    ("POST", "/admin/adapters/globex-ad/activate", {"json": {"version": "x"}}, 404),
    ("DELETE", "/admin/adapters/globex-ad", {}, 404),
    ("POST", "/admin/adapters/globex-ad/compress", {"json": {"rank": 2, "name": "mine"}}, 404),
    ("POST", "/admin/adapters/merge", {"json": {"name": "mine", "sources": [{"adapter": "globex-ad"}]}}, 404),
    ("POST", "/admin/adapters/alpha/compress", {"json": {"rank": 2}}, 409),  # into a global adapter
    ("POST", "/admin/adapters/acme-ad/compress", {"json": {"rank": 2, "name": "beta"}}, 409),  # into a global one
    ("POST", "/admin/adapters/alpha/activate", {"json": {"version": "x"}}, 403),  # global: the operator's
    ("DELETE", "/admin/adapters/alpha", {}, 403),
    ("POST", "/admin/adapters", {"json": {"name": "p", "path": "/etc"}}, 403),  # a server path
    ("GET", "/admin/templates/sent?tenant=globex", {}, 404),
    ("PUT", "/admin/templates/sent?tenant=globex", {"content": json.dumps(SENTIMENT)}, 404),
    ("POST", "/admin/templates/sent/activate?tenant=globex", {"json": {"version": 1}}, 404),
    ("DELETE", "/admin/templates/sent?tenant=globex", {}, 404),
    ("POST", "/admin/tenants", {"json": {"name": "new"}}, 403),
    ("DELETE", "/admin/tenants/globex", {}, 403),
    ("PUT", "/admin/tenants/acme/quotas", {"json": {"requests_per_minute": 1000}}, 403),
    ("GET", "/metrics", {}, 403),
]


@pytest.mark.parametrize(("method", "path", "kw", "status"), OTHERS, ids=[f"{m} {p}" for m, p, _, _ in OTHERS])
def test_a_tenant_admin_cannot_reach_another_tenant(shared_gateway, shared_tenants, method, path, kw, status) -> None:
    gateway = shared_gateway  # each case changes nothing (it checks so), so they share one
    before = snapshot(gateway)
    response = call_as(gateway, shared_tenants["acme"], method, path, **kw)
    assert response.status_code == status, response.text
    assert "globex-ad" not in response.text.replace("adapter globex-ad does not exist", "")
    assert snapshot(gateway) == before  # nothing of anyone's changed


def snapshot(gw) -> dict:
    """What the operator sees of every tenant (keys, aliases, templates, adapters)."""
    state = {"tenants": gw.admin("GET", "/tenants").json()["data"]}
    for tenant in ("acme", "globex"):
        state[tenant] = (
            [k["id"] for k in gw.admin("GET", f"/tenants/{tenant}/keys").json()["data"]],
            gw.admin("GET", f"/tenants/{tenant}/models").json()["data"],
            gw.admin("GET", "/templates/sent", params={"tenant": tenant}).json()["active_version"],
        )
    state["adapters"] = [(a["name"], a["active_version"]) for a in gw.admin("GET", "/adapters").json()["data"]]
    return state
