"""The admin CLI drives the same API: each command is one HTTP call."""

from __future__ import annotations

import json

import pytest

from adaptserve.cli import main
from tests.helpers import ADMIN_KEY, make_adapter


def run(gw, capsys, *argv: str) -> tuple[int, object]:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--url", gw.url, "--admin-key", ADMIN_KEY])
    out = capsys.readouterr().out
    return done.value.code, (json.loads(out) if out.strip() else None)


def test_cli_round_trip(gateway, fake, capsys, tmp_path):
    assert run(gateway, capsys, "tenants", "create", "acme")[0] == 0
    code, created = run(gateway, capsys, "keys", "create", "acme")
    assert code == 0 and created["key"].startswith("sk-as-") and created["role"] == "api"
    code, admin = run(gateway, capsys, "keys", "create", "acme", "--admin")
    assert code == 0 and admin["role"] == "admin"
    assert gateway.admin("GET", "/tenants", key=admin["key"]).json()["data"][0]["name"] == "acme"
    code, pushed = run(gateway, capsys, "adapters", "push", str(make_adapter(tmp_path / "s1", seed=3)), "--name", "s")
    assert code == 0 and pushed["active_version"] == pushed["version"]
    _, second = run(
        gateway, capsys, "adapters", "push", str(make_adapter(tmp_path / "s2", seed=4)), "--name", "s", "--server-path"
    )
    assert run(gateway, capsys, "models", "set", "acme", "support", "--adapter", "s")[0] == 0
    client = gateway.client(api_key=created["key"])
    client.chat.completions.create(model="support", messages=[{"role": "user", "content": "x"}])
    assert fake.requests[-1]["model"] == f"s--{pushed['version']}"
    assert run(gateway, capsys, "adapters", "activate", "s", second["version"])[0] == 0
    client.chat.completions.create(model="support", messages=[{"role": "user", "content": "x"}])
    assert fake.requests[-1]["model"] == f"s--{second['version']}"
    code, refused = run(gateway, capsys, "adapters", "delete", "s")
    assert code == 1 and refused["error"]["type"] == "invalid_request_error"  # 409: acme/support uses it
    assert run(gateway, capsys, "models", "delete", "acme", "support")[0] == 0
    assert run(gateway, capsys, "adapters", "delete", "s")[0] == 0
    assert run(gateway, capsys, "adapters", "show", "s")[0] == 1


def test_cli_lists_the_audit_trail(gateway, capsys):
    assert run(gateway, capsys, "tenants", "create", "acme")[0] == 0
    assert run(gateway, capsys, "tenants", "delete", "acme")[0] == 0
    code, entries = run(gateway, capsys, "audit", "list", "--action", "DELETE", "--tenant", "acme")
    assert code == 0 and [(e["action"], e["status"]) for e in entries] == [("DELETE /admin/tenants/{tenant}", 204)]
    code, entries = run(gateway, capsys, "audit", "list", "--limit", "1")
    assert code == 0 and [e["action"] for e in entries] == ["DELETE /admin/tenants/{tenant}"]


def test_cli_compresses_and_merges_adapters(gateway, capsys):
    code, small = run(gateway, capsys, "adapters", "compress", "alpha", "--rank", "2", "--as", "alpha-r2")
    assert code == 0 and small["rank"] == 2 and small["fidelity"]["rank_max"] == 2
    alpha = gateway.admin("GET", "/adapters/alpha").json()["active_version"]
    code, mixed = run(
        gateway, capsys, "adapters", "merge", "mix", f"alpha@{alpha}=0.25", "beta", "--method", "ties", "--rank", "3"
    )
    assert code == 0 and mixed["rank"] == 3 and mixed["name"] == "mix"
    assert gateway.admin("GET", "/adapters/mix").json()["versions"][0]["rank"] == 3
    code, refused = run(gateway, capsys, "adapters", "compress", "alpha", "--energy", "2")
    assert code == 1 and refused["error"]["param"] == "energy"
    with pytest.raises(SystemExit) as bad:
        main(["adapters", "merge", "mix", "alpha=heavy", "--url", gateway.url, "--admin-key", ADMIN_KEY])
    assert "WEIGHT" in str(bad.value.code)
