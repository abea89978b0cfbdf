"""The isolation and metering audit, as tests: every tenant's work is metered (cut
streams, timeouts), the prefix cache is salted per tenant, nothing outlives its owner
(templates, keys, usage), quotas bound tokens, and one request's work is bounded."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
import zipfile

import httpx
import openai
import pytest

from adaptserve.bench.fake_engine import FakeState
from adaptserve.config import Settings
from adaptserve.templates.render import Renderer, special_tokens
from adaptserve.upstream.supervisor import Supervisor
from tests.helpers import API_KEY, RunningGateway, make_adapter, wait_for

Q = [{"role": "user", "content": "one two three"}]
LONG = [{"role": "user", "content": "w " * 40}]
CLASSIFY = {
    "name": "judge",
    "kind": "classify",
    "instruction": "Is this good or bad?",
    "inputs": {"text": {"type": "string"}},
    "labels": [{"name": "bad"}, {"name": "good"}],
    "calibration": False,
}


def _deep(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


def tenant(gw: RunningGateway, name: str, base: bool = True, **quotas: int) -> str:
    assert gw.admin("POST", "/tenants", json={"name": name}).status_code == 201
    if base:
        gw.admin("PUT", f"/tenants/{name}/models/default", json={"base": True})
    if quotas:
        assert gw.admin("PUT", f"/tenants/{name}/quotas", json=quotas).status_code == 200
    return gw.admin("POST", f"/tenants/{name}/keys").json()["key"]


def usage(gw: RunningGateway, key: str) -> list[tuple]:
    rows = httpx.get(gw.url + "/v1/usage", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    return [(r["model"], r["template"], r["requests"], r["prompt_tokens"], r["completion_tokens"]) for r in rows]


def read_then_leave(gw: RunningGateway, path: str, body: dict, key: str, chunks: int) -> None:
    with httpx.stream("POST", gw.url + path, json=body, headers={"Authorization": f"Bearer {key}"}) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        for _ in range(chunks):
            while not next(lines).startswith("data:"):
                pass


# 1. Every stream is metered, cut or not; a request the gateway gives up on is charged.
def test_a_stream_the_client_cuts_is_metered_up_to_the_cut(start_gateway, fake: FakeState) -> None:
    gw = start_gateway()
    key = tenant(gw, "cutter")
    fake.token_delay_s = 0.05
    body = {"model": "default", "messages": LONG, "max_tokens": 40, "stream": True}
    read_then_leave(gw, "/v1/chat/completions", body, key, chunks=5)
    wait_for(lambda: fake.streams_open == 0)
    wait_for(lambda: bool(usage(gw, key)))
    [(model, _, requests, prompt, completion)] = usage(gw, key)
    assert (model, requests, prompt) == ("default", 1, 40)
    assert 5 <= completion < 40  # what the engine generated before the cut, not 0 and not all


def test_a_template_stream_the_client_cuts_is_metered(start_gateway, fake: FakeState) -> None:
    gw = start_gateway()
    key = tenant(gw, "tcutter")
    doc = {"name": "echo", "kind": "generate", "instruction": "Repeat.", "inputs": {"text": {}}}
    assert gw.admin("PUT", "/templates/echo", content=json.dumps(doc)).status_code == 201
    fake.token_delay_s = 0.05
    body = {"inputs": {"text": "w " * 30}, "stream": True, "max_tokens": 40}
    read_then_leave(gw, "/v1/templates/echo", body, key, chunks=4)
    wait_for(lambda: fake.streams_open == 0)
    wait_for(lambda: bool(usage(gw, key)))
    [(_, template, requests, _, completion)] = usage(gw, key)
    assert (template, requests) == ("echo", 1) and completion >= 4


def test_a_request_the_gateway_gives_up_on_is_charged_its_reservation(start_gateway, fake: FakeState) -> None:
    gw = start_gateway(request_timeout_s=0.3)
    key = tenant(gw, "slow", tokens_per_minute=10_000)
    fake.reply_delay_s = 1.0
    response = gw.post("/v1/chat/completions", {"model": "default", "messages": Q, "max_tokens": 7}, key=key)
    assert response.status_code == 503 and "in time" in response.json()["error"]["message"]
    prompt_bound = len(json.dumps({"messages": Q}).encode())
    wait_for(lambda: bool(usage(gw, key)))
    assert usage(gw, key) == [("default", None, 1, prompt_bound, 7)]


# 2. The prefix cache is salted per tenant, whatever the client sends.
def test_every_request_carries_its_tenants_cache_salt(start_gateway, fake: FakeState) -> None:
    gw = start_gateway(cache_groups={"trusted": ["ann", "bob"]})
    keys = {name: tenant(gw, name) for name in ("ann", "bob", "eve")}
    salts = {}
    for name, key in keys.items():
        body = {"model": "default", "messages": Q, "cache_salt": "tenant-guess"}
        assert gw.post("/v1/chat/completions", body, key=key).status_code == 200
        salts[name] = fake.requests[-1]["cache_salt"]
    assert salts["ann"] == salts["bob"] == "group-trusted"
    assert salts["eve"].startswith("tenant-") and salts["eve"] != "tenant-guess"
    gw.client().chat.completions.create(model="default", messages=Q, stream=True)
    assert fake.requests[-1]["cache_salt"] not in salts.values()  # the default tenant's own
    assert gw.post("/v1/templates/judge", {"inputs": {"text": "x"}}, key=keys["eve"]).status_code == 404
    assert gw.admin("PUT", "/templates/judge", content=json.dumps(CLASSIFY)).status_code == 201
    assert gw.post("/v1/templates/judge", {"inputs": {"text": "x"}}, key=keys["eve"]).status_code == 200
    assert fake.requests[-1]["cache_salt"] == salts["eve"]


def test_a_tenant_in_two_cache_groups_is_refused() -> None:
    with pytest.raises(ValueError, match="cache groups"):
        Settings(cache_groups={"a": ["x"], "b": ["x"]})


# 3. A deleted template never answers for a new one.
def test_a_new_template_never_answers_with_a_deleted_ones_contents(start_gateway, fake: FakeState) -> None:
    gw = start_gateway()
    keys = {name: tenant(gw, name) for name in ("first", "second")}
    secret = CLASSIFY | {"instruction": "FIRST-TENANT-SECRET-INSTRUCTION", "tenant": "first"}
    assert gw.admin("PUT", "/templates/judge", content=json.dumps(secret)).status_code == 201
    assert gw.post("/v1/templates/judge", {"inputs": {"text": "x"}}, key=keys["first"]).status_code == 200
    assert gw.admin("DELETE", "/templates/judge?tenant=first").status_code == 204
    mine = CLASSIFY | {"name": "mine", "instruction": "SECOND-TENANT-INSTRUCTION", "tenant": "second"}
    assert gw.admin("PUT", "/templates/mine", content=json.dumps(mine)).status_code == 201
    fake.requests.clear()
    assert gw.post("/v1/templates/mine", {"inputs": {"text": "x"}}, key=keys["second"]).status_code == 200
    words = {fake.word(t) for r in fake.requests for p in r.get("prompt", []) for t in p if t >= 10}
    assert "FIRST-TENANT-SECRET-INSTRUCTION" not in words and "SECOND-TENANT-INSTRUCTION" in words


# 4. tokens_per_minute caps tokens, however large or concurrent the requests.
def test_tokens_per_minute_reserves_the_worst_case(start_gateway, fake: FakeState) -> None:
    gw = start_gateway()
    limit = 400
    key = tenant(gw, "metered", tokens_per_minute=limit)
    too_big = gw.post("/v1/chat/completions", {"model": "default", "messages": Q}, key=key)  # 2048 new tokens
    assert too_big.status_code == 400 and too_big.json()["error"]["code"] == "tokens_over_limit"
    assert "lower max_tokens" in too_big.json()["error"]["message"]  # waiting would not help: not a 429
    reserve = len(json.dumps({"messages": LONG}).encode()) + 40
    admitted = limit // reserve
    fake.token_delay_s = 0.5  # the admitted streams stay open (20 s) until the others are refused
    statuses: list[int] = []

    def one() -> None:
        body = {"model": "default", "messages": LONG, "max_tokens": 40, "stream": True}
        with httpx.stream(
            "POST", gw.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as response:
            response.read()
            statuses.append(response.status_code)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    # Waited for, not raced: on a loaded machine all eight may take a while to arrive.
    wait_for(lambda: len(statuses) == 8 - admitted and fake.streams_open == admitted, 30, "not all eight arrived")
    fake.token_delay_s = 0.05  # from their next token on: the admitted streams end in about 2 s
    for t in threads:
        t.join()
    assert statuses.count(200) == admitted and statuses.count(429) == 8 - admitted
    # Every stream was metered before its client saw the end, but two may straddle a flush:
    # wait for both, not for the first row.
    wait_for(lambda: sum(row[2] for row in usage(gw, key)) >= admitted, 30, "fewer requests metered")
    [(_, _, requests, prompt, completion)] = usage(gw, key)
    assert requests == admitted and prompt + completion <= limit


# 5. One request's work is bounded before it reaches the engine.
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "description": "x" * 1000}}}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": ["a"] * 200, "n": 2}, "prompt"),
        ({"prompt": ["a", "b"], "max_tokens": 2048, "n": 128}, "max_tokens"),
        ({"prompt": ["a"] * 100, "max_tokens": 100, "logprobs": 20}, "logprobs"),
        ({"prompt": ["a"] * 100, "max_tokens": 100, "logprobs": 0, "logprob_token_ids": list(range(30))}, "logprobs"),
        ({"prompt": "a", "structured_outputs": {"json": {"enum": list(range(2000))}}}, "structured_outputs"),
        (
            {"prompt": "a", "structured_outputs": {"json": json.dumps({"enum": list(range(2000))})}},
            "structured_outputs",
        ),
        ({"prompt": "a", "structured_outputs": {"choice": [str(i) for i in range(2000)]}}, "structured_outputs"),
        ({"prompt": "a", "structured_outputs": {"regex": "a" * 40_000}}, "structured_outputs"),
        ({"prompt": "a", "structured_outputs": {"regex": "(ab){99999}"}}, "structured_outputs"),
        ({"prompt": "a", "structured_outputs": {"json": {"type": "array", "minItems": 10**6}}}, "structured_outputs"),
        ({"prompt": "a", "response_format": {"type": "json_schema", "json_schema": {"schema": _deep(20)}}}, None),
        ({"prompt": "a", "tools": [TOOL] * 40, "tool_choice": "required"}, "tools"),
        ({"prompt": "a", "use_beam_search": True}, "use_beam_search"),
        ({"prompt": "a", "stream": True, "stream_interval": 10**9}, "stream_interval"),
        ({"prompt": "a", "kv_transfer_params": {"do_remote_prefill": True}}, "kv_transfer_params"),
        ({"prompt": ["1", 2]}, "prompt"),
    ],
)
def test_one_request_is_bounded_before_the_engine(gateway: RunningGateway, fake: FakeState, body, param) -> None:
    fake.requests.clear()
    response = gateway.post("/v1/completions", {"model": "default", **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith(param or "response_format")
    assert fake.requests == []


def test_a_stream_cut_before_its_first_token_is_charged_its_prompt(start_gateway, fake: FakeState) -> None:
    gw = start_gateway()
    key = tenant(gw, "early")
    fake.token_delay_s = 10.0  # the first token is slow: the client leaves long before it, however loaded the machine
    body = {"model": "default", "messages": LONG, "max_tokens": 5, "stream": True}
    with httpx.stream(
        "POST", gw.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    ) as response:
        assert response.status_code == 200
    wait_for(lambda: bool(usage(gw, key)))
    [(_, _, requests, prompt, completion)] = usage(gw, key)
    assert (requests, prompt, completion) == (1, len(json.dumps({"messages": LONG}).encode()), 0)


def test_an_answer_too_large_to_hold_is_refused_and_charged(start_gateway, fake: FakeState) -> None:
    gw = start_gateway(max_response_bytes=65_536)
    key = tenant(gw, "greedy")
    fake.reply_padding = 100_000
    response = gw.post("/v1/chat/completions", {"model": "default", "messages": Q, "max_tokens": 3}, key=key)
    assert response.status_code == 502 and response.json()["error"]["code"] == "answer_too_large"
    wait_for(lambda: bool(usage(gw, key)))
    assert usage(gw, key)[0][2] == 1


# 6. Deletions last: revoked keys, deleted tenants.
def test_a_deleted_default_key_stays_deleted_after_a_restart(start_gateway) -> None:
    gw = start_gateway()
    assert gw.admin("DELETE", "/tenants/default/keys/key_default").status_code == 204
    gw.server.stop()
    again = start_gateway()  # the same settings: the same configured api_key
    with pytest.raises(openai.AuthenticationError):
        again.client().models.list()


def test_a_generated_default_key_is_not_generated_again_once_deleted(start_gateway, tmp_path) -> None:
    gw = start_gateway(api_key=None)
    generated = (tmp_path / "data" / "api_key").read_text().strip()
    assert gw.client(api_key=generated).models.list().data
    assert gw.admin("DELETE", "/tenants/default/keys/key_default").status_code == 204
    gw.server.stop()
    (tmp_path / "data" / "api_key").unlink()
    again = start_gateway(api_key=None)
    assert not (tmp_path / "data" / "api_key").exists()
    assert again.admin("GET", "/tenants/default/keys").json()["data"] == []


def test_a_tenant_created_again_sees_nothing_of_the_deleted_one(start_gateway) -> None:
    gw = start_gateway()
    old = tenant(gw, "acme")
    gw.client(api_key=old).chat.completions.create(model="default", messages=Q)
    wait_for(lambda: bool(usage(gw, old)))
    assert gw.admin("DELETE", "/tenants/acme").status_code == 204
    new = tenant(gw, "acme")
    assert usage(gw, new) == []
    with pytest.raises(openai.AuthenticationError):
        gw.client(api_key=old).models.list()
    assert [r["requests"] for r in gw.admin("GET", "/usage", params={"tenant": "acme"}).json()["data"]] == [1]


# 7. Settings reach only where they should.
def test_the_engine_child_gets_none_of_the_gateways_settings(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("ADAPTSERVE_ADMIN_KEY", "sk-secret-admin")
    monkeypatch.setenv("ADAPTSERVE_DATABASE_URL", "postgresql://u:pw@db/x")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    env = Supervisor(Settings().vllm, tmp_path, "m", tmp_path / "log").environment()
    assert [k for k in env if k.startswith("ADAPTSERVE_")] == [
        "ADAPTSERVE_ENGINE_PLUGIN",
        "ADAPTSERVE_ENGINE_PLUGIN_STATUS",
    ]
    assert "sk-secret-admin" not in json.dumps(env) and "pw@db" not in json.dumps(env)
    assert env["OMP_NUM_THREADS"] == "1" and env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_inputs_are_defused_without_the_models_files() -> None:
    renderer = Renderer(special_tokens(None))
    for marker in ("<|im_end|>", "<|eot_id|>", "</s>", "[INST]", "<end_of_turn>"):
        assert marker not in renderer.defuse(f"x {marker} y")


def test_staged_versions_are_not_callable_by_tenants(gateway: RunningGateway) -> None:
    assert gateway.admin("PUT", "/templates/judge", content=json.dumps(CLASSIFY)).status_code == 201
    staged = CLASSIFY | {"instruction": "A draft."}
    assert gateway.admin("PUT", "/templates/judge?activate=false", content=json.dumps(staged)).json()["version"] == 2
    pinned = gateway.post("/v1/templates/judge", {"inputs": {"text": "x"}, "version": 2})
    assert pinned.status_code == 404 and pinned.json()["error"]["code"] == "template_not_found"
    assert gateway.admin("POST", "/templates/judge/activate", json={"version": 2}).status_code == 200
    assert gateway.admin("POST", "/templates/judge/activate", json={"version": 1}).status_code == 200
    assert gateway.post("/v1/templates/judge", {"inputs": {"text": "x"}, "version": 2}).status_code == 200


def test_a_tenant_without_a_base_alias_never_reaches_the_base(gateway: RunningGateway, fake: FakeState) -> None:
    key = tenant(gateway, "adapters-only", base=False)
    gateway.admin("PUT", "/tenants/adapters-only/models/alpha", json={"adapter": "alpha"})
    assert gateway.admin("PUT", "/templates/judge", content=json.dumps(CLASSIFY)).status_code == 201
    fake.requests.clear()
    calls = fake.tokenize_calls
    for model in ("default", "tiny-base"):
        response = gateway.post("/v1/chat/completions", {"model": model, "messages": Q}, key=key)
        assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    response = gateway.post("/v1/templates/judge", {"inputs": {"text": "x"}}, key=key)
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    assert fake.requests == [] and fake.tokenize_calls == calls  # no engine work before resolution


def test_no_engine_work_before_admission(start_gateway, fake: FakeState) -> None:
    gw = start_gateway()
    key = tenant(gw, "busy", requests_per_minute=1)
    assert gw.admin("PUT", "/templates/judge", content=json.dumps(CLASSIFY)).status_code == 201
    assert gw.post("/v1/templates/judge", {"inputs": {"text": "x"}}, key=key).status_code == 200
    calls, sent = fake.tokenize_calls, len(fake.requests)
    assert gw.post("/v1/templates/judge", {"inputs": {"text": "y z"}}, key=key).status_code == 429
    assert (fake.tokenize_calls, len(fake.requests)) == (calls, sent)


# 8. Uploads: every archive entry counts.
def _upload(gw: RunningGateway, name: str, content: bytes, filename: str) -> httpx.Response:
    return gw.admin("POST", "/adapters", data={"name": name}, files={"file": (filename, content)})


def test_archives_of_many_directories_are_refused_early(gateway: RunningGateway, tmp_path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i in range(20_000):
            info = tarfile.TarInfo(f"d{i}")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
    started = time.perf_counter()
    response = _upload(gateway, "dirs", buf.getvalue(), "a.tar.gz")
    assert response.status_code == 400 and "entries" in response.json()["error"]["message"]
    assert time.perf_counter() - started < 5
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        for i in range(2_000):
            zf.writestr(f"d{i}/", b"")
    response = _upload(gateway, "zdirs", zbuf.getvalue(), "a.zip")
    assert response.status_code == 400 and "entries" in response.json()["error"]["message"]
    adapter = make_adapter(tmp_path / "ok", seed=5)
    good = io.BytesIO()
    with tarfile.open(fileobj=good, mode="w:gz") as tar:
        tar.add(adapter, arcname="ok")
    assert _upload(gateway, "fine", good.getvalue(), "a.tar.gz").status_code == 201


def test_a_gzip_bomb_of_tar_headers_is_refused(start_gateway) -> None:
    gw = start_gateway(max_adapter_bytes=64 * 1024)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("adapter_config.json")
        info.pax_headers = {"comment": "x" * 8_000_000}  # one header, 8 MB unpacked, a few KB packed
        tar.addfile(info, io.BytesIO(b""))
    assert len(buf.getvalue()) < 64 * 1024
    response = _upload(gw, "bomb", buf.getvalue(), "a.tar.gz")
    assert response.status_code == 413, response.text  # before reading the header whole


@pytest.mark.parametrize("name", ["acme\n", "a b", "acme\x00", "ac/me"])
def test_names_are_validated_exactly(gateway: RunningGateway, name: str) -> None:
    response = gateway.admin("POST", "/tenants", json={"name": name})
    assert response.status_code == 400 and response.json()["error"]["param"] == "name"


def test_a_failed_load_is_retried_and_never_names_internals(start_gateway, fake, tmp_path, monkeypatch) -> None:
    from adaptserve.adapters import residency

    # The back-off is read when a request asks (`backoff_left`), so the test changes its
    # base between requests instead of sleeping: no step depends on how fast a loaded
    # machine starts the gateway.
    monkeypatch.setattr(residency, "RETRY_FAILED_S", 60.0)
    refused = make_adapter(tmp_path / "refused", seed=3, fake_refuse=True)
    gw = start_gateway(adapters={"flaky": refused})
    response = gw.post("/v1/chat/completions", {"model": "flaky", "messages": Q}, key=API_KEY)
    # Refused at start-up: held back for a while, which is not missing (a 404 is final to clients).
    assert response.status_code == 503 and response.json()["error"]["code"] == "model_unavailable"
    assert response.json()["error"]["param"] == "model"
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert "flaky" in [m.id for m in gw.client().models.list().data]  # still listed
    listing = gw.admin("GET", "/adapters/flaky").json()
    internal = "flaky--" + listing["versions"][0]["version"]
    assert listing["versions"][0]["state"] == "failed" and listing["versions"][0]["error"]
    loads = len(fake.load_calls)
    monkeypatch.setattr(residency, "RETRY_FAILED_S", 0.0)  # the back-off has passed
    again = gw.post("/v1/chat/completions", {"model": "flaky", "messages": Q}, key=API_KEY)
    assert len(fake.load_calls) == loads + 1  # tried again, not broken for good
    assert again.status_code == 502 and again.json()["error"]["code"] == "adapter_load_failed"
    assert internal not in again.text and "shape mismatch" not in again.text
    monkeypatch.setattr(residency, "RETRY_FAILED_S", 60.0)
    held = gw.post("/v1/chat/completions", {"model": "flaky", "messages": Q}, key=API_KEY)
    assert held.status_code == 503  # the second failure in a row doubled the back-off
    assert 60 < int(held.headers["Retry-After"]) <= 120
    assert internal not in held.text and len(fake.load_calls) == loads + 1  # nothing sent meanwhile


def test_the_upgrade_keeps_keys_aliases_and_usage(database_url, tmp_path) -> None:
    """Revision 0003 changes `tenants` in place: rebuilding it would cascade-delete keys."""
    from sqlalchemy import text

    from adaptserve.db import Database

    db = Database.for_data_dir(database_url, tmp_path)
    db.migrate("0002")
    with db.engine.begin() as c:
        c.execute(text("INSERT INTO tenants (name, created_at) VALUES ('acme', '2026-01-01')"))
        c.execute(
            text(
                "INSERT INTO api_keys (id, tenant, key_hash, prefix, created_at)"
                " VALUES ('k1', 'acme', 'h', 'p', '2026-01-01')"
            )
        )
        c.execute(text("INSERT INTO aliases (tenant, alias, base) VALUES ('acme', 'chat', TRUE)"))
        c.execute(
            text(
                "INSERT INTO usage (tenant, alias, template, hour, requests, prompt_tokens, completion_tokens)"
                " VALUES ('acme', 'chat', '', '2026-01-01 10:00:00', 7, 70, 700)"
            )
        )
    db.migrate()
    with db.engine.connect() as c:
        uid = c.execute(text("SELECT uid FROM tenants WHERE name = 'acme'")).scalar_one()
        assert uid and c.execute(text("SELECT count(*) FROM api_keys")).scalar_one() == 1
        assert c.execute(text("SELECT count(*) FROM aliases")).scalar_one() == 1
        rows = c.execute(text("SELECT tenant, tenant_uid, requests FROM usage")).all()
        assert [tuple(r) for r in rows] == [("acme", uid, 7)]
    db.dispose()


def test_generated_keys_live_only_in_their_0600_files(start_gateway, tmp_path) -> None:
    gw = start_gateway(api_key=None, admin_key=None, database_url=None)
    data = tmp_path / "data"
    for name in ("api_key", "admin_key"):
        key = (data / name).read_text().strip()
        assert (data / name).stat().st_mode & 0o777 == 0o600
        stored = b"".join(p.read_bytes() for p in data.glob("adaptserve.db*"))
        assert key.encode() not in stored
    assert gw.client(api_key=(data / "api_key").read_text().strip()).models.list().data
