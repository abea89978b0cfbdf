"""Tenants, keys, aliases and adapter versions through the admin API; isolation
between tenants; state that survives a restart."""

from __future__ import annotations

import io
import tarfile
import zipfile

import httpx
import openai
import pytest

from tests.helpers import API_KEY, make_adapter, new_tenant, tar_gz, tenant_admin_key, upload

Q = [{"role": "user", "content": "hi"}]


def served_by(fake) -> str:
    return fake.requests[-1]["model"]


def push(gw, name: str, folder) -> dict:
    response = gw.admin("POST", "/adapters", json={"name": name, "path": str(folder)})
    assert response.status_code == 201, response.text
    return response.json()


@pytest.mark.parametrize("key", [None, "wrong", API_KEY])
def test_admin_routes_need_the_admin_key(gateway, key):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx.get(gateway.url + "/admin/tenants", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_tenant_and_key_lifecycle(gateway):
    assert gateway.admin("POST", "/tenants", json={"name": "acme"}).status_code == 201
    assert gateway.admin("POST", "/tenants", json={"name": "acme"}).status_code == 409
    assert gateway.admin("POST", "/tenants", json={"name": "bad/name"}).json()["error"]["param"] == "name"
    assert gateway.admin("POST", "/tenants", json={"nom": "x"}).status_code == 400
    created = gateway.admin("POST", "/tenants/acme/keys").json()
    keys = gateway.admin("GET", "/tenants/acme/keys").json()["data"]
    assert [k["id"] for k in keys] == [created["id"]] and created["key"] not in str(keys)
    client = gateway.client(api_key=created["key"])
    assert client.models.list().data == []  # a new tenant sees nothing until given models
    assert gateway.admin("DELETE", f"/tenants/acme/keys/{created['id']}").status_code == 204
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    second = gateway.client(api_key=gateway.admin("POST", "/tenants/acme/keys").json()["key"])
    second.models.list()
    assert gateway.admin("DELETE", "/tenants/acme").status_code == 204
    with pytest.raises(openai.AuthenticationError):  # its keys stop working at once
        second.models.list()
    assert gateway.admin("DELETE", "/tenants/acme").status_code == 404


def test_isolation_between_tenants(gateway, fake, tmp_path):
    a, b = new_tenant(gateway, "a"), new_tenant(gateway, "b")
    va = push(gateway, "a-support", make_adapter(tmp_path / "a", seed=10))["version"]
    push(gateway, "b-support", make_adapter(tmp_path / "b", seed=11))
    gateway.admin("PUT", "/tenants/a/models/support", json={"adapter": "a-support"})
    gateway.admin("PUT", "/tenants/b/models/support", json={"adapter": "b-support"})
    gateway.admin("PUT", "/tenants/b/models/only-b", json={"adapter": "b-support"})

    a.chat.completions.create(model="support", messages=Q)
    assert served_by(fake).startswith("a-support--")
    b.chat.completions.create(model="support", messages=Q)
    assert served_by(fake).startswith("b-support--")
    assert [m.id for m in a.models.list()] == ["support"]
    usage = httpx.get(gateway.url + "/v1/usage", headers={"Authorization": f"Bearer {a.api_key}"}).json()["data"]
    assert {(r["tenant"], r["model"]) for r in usage} == {("a", "support")}
    for name in (
        "only-b",
        "b-support",
        "a-support",
        f"a-support--{va}",
        va,
        "default",
        "tiny-base",
        "support--x",
        "alpha",
    ):
        with pytest.raises(openai.NotFoundError) as err:
            a.chat.completions.create(model=name, messages=Q)
        assert err.value.body == {
            "message": f"The model '{name}' does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }


def test_uploads_version_by_content(gateway, tmp_path):
    v1 = make_adapter(tmp_path / "v1", seed=1)
    first = gateway.admin(
        "POST", "/adapters", data={"name": "up"}, files={"file": ("a.tar.gz", tar_gz(v1), "application/gzip")}
    ).json()
    again = gateway.admin("POST", "/adapters", json={"name": "up", "path": str(v1)}).json()
    assert first["version"] == again["version"] == first["active_version"]
    buf = io.BytesIO()
    v2 = make_adapter(tmp_path / "v2", seed=2)
    with zipfile.ZipFile(buf, "w") as zf:
        for f in v2.iterdir():
            zf.write(f, f.name)
    second = gateway.admin("POST", "/adapters", data={"name": "up"}, files={"file": ("a.zip", buf.getvalue())}).json()
    assert second["version"] != first["version"] and second["active_version"] == first["version"]
    described = gateway.admin("GET", "/adapters/up").json()
    assert [v["version"] for v in described["versions"]] == [first["version"], second["version"]]


def _evil_tar(kind: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in _evil_members(kind):
            tar.addfile(info, data)
    return buf.getvalue()


def _evil_members(kind: str) -> list[tuple[tarfile.TarInfo, io.BytesIO | None]]:
    def plain(name: str) -> tuple[tarfile.TarInfo, io.BytesIO]:
        info = tarfile.TarInfo(name)
        info.size = 2
        return info, io.BytesIO(b"hi")

    if kind == "many":
        return [plain(f"f{i}.txt") for i in range(70)]
    if kind in ("traversal", "absolute"):
        return [plain("../escape.txt" if kind == "traversal" else "/etc/cron.d/x")]
    info = tarfile.TarInfo("link")
    if kind == "device":
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    else:
        info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
        info.linkname = "/etc/passwd"
    return [(info, None)]


def _evil_zip(kind: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        if kind == "symlink":
            info = zipfile.ZipInfo("adapter_model.safetensors")
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "/etc/passwd")
        else:  # a bomb: 50 MB of zeros in a few kilobytes
            zf.writestr("adapter_model.safetensors", b"\0" * 50_000_000)
    return buf.getvalue()


BAD_UPLOADS = [  # (case, filename, content, status)
    ("path traversal", "x.tar.gz", lambda d: _evil_tar("traversal"), 400),
    ("symlink", "x.tar.gz", lambda d: _evil_tar("symlink"), 400),
    ("absolute path", "x.tar.gz", lambda d: _evil_tar("absolute"), 400),
    ("hard link", "x.tar.gz", lambda d: _evil_tar("hardlink"), 400),
    ("device", "x.tar.gz", lambda d: _evil_tar("device"), 400),
    ("too many files", "x.tar.gz", lambda d: _evil_tar("many"), 400),
    ("zip symlink", "x.zip", lambda d: _evil_zip("symlink"), 400),
    ("zip bomb", "x.zip", lambda d: _evil_zip("bomb"), 413),
    ("not an archive", "x.tar.gz", lambda d: b"not a tarball", 400),
    ("unknown type", "x.rar", lambda d: b"whatever", 400),
    ("pickle weights", "x.tar.gz", lambda d: tar_gz(d["pickle"]), 400),
    ("rank too high", "x.tar.gz", lambda d: tar_gz(d["rank"]), 400),
    ("wrong base", "x.tar.gz", lambda d: tar_gz(d["wrong"]), 400),
    ("too large", "x.tar.gz", lambda d: b"x" * 300_000, 413),
    ("not a PEFT folder", "x.tar.gz", lambda d: tar_gz(d["plain"]), 400),
    ("AdaLoRA", "x.tar.gz", lambda d: tar_gz(d["adalora"]), 400),
    ("modules_to_save", "x.tar.gz", lambda d: tar_gz(d["save"]), 400),
    ("lm_head target", "x.tar.gz", lambda d: tar_gz(d["head"]), 400),
]


@pytest.mark.parametrize(("case", "filename", "content", "status"), BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
def test_bad_uploads_are_refused_and_leave_nothing(start_gateway, tmp_path, case, filename, content, status):
    gw = start_gateway(max_adapter_bytes=200_000)
    pickle = make_adapter(tmp_path / "pickle")
    (pickle / "adapter_model.safetensors").rename(pickle / "adapter_model.bin")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "README.md").write_text("not an adapter")
    folders = {
        "pickle": pickle,
        "rank": make_adapter(tmp_path / "rank", r=64),
        "wrong": make_adapter(tmp_path / "wrong", hidden=48),
        "plain": plain,
        "adalora": make_adapter(tmp_path / "ada", peft_type="ADALORA"),
        "save": make_adapter(tmp_path / "save", modules_to_save=["score"]),
        "head": make_adapter(tmp_path / "head", target_modules=["q_proj", "lm_head"]),
    }
    store = gw.settings.data_dir / "adapters"
    before = sorted(p.name for p in store.iterdir())
    response = gw.admin("POST", "/adapters", data={"name": "bad"}, files={"file": (filename, content(folders))})
    assert response.status_code == status, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert sorted(p.name for p in store.iterdir()) == before
    assert gw.admin("GET", "/adapters/bad").status_code == 404


def test_restart_keeps_tenants_keys_adapters_and_aliases(start_gateway, fake, tmp_path):
    gw = start_gateway()
    key = new_tenant(gw, "persist").api_key
    push(gw, "kept", make_adapter(tmp_path / "k", seed=5))
    gw.admin("PUT", "/tenants/persist/models/mine", json={"adapter": "kept"})
    gw.server.stop()
    fake.restart()
    again = start_gateway()
    reply = again.client(api_key=key).chat.completions.create(model="mine", messages=Q)
    assert reply.model == "mine" and served_by(fake).startswith("kept--")


def test_a_settings_adapter_never_joins_a_tenants_name(start_gateway, fake, tmp_path):
    """A tenant admin took the name before the operator listed it in the settings file:
    at the restart the settings' weights are not added (and activated) under the
    tenant's name, and the default tenant gets no alias to the tenant's adapter (before:
    the start-up failed on that alias)."""
    gw = start_gateway()
    assert gw.admin("POST", "/tenants", json={"name": "acme"}).status_code == 201
    squat = upload(gw, "gamma", make_adapter(tmp_path / "theirs", seed=7), key=tenant_admin_key(gw, "acme"))
    assert squat.status_code == 201
    before = gw.admin("GET", "/adapters/gamma").json()
    gw.server.stop()
    fake.restart()
    again = start_gateway(adapters={"gamma": make_adapter(tmp_path / "operators", seed=8)})
    assert again.admin("GET", "/adapters/gamma").json() == before  # still acme's, its one version active
    assert "gamma" not in [m.id for m in again.client().models.list().data]
    with pytest.raises(openai.NotFoundError):
        again.client().chat.completions.create(model="gamma", messages=Q)
