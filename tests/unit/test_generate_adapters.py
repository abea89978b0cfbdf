"""LoRA adapters bound to a second LLM base (`models:` role generate, `adapters: true`)
against fake engines: the settings and its supervised child's command (the base model's
LoRA flags and its own plugin status); a push for the entry (admin API `base`) binds the
name to it for good and is checked against its shapes; an alias of such an adapter is
served on the entry's engine, where the adapter is loaded (never on the base model's,
and the base model's adapters never on it, a restart included); a tenant the entry does
not serve learns nothing of it; a classify template on such an alias is tokenized and
scored on the entry's engine (a tenant's alias of the entry's name: where the alias is
served); each base's picker counts are its own; a settings adapter deleted and pushed
for the entry is never loaded on the base model; a settings adapter that names the entry
(`{path, base}`) is checked against its shapes, loaded by its upstreams as they come up
and served there (and forgotten once deleted); `/admin/adapter-bases` lists the bases a
key may push for; migration 0010's downgrade keeps the versions; an entry without
`adapters` still refuses all of it."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from adaptserve_client import Client, ConflictError
from pydantic import ValidationError
from safetensors.numpy import load_file, save_file
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import text

from adaptserve.adapters.bases import AdapterBases
from adaptserve.adapters.catalog import AdapterCatalog
from adaptserve.adapters.residency import AdapterVersion, Residency
from adaptserve.adapters.spec import BaseModelSpec
from adaptserve.adapters.store import AdapterStore
from adaptserve.bench.fake_engine import BASE, FakeState
from adaptserve.cli import main
from adaptserve.config import Settings
from adaptserve.db import Database
from adaptserve.engine_plugin import ENABLE_ENV, STATUS_ENV
from adaptserve.engine_settings import ModelEntry
from adaptserve.errors import APIError
from adaptserve.metrics import Metrics
from adaptserve.read_cache import ReadCache
from adaptserve.server.backends import Backends
from adaptserve.serving.picker import Picker, rendezvous
from adaptserve.upstream.client import State, Upstream
from adaptserve.upstream.supervisor import GenerateSupervisor, Supervisor
from tests.helpers import (
    ADMIN_KEY,
    API_KEY,
    HIDDEN,
    RunningGateway,
    assert_openai_error,
    make_adapter,
    make_base,
    new_tenant,
    run_template,
    tar_gz,
    tenant_admin_key,
    wait_for,
)

SECOND = "second-llm"  # the name the entry's fake engine serves
HI = [{"role": "user", "content": "hello there"}]


def _entry(engine: FakeState, **extra: Any) -> dict[str, Any]:
    return {
        "name": "llm2",
        "role": "generate",
        "adapters": True,
        "upstreams": [engine.url],
        "served_model_name": SECOND,
    } | extra


@pytest.fixture
def second_llm(second_fake: FakeState) -> FakeState:
    second_fake.served = [SECOND]
    return second_fake


@pytest.fixture
def gw(start_gateway: Callable[..., RunningGateway], second_llm: FakeState) -> RunningGateway:
    return start_gateway(models=[_entry(second_llm)])


def _push(
    gw: RunningGateway, name: str, folder: Path, base: str | None = None, key: str | None = None
) -> httpx.Response:
    files = {"file": ("a.tar.gz", tar_gz(folder, top=name))}
    data = {"name": name} | ({"base": base} if base is not None else {})
    return gw.admin("POST", "/adapters", data=data, files=files, **({"key": key} if key else {}))


def _chats(engine: FakeState) -> list[dict[str, Any]]:
    return [r for r in engine.requests if "messages" in r or "prompt" in r]


# -- settings ------------------------------------------------------------------------------
def test_adapters_are_for_role_generate_and_its_child_gets_the_lora_flags(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="adapters are for role generate"):
        ModelEntry(name="enc", role="embed", path="minilm", adapters=True)
    vllm = Settings(data_dir=tmp_path, vllm={"max_loras": 3, "max_lora_rank": 32}).vllm
    entry = ModelEntry(name="llm2", role="generate", path=str(tmp_path), adapters=True, max_model_len=512)
    child = GenerateSupervisor(vllm, entry, tmp_path / "llm", tmp_path / "logs/vllm-llm2.log")
    command = child.command()
    assert "--enable-lora" in command and command[command.index("--max-loras") + 1] == "3"
    assert command[command.index("--max-lora-rank") + 1] == "32"
    assert command[command.index("--max-model-len") + 1] == "512"  # its own overrides still
    env = child.environment()
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True" and ENABLE_ENV in env
    base = Supervisor(vllm, tmp_path / "base", "base", tmp_path / "logs/vllm.log")
    assert env[STATUS_ENV] != base.environment()[STATUS_ENV]  # its plugin reports are its own
    (tmp_path / "logs").mkdir()
    (Path(base.environment()[STATUS_ENV] + ".1.json")).write_text(json.dumps({"active": True}))
    assert base.plugin_active() and not child.plugin_active()  # the base model's reports are not its
    (Path(env[STATUS_ENV] + ".2.json")).write_text(json.dumps({"active": True}))
    assert child.plugin_active()
    plain = ModelEntry(name="llm3", role="generate", path=str(tmp_path))
    assert "--enable-lora" not in GenerateSupervisor(vllm, plain, tmp_path, tmp_path / "l").command()


def test_an_entrys_plugin_status_files_are_its_own_when_another_entrys_name_extends_it_by_a_dot(
    tmp_path: Path,
) -> None:
    """Model names may hold dots: entry `llm`'s engine neither reads entry `llm.2`'s
    plugin reports nor deletes them as it starts, and the other way round."""
    vllm = Settings(data_dir=tmp_path).vllm
    llm, llm2 = (
        GenerateSupervisor(vllm, ModelEntry(name=n, role="generate", path=str(tmp_path), adapters=True), tmp_path, log)
        for n, log in (("llm", tmp_path / "logs/vllm-llm.log"), ("llm.2", tmp_path / "logs/vllm-llm.2.log"))
    )
    (tmp_path / "logs").mkdir()
    theirs = Path(llm2.environment()[STATUS_ENV] + ".7.json")
    theirs.write_text(json.dumps({"active": False}))
    ours = Path(llm.environment()[STATUS_ENV] + ".2.json")  # pid 2: `llm.2` + ".json"
    ours.write_text(json.dumps({"active": True}))
    assert llm.plugin_active() and not llm2.plugin_active()
    llm._clear_plugin_status()
    assert theirs.exists() and not ours.exists()
    ours.write_text(json.dumps({"active": True}))
    llm2._clear_plugin_status()
    assert ours.exists() and not theirs.exists()


def test_a_supervised_entrys_base_route_and_shapes_are_its_folders(
    tmp_path: Path, base_model: Path, second_fake: FakeState, database_url: str | None
) -> None:
    """Built, not started: a supervised entry's adapters are checked against its folder,
    its plain requests go through a zero adapter written for it (pinned) until its
    engine's plugin reports itself active, as the base model's do (`_entry_on_up`)."""
    folder = make_base(tmp_path / "llm2")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"num_hidden_layers": 1}))  # one layer fewer
    weights = load_file(str(folder / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if ".layers.1." not in k}, str(folder / "model.safetensors"))
    entry = {"name": "llm2", "role": "generate", "path": str(folder), "adapters": True}
    url = database_url or f"sqlite:///{tmp_path / 'db.sqlite'}"
    settings = Settings(data_dir=tmp_path / "data", model=str(base_model), upstreams=[second_fake.url], models=[entry])
    db = Database(url)
    db.migrate()
    backends = Backends.build(settings, db, ReadCache(0.0), Metrics())
    engine = backends.engines.get("llm2")
    assert engine is not None and engine.zero is not None and not engine.direct
    assert engine.base_target("llm2").adapter is engine.zero and engine.zero.base == "llm2"
    assert engine.zero.internal_name in backends.residency.pinned
    two_layers = backends.store.copy_folder(make_adapter(tmp_path / "a"))  # make_base's two layers
    with pytest.raises(APIError) as refused:
        backends.catalog.register("tone", two_layers, base="llm2")
    assert refused.value.code == "invalid_adapter"
    plain = backends.catalog.register("tone", backends.store.copy_folder(make_adapter(tmp_path / "b")))
    assert plain["base"] == BASE == base_model.name  # the base model, by its name

    second_fake.served = ["llm2"]  # the entry's engine, as its child would serve it
    supervisor, zero = engine.supervisor, engine.zero
    assert supervisor is not None

    async def comes_up_twice() -> None:
        upstream = Upstream(second_fake.url, 5.0)
        await engine.pool._on_up(upstream, [])
        assert list(second_fake.loaded) == [zero.internal_name] and not engine.direct
        status = Path(supervisor.environment()[STATUS_ENV] + ".1.json")
        status.parent.mkdir(parents=True, exist_ok=True)
        status.write_text(json.dumps({"active": True}))  # its engine's plugin, active in its one process
        await engine.pool._on_up(upstream, [])
        await upstream.aclose()

    asyncio.run(comes_up_twice())
    assert engine.direct and engine.base_target("llm2").adapter is None
    db.dispose()


# -- binding and checks --------------------------------------------------------------------
def test_a_version_is_checked_against_its_bases_shapes_and_a_name_stays_on_its_base(
    tmp_path: Path, database_url: str | None
) -> None:
    """An adapter trained on the base model pushed for an entry of another hidden size
    is a 400; a name bound to one base takes no version for another (409)."""
    db = Database(database_url or f"sqlite:///{tmp_path / 'db.sqlite'}")
    db.migrate()
    spec = BaseModelSpec.read(make_base(tmp_path / "base"))
    shapes = {k: [d * 2 if d == HIDDEN else d for d in v] for k, v in spec.shapes.items()}
    wider = BaseModelSpec(spec.path, shapes, spec.config | {"hidden_size": HIDDEN * 2})
    specs = {"llm2": spec, "remote": None, "wider": wider}
    store = AdapterStore(tmp_path / "adapters", 10**8)
    residency = Residency(4, Metrics())
    catalog = AdapterCatalog(db, store, "base", spec, 16, residency, entries=specs)
    adapter = make_adapter(tmp_path / "a")
    with pytest.raises(APIError) as refused:
        catalog.register("tone", store.copy_folder(adapter), base="wider")
    assert refused.value.status == 400 and refused.value.code == "invalid_adapter"
    assert catalog.register("tone", store.copy_folder(adapter), base="llm2")["base"] == "llm2"
    with pytest.raises(APIError) as rebased:
        catalog.register("tone", store.copy_folder(make_adapter(tmp_path / "b", seed=1)))
    assert (rebased.value.status, rebased.value.code, rebased.value.param) == (409, "adapter_base_taken", "base")
    assert "'llm2'" in rebased.value.message and "'base'" in rebased.value.message
    with pytest.raises(APIError) as early:
        catalog.claim("tone", "", "remote")
    assert early.value.code == "adapter_base_taken"
    assert catalog.describe("tone")["base"] == "llm2" and len(catalog.describe("tone")["versions"]) == 1
    assert catalog.register("plain", store.copy_folder(adapter))["base"] == "base"  # the base model, by name
    remote = catalog.register("far", store.copy_folder(make_adapter(tmp_path / "c", hidden=HIDDEN * 2)), base="remote")
    assert remote["base"] == "remote"  # a remote engine's shapes are unknown: not checked
    with pytest.raises(APIError) as unknown:
        catalog.register("x", store.copy_folder(adapter), base="nope")
    assert unknown.value.code == "model_not_found"
    assert AdapterBases("base", None, specs).shown("") == "base"
    db.dispose()


def test_a_base_that_takes_no_adapters_or_that_the_pusher_may_not_call_is_refused(
    start_gateway: Callable[..., RunningGateway], second_llm: FakeState, fake: FakeState, tmp_path: Path
) -> None:
    plain = {"name": "llm3", "role": "generate", "upstreams": [fake.url], "served_model_name": "base-x"}
    fake.served = [*fake.served, "base-x"]
    gw = start_gateway(models=[_entry(second_llm, tenants=["default"]), plain])
    adapter = make_adapter(tmp_path / "a")
    unknown = assert_openai_error(_push(gw, "tone", adapter, "nope"), 404, "model_not_found", "base")
    assert_openai_error(_push(gw, "tone", adapter, "llm3"), 400, "model_not_adaptable", "base")
    new_tenant(gw, "other")
    key = tenant_admin_key(gw, "other")
    hidden = assert_openai_error(_push(gw, "tone", adapter, "llm2", key=key), 404, "model_not_found", "base")
    assert hidden["message"] == unknown["message"].replace("nope", "llm2")  # as a name that does not exist
    assert gw.admin("GET", "/adapters").json()["data"] == []  # nothing stored
    bases = gw.admin("GET", "/adapter-bases").json()["data"]  # what the console's upload form offers
    assert bases == [{"name": gw.settings.base_name, "base_model": True}, {"name": "llm2", "base_model": False}]
    assert gw.admin("GET", "/adapter-bases", key=key).json()["data"] == bases[:1]  # llm2 does not serve it
    assert _push(gw, "tone", adapter, "llm2").status_code == 201
    assert _push(gw, "mine", adapter, key=key).status_code == 201  # its own, on the base model
    refused = gw.admin("PUT", "/tenants/other/models/t", json={"adapter": "tone"})
    assert_openai_error(refused, 404, "adapter_not_found", "adapter")  # global, but on a model it may not call
    assert _push(gw, "mine", make_adapter(tmp_path / "b", seed=1), "llm2").status_code == 409  # the operator's too
    assert [a["name"] for a in gw.admin("GET", "/adapters", key=key).json()["data"]] == ["mine"]
    assert_openai_error(gw.admin("GET", "/adapters/tone", key=key), 404, "adapter_not_found")
    assert {a["name"]: a["base"] for a in gw.admin("GET", "/adapters").json()["data"]}["tone"] == "llm2"


def test_the_cli_and_the_python_client_push_for_a_base(
    gw: RunningGateway, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    folder = make_adapter(tmp_path / "a")
    connection = ["--url", gw.url, "--admin-key", ADMIN_KEY]
    with pytest.raises(SystemExit) as done:
        main(["adapters", "push", str(folder), "--name", "tone", "--base", "llm2", *connection])
    assert done.value.code == 0 and json.loads(capsys.readouterr().out)["base"] == "llm2"
    with Client(gw.url, ADMIN_KEY) as admin:
        assert admin.admin.adapters.push(folder, "tone2", base="llm2")["base"] == "llm2"
        assert admin.admin.adapters.register_path("tone3", str(folder), base="llm2")["base"] == "llm2"
        assert admin.admin.adapters.push(folder, "plain")["base"] != "llm2"
        with pytest.raises(ConflictError) as refused:
            admin.admin.adapters.push(folder, "tone", base=None)  # the base model: not tone's
    assert refused.value.status == 409 and refused.value.code == "adapter_base_taken"
    bases = [{"name": gw.settings.base_name, "base_model": True}, {"name": "llm2", "base_model": False}]
    with Client(gw.url, ADMIN_KEY) as admin:
        assert admin.admin.adapters.bases() == bases
    with pytest.raises(SystemExit) as done:
        main(["adapters", "bases", *connection])
    assert done.value.code == 0 and json.loads(capsys.readouterr().out) == bases


def test_train_and_distill_push_for_a_base_and_point_the_alias_there(
    gw: RunningGateway, second_llm: FakeState, fake: FakeState, tmp_path: Path
) -> None:
    """`train` and `distill` with `--push --base llm2`: the adapter is the entry's, and
    the alias serves it on the entry's engine; without `--base`, the base model's."""
    from adaptserve.cli.adapt import push
    from adaptserve.cli.main import parser

    flags = ["--push", "--url", gw.url, "--admin-key", ADMIN_KEY, "--tenant", "default"]
    trained = parser().parse_args(
        ["train", "--dataset", "rotten-tomatoes", *flags, "--alias", "tuned", "--base", "llm2"]
    )
    settings = Settings(data_dir=tmp_path / "data")
    pushed = push(trained, settings, make_adapter(tmp_path / "a"))
    assert pushed["base"] == "llm2" and pushed["alias"] == "tuned"
    internal = f"a--{pushed['version']}"  # named after its folder
    answer = gw.client().chat.completions.create(model="tuned", messages=HI, max_tokens=8)
    assert answer.choices[0].message.content.startswith(f"[{internal}]")
    assert internal in second_llm.loaded and internal not in fake.loaded
    distilled = parser().parse_args(
        ["distill", "--inputs", "x", "--teacher-model", "m", "--teacher-url", gw.url, "--teacher-key", "k", *flags]
    )
    assert push(distilled, settings, make_adapter(tmp_path / "b", seed=1))["base"] == BASE


def test_a_derivation_is_for_its_sources_base(gw: RunningGateway, tmp_path: Path) -> None:
    """A compression of an entry's adapter is an adapter of that entry; adapters of two
    bases do not merge."""
    assert _push(gw, "tone", make_adapter(tmp_path / "a", r=4), "llm2").status_code == 201
    assert _push(gw, "plain", make_adapter(tmp_path / "b", seed=1)).status_code == 201
    small = gw.admin("POST", "/adapters/tone/compress", json={"rank": 2, "name": "tone-small"})
    assert small.status_code == 201, small.text
    assert small.json()["base"] == "llm2" and gw.admin("GET", "/adapters/tone-small").json()["base"] == "llm2"
    sources = [{"adapter": "tone"}, {"adapter": "plain"}]
    mixed = gw.admin("POST", "/adapters/merge", json={"name": "both", "sources": sources})
    assert "different LLM bases" in assert_openai_error(mixed, 400, param="sources")["message"]
    assert gw.admin("GET", "/adapters/both").status_code == 404


def test_a_settings_adapter_removed_and_pushed_again_for_an_entry_is_not_loaded_at_the_base_models_start(
    tmp_path: Path, database_url: str | None
) -> None:
    """The base model's upstreams load the settings file's adapters when they come up;
    one deleted and then pushed again under its name for an entry is the entry's, not
    the settings file's: the base model's engines never load it."""
    db = Database(database_url or f"sqlite:///{tmp_path / 'db.sqlite'}")
    db.migrate()
    spec = BaseModelSpec.read(make_base(tmp_path / "base"))
    store = AdapterStore(tmp_path / "adapters", 10**8)
    catalog = AdapterCatalog(db, store, "base", spec, 16, Residency(4, Metrics()), entries={"llm2": spec})
    assert catalog.register_from_settings({"tone": make_adapter(tmp_path / "a")}) == ["tone"]
    assert [a.name for a in catalog.startup_adapters()] == ["tone"]
    catalog.remove("tone")
    catalog.register("tone", store.copy_folder(make_adapter(tmp_path / "b", seed=1)), base="llm2")
    assert catalog.startup_adapters() == []
    catalog.remove("tone")
    catalog.register("tone", store.copy_folder(make_adapter(tmp_path / "c", seed=2)))  # the base model's again
    assert catalog.startup_adapters() == []  # an upload, not the settings file's
    db.dispose()


def test_a_settings_adapter_for_an_entry_is_loaded_and_served_on_its_engines_only(
    start_gateway: Callable[..., RunningGateway], fake: FakeState, second_llm: FakeState, tmp_path: Path
) -> None:
    """`adapters: {name: {path, base: ENTRY}}`: bound to the entry, loaded on its engine
    as it comes up (before it serves, a restart included), never on the base model's;
    the default tenant's alias of it is served there, beside a base model's settings adapter."""
    folders = {"tone": make_adapter(tmp_path / "a"), "plain": make_adapter(tmp_path / "b", seed=1)}
    settings_adapters = {"tone": {"path": folders["tone"], "base": "llm2"}, "plain": folders["plain"]}
    gw = start_gateway(models=[_entry(second_llm)], adapters=settings_adapters)
    described = {a["name"]: a for a in gw.admin("GET", "/adapters").json()["data"]}
    assert described["tone"]["base"] == "llm2" and described["plain"]["base"] == gw.settings.base_name
    internal = f"tone--{described['tone']['active_version']}"
    plain_internal = f"plain--{described['plain']['active_version']}"
    assert internal in second_llm.loaded and internal not in fake.loaded  # loaded before /ready, unasked
    assert plain_internal in fake.loaded and plain_internal not in second_llm.loaded
    answer = gw.client().chat.completions.create(model="tone", messages=HI, max_tokens=8)
    assert answer.model == "tone" and answer.choices[0].message.content == f"[{internal}] echo: hello there"
    assert [r["model"] for r in _chats(second_llm)] == [internal]

    second_llm.healthy = False  # its engine restarts: loaded again before it serves
    wait_for(lambda: httpx.get(gw.url + "/ready").status_code == 503, what="/ready stayed 200")
    second_llm.restart()
    second_llm.healthy = True
    gw.wait_ready()
    assert internal in second_llm.loaded and plain_internal not in second_llm.loaded


def test_a_settings_adapter_for_an_entry_the_default_tenant_may_not_call_gets_no_alias(
    start_gateway: Callable[..., RunningGateway], second_llm: FakeState, tmp_path: Path
) -> None:
    settings_adapters = {"tone": {"path": make_adapter(tmp_path / "a"), "base": "llm2"}}
    gw = start_gateway(models=[_entry(second_llm, tenants=["acme"])], adapters=settings_adapters)
    assert gw.admin("GET", "/adapters/tone").json()["base"] == "llm2"
    assert "tone" not in {a["alias"] for a in gw.admin("GET", "/tenants/default/models").json()["data"]}
    called = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "tone", "messages": HI, "max_tokens": 8},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert_openai_error(called, 404, "model_not_found", "model")


def test_a_settings_adapter_named_like_any_model_of_models_is_skipped_and_the_model_answers(
    start_gateway: Callable[..., RunningGateway], second_llm: FakeState, tmp_path: Path
) -> None:
    """`plain` (generate, no adapters) and `llm2` (with adapters) keep their names: a
    settings adapter of either name is not registered, and each still answers."""
    plain = {"name": "plain", "role": "generate", "upstreams": [second_llm.url], "served_model_name": SECOND}
    folder = make_adapter(tmp_path / "a")
    gw = start_gateway(models=[_entry(second_llm), plain], adapters={"plain": folder, "llm2": folder, "kept": folder})
    assert {a["name"] for a in gw.admin("GET", "/adapters").json()["data"]} == {"kept"}
    for model in ("plain", "llm2"):
        second_llm.requests.clear()
        answered = gw.client().chat.completions.create(model=model, messages=HI, max_tokens=8)  # type: ignore[arg-type]
        assert answered.model == model
        assert [r["model"] for r in _chats(second_llm)] == [SECOND]  # the entry's engine, no adapter


def test_startup_adapters_survive_a_delete_while_an_upstream_comes_up(tmp_path: Path) -> None:
    """An upstream's on_up reads the settings adapters in a worker thread while an
    admin's DELETE (another thread) removes one: the walk ends on what it started with."""
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    db.migrate()
    spec = BaseModelSpec.read(make_base(tmp_path / "base"))
    store = AdapterStore(tmp_path / "adapters", 10**8)
    catalog = AdapterCatalog(db, store, "base", spec, 16, Residency(4, Metrics()), entries={"llm2": spec})
    folders = {n: make_adapter(tmp_path / n, seed=i) for i, n in enumerate(["a", "b", "c"])}
    assert catalog.register_from_settings(folders, dict.fromkeys(folders, "llm2")) == ["a", "b", "c"]
    real, inside, go = catalog.target, threading.Event(), threading.Event()

    def held_target(*args: Any) -> Any:  # the database read the walk makes per name, held open
        inside.set()
        go.wait(30)
        return real(*args)

    catalog.target = held_target  # type: ignore[method-assign]
    walked: list[Any] = []
    walker = threading.Thread(target=lambda: walked.append(_names_or_error(catalog)))
    walker.start()
    assert inside.wait(30)
    catalog.remove("c")
    go.set()
    walker.join(30)
    assert walked == [["a", "b"]]  # c was deleted before the walk read it
    catalog.target = real  # type: ignore[method-assign]
    assert [a.name for a in catalog.startup_adapters("llm2")] == ["a", "b"]
    db.dispose()


def _names_or_error(catalog: AdapterCatalog) -> list[str] | BaseException:
    try:
        return [a.name for a in catalog.startup_adapters("llm2")]
    except Exception as exc:  # what the walk raised, for the assertion to show
        return exc


def test_settings_adapters_are_checked_against_their_bases_shapes_and_follow_their_base_after_a_delete(
    tmp_path: Path, database_url: str | None
) -> None:
    """A settings adapter for an entry is checked against the entry's shapes (skipped,
    logged, when it does not fit) and loaded only by that entry's upstreams; one deleted
    is no longer the settings file's, whichever base it is pushed for later; a name of
    a models: entry is no settings adapter's."""
    db = Database(database_url or f"sqlite:///{tmp_path / 'db.sqlite'}")
    db.migrate()
    spec = BaseModelSpec.read(make_base(tmp_path / "base"))
    shapes = {k: [d * 2 if d == HIDDEN else d for d in v] for k, v in spec.shapes.items()}
    wider = BaseModelSpec(spec.path, shapes, spec.config | {"hidden_size": HIDDEN * 2})
    store = AdapterStore(tmp_path / "adapters", 10**8)
    entries = {"llm2": spec, "wider": wider}
    catalog = AdapterCatalog(db, store, "base", spec, 16, Residency(4, Metrics()), entries=entries)
    folder = make_adapter(tmp_path / "a")
    adapters = {"tone": folder, "wide": folder, "plain": make_adapter(tmp_path / "p", seed=3), "llm2": folder}
    bases = {"tone": "llm2", "wide": "wider", "llm2": "llm2"}
    assert catalog.register_from_settings(adapters, bases) == ["tone", "plain"]
    assert catalog.describe("tone")["base"] == "llm2" and catalog.base_of("wide") is None
    assert [a.name for a in catalog.startup_adapters("llm2")] == ["tone"]
    assert [a.name for a in catalog.startup_adapters()] == ["plain"] and catalog.startup_adapters("wider") == []
    catalog.remove("tone")
    catalog.register("tone", store.copy_folder(make_adapter(tmp_path / "b", seed=1)))  # now the base model's
    assert catalog.startup_adapters("llm2") == [] and [a.name for a in catalog.startup_adapters()] == ["plain"]
    catalog.remove("tone")
    catalog.register("tone", store.copy_folder(make_adapter(tmp_path / "c", seed=2)), base="llm2")  # llm2's again
    assert catalog.startup_adapters("llm2") == []  # an upload, not the settings file's
    db.dispose()


def test_a_derivation_from_an_adapter_whose_entry_was_removed_is_refused_before_it_is_built(
    tmp_path: Path, database_url: str | None
) -> None:
    db = Database(database_url or f"sqlite:///{tmp_path / 'db.sqlite'}")
    db.migrate()
    spec = BaseModelSpec.read(make_base(tmp_path / "base"))
    store = AdapterStore(tmp_path / "adapters", 10**8)
    before = AdapterCatalog(db, store, "base", spec, 16, Residency(4, Metrics()), entries={"llm2": spec})
    before.register("tone", store.copy_folder(make_adapter(tmp_path / "a")), base="llm2")
    after = AdapterCatalog(db, store, "base", spec, 16, Residency(4, Metrics()))  # llm2 left `models:`
    built: list[Path] = []
    with pytest.raises(APIError) as refused:
        after.derive("merged", "", lambda staged: built.append(staged) or {}, ["tone"])
    assert (refused.value.status, refused.value.code) == (404, "model_not_found") and built == []
    with pytest.raises(APIError) as early:
        after.claim("fresh", "", "llm2")
    assert early.value.code == "model_not_found"
    db.dispose()


def test_a_downgrade_below_the_adapter_base_keeps_every_adapters_versions(
    tmp_path: Path, database_url: str | None
) -> None:
    """Migration 0010's downgrade drops `adapters.base` in place: on SQLite batch mode
    would rebuild `adapters`, and dropping the old table cascades to `adapter_versions`."""
    from alembic import command
    from alembic.config import Config

    import adaptserve.db

    db = Database.for_data_dir(database_url, tmp_path)
    db.migrate()
    with db.engine.begin() as c:  # literals: a bound string is not a timestamp on PostgreSQL
        c.execute(
            text(
                "INSERT INTO adapters (name, owner, base, active_version, created_at)"
                " VALUES ('tone', '', '', 'v1', '2026-01-01')"
            )
        )
        c.execute(
            text(
                "INSERT INTO adapter_versions (adapter, version, digest, path, rank, target_modules,"
                " size_bytes, created_at) VALUES ('tone', 'v1', 'd', '/p', 8, '[]', 1, '2026-01-01')"
            )
        )
    config = Config()
    config.set_main_option("script_location", str(Path(adaptserve.db.__file__).parent / "migrations"))
    with db.engine.begin() as c:
        config.attributes["connection"] = c
        command.downgrade(config, "0009")
    with db.engine.begin() as c:
        assert list(c.execute(text("SELECT adapter, version FROM adapter_versions"))) == [("tone", "v1")]
        assert list(c.execute(text("SELECT name, active_version FROM adapters"))) == [("tone", "v1")]
        assert "base" not in {col["name"] for col in sa_inspect(c).get_columns("adapters")}
    db.migrate()  # and up again
    with db.engine.begin() as c:
        assert list(c.execute(text("SELECT name, base FROM adapters"))) == [("tone", "")]
    db.dispose()


# -- serving -------------------------------------------------------------------------------
def test_the_shared_picker_keeps_each_bases_home_sets_over_that_bases_replicas() -> None:
    """Residency evicts an adapter's home replicas last (`Picker.is_home`): a pick on the
    entry's replicas does not make the base model's adapters homeless on theirs."""
    base_ups = [Upstream(f"http://base-{i}:8000", 5.0) for i in range(3)]
    entry_ups = [Upstream(f"http://llm2-{i}:8000", 5.0) for i in range(2)]
    for u in [*base_ups, *entry_ups]:
        u.state, u.generation = State.READY, 1
    picker = Picker(Residency(4, Metrics()), home_size=2)
    ours, theirs = AdapterVersion("a", "v1", Path("/a"), 8), AdapterVersion("b", "v1", Path("/b"), 8, base="llm2")
    picker.pick(base_ups, ours)
    homes = [picker.is_home(u.url, ours.internal_name) for u in base_ups]
    assert homes.count(True) == 2
    picker.pick(entry_ups, theirs)
    assert [picker.is_home(u.url, ours.internal_name) for u in base_ups] == homes
    assert [picker.is_home(u.url, theirs.internal_name) for u in entry_ups] == [True, True]


def test_one_bases_adapter_traffic_never_makes_the_other_bases_adapters_cold() -> None:
    """An adapter is cold (one home replica) under `COLD_SHARE` of its own base's recent
    adapter requests: the entry's busy adapter leaves the base model's one adapter hot,
    its home set two replicas (`pick`, `is_home`, `homed_on`)."""
    now = [0.0]
    picker = Picker(Residency(4, Metrics()), home_size=2, clock=lambda: now[0])
    base_ups = [Upstream(f"http://base-{i}:8000", 5.0) for i in range(3)]
    entry_ups = [Upstream(f"http://llm2-{i}:8000", 5.0) for i in range(2)]
    for u in [*base_ups, *entry_ups]:
        u.state, u.generation = State.READY, 1
    ours, theirs = AdapterVersion("a", "v1", Path("/a"), 8), AdapterVersion("b", "v1", Path("/b"), 8, base="llm2")
    for i in range(100):
        now[0] = i * 0.1
        picker.pick(entry_ups, theirs)
        if i % 10 == 0:
            picker.pick(base_ups, ours)
    assert picker.base_size(ours.internal_name, "") == 2 and picker.base_size(theirs.internal_name, "llm2") == 2
    assert [picker.is_home(u.url, ours.internal_name) for u in base_ups].count(True) == 2
    second = rendezvous(ours.internal_name, base_ups)[1]
    assert picker.homed_on(second, [u for u in base_ups if u is not second], [ours]) == [ours]


def test_an_alias_of_its_adapter_is_served_on_its_engine_and_the_base_models_stay_on_the_base_model(
    gw: RunningGateway, fake: FakeState, second_llm: FakeState, tmp_path: Path
) -> None:
    pushed = _push(gw, "tone", make_adapter(tmp_path / "a"), "llm2")
    assert pushed.status_code == 201 and pushed.json()["base"] == "llm2"
    internal = f"tone--{pushed.json()['version']}"
    plain = _push(gw, "plain", make_adapter(tmp_path / "b", seed=1))
    assert plain.status_code == 201 and plain.json()["base"] != "llm2"
    plain_internal = f"plain--{plain.json()['version']}"
    assert gw.admin("PUT", "/tenants/default/models/toned", json={"adapter": "tone"}).status_code == 200
    assert gw.admin("PUT", "/tenants/default/models/plained", json={"adapter": "plain"}).status_code == 200
    assert_openai_error(
        gw.admin("PUT", "/tenants/default/models/llm2", json={"adapter": "tone"}), 409, "name_taken", "alias"
    )
    client = gw.client()
    before = len(_chats(fake))
    answer = client.chat.completions.create(model="toned", messages=HI, max_tokens=8)
    assert answer.model == "toned" and answer.choices[0].message.content == f"[{internal}] echo: hello there"
    assert internal in second_llm.loaded and internal not in fake.loaded
    assert [r["model"] for r in _chats(second_llm)] == [internal] and len(_chats(fake)) == before
    streamed = list(client.completions.create(model="toned", prompt="a b", max_tokens=8, stream=True))
    assert "".join(p.choices[0].text for p in streamed if p.choices) == f"[{internal}] echo: a b"
    base = client.chat.completions.create(model="plained", messages=HI, max_tokens=8)
    assert base.choices[0].message.content.startswith(f"[{plain_internal}]") and plain_internal in fake.loaded
    assert plain_internal not in second_llm.loaded
    own = client.chat.completions.create(model="llm2", messages=HI, max_tokens=8)  # the entry itself, no adapter
    assert own.choices[0].message.content == f"[{SECOND}] echo: hello there"
    assert {"toned", "plained", "llm2"} <= {m.id for m in client.models.list().data}
    described = gw.admin("GET", "/adapters/tone").json()
    assert described["base"] == "llm2" and described["versions"][0]["upstreams"] == [second_llm.url]

    # its engine restarts: its adapter is loaded again before it serves, the base model's is not
    second_llm.healthy = False
    wait_for(lambda: httpx.get(gw.url + "/ready").status_code == 503, what="/ready stayed 200")
    second_llm.restart()
    second_llm.healthy = True
    gw.wait_ready()
    wait_for(lambda: internal in second_llm.loaded, what="its adapter was not loaded again")
    assert plain_internal not in second_llm.loaded and internal not in fake.loaded


def test_a_classify_template_on_its_adapter_is_tokenized_and_scored_on_its_engine(
    gw: RunningGateway, fake: FakeState, second_llm: FakeState, tmp_path: Path
) -> None:
    pushed = _push(gw, "tone", make_adapter(tmp_path / "a"), "llm2")
    internal = f"tone--{pushed.json()['version']}"
    assert gw.admin("PUT", "/tenants/default/models/toned", json={"adapter": "tone"}).status_code == 200
    labels = [{"name": "negative"}, {"name": "positive"}]
    doc = {"name": "mood", "kind": "classify", "instruction": "Good or bad?", "inputs": {"text": {}}}
    tokenized = fake.tokenize_calls
    saved = gw.admin(
        "PUT", "/templates/mood", params={"tenant": "default"}, json=doc | {"labels": labels, "model": "toned"}
    )
    assert saved.status_code == 201, saved.text
    assert second_llm.tokenize_calls > 0 and fake.tokenize_calls == tokenized  # its labels, its tokenizer
    base_calls = len(_chats(fake))
    answer = gw.post("/v1/templates/mood", {"inputs": {"text": "a fine day"}})
    assert answer.status_code == 200 and answer.json()["label"] in ("negative", "positive")
    scored = _chats(second_llm)
    assert scored and {r["model"] for r in scored} == {internal} and len(_chats(fake)) == base_calls
    on_entry = gw.admin("PUT", "/templates/mood2", json=doc | {"name": "mood2", "labels": labels, "model": "llm2"})
    assert on_entry.status_code == 201, on_entry.text  # the entry itself: a template's model too
    assert gw.post("/v1/templates/mood2", {"inputs": {"text": "a fine day"}}).status_code == 200
    assert _chats(second_llm)[-1]["model"] == SECOND and len(_chats(fake)) == base_calls


def test_a_global_templates_labels_are_tokenized_on_each_base_its_alias_reaches(
    gw: RunningGateway, fake: FakeState, second_llm: FakeState, tmp_path: Path
) -> None:
    """One global template, one alias name: tenant default's on the entry's adapter,
    acme's on the base model's. Each call scores with the labels' tokens of its own
    base's tokenizer (a plan read on one base is never used on another)."""
    tone = _push(gw, "tone", make_adapter(tmp_path / "a"), "llm2").json()["version"]
    plain = _push(gw, "plain", make_adapter(tmp_path / "b", seed=1)).json()["version"]
    assert gw.admin("PUT", "/tenants/default/models/support", json={"adapter": "tone"}).status_code == 200
    acme = new_tenant(gw, "acme", {"adapter": "plain"})
    second_llm.vocab.update({"unrelated": 500, "words": 501})  # its tokenizer's ids differ from the base model's
    labels = [{"name": "negative"}, {"name": "positive"}]
    doc = {"name": "mood", "kind": "classify", "instruction": "Good or bad?", "inputs": {"text": {}}, "labels": labels}
    assert gw.admin("PUT", "/templates/mood", json=doc | {"model": "support"}).status_code == 201
    assert second_llm.tokenize_calls == 0  # a global template's alias is a tenant's: read on the base model
    assert gw.post("/v1/templates/mood", {"inputs": {"text": "a fine day"}}).status_code == 200
    scored = [r for r in _chats(second_llm) if r.get("logprob_token_ids")]
    assert scored and {r["model"] for r in scored} == {f"tone--{tone}"}
    wanted = {i for r in scored for i in r["logprob_token_ids"]}
    assert wanted == {second_llm.vocab["negative"], second_llm.vocab["positive"]}  # its tokenizer's label ids
    assert wanted != {fake.vocab["negative"], fake.vocab["positive"]}  # (the base model's differ)
    on_entry = len(_chats(second_llm))
    assert run_template(gw, "mood", {"inputs": {"text": "a fine day"}}, key=acme.api_key).status_code == 200
    assert len(_chats(second_llm)) == on_entry  # acme's alias: the base model's adapter, on its engine
    assert {r["model"] for r in _chats(fake) if r.get("logprob_token_ids")} == {f"plain--{plain}"}


def test_a_tenants_alias_named_like_an_entry_takes_precedence_for_a_templates_labels_and_calls(
    start_gateway: Callable[..., RunningGateway], fake: FakeState, second_llm: FakeState, tmp_path: Path
) -> None:
    """An alias named like an adapters entry (made while the entry did not serve the
    tenant) is what the tenant's `llm2` resolves to: a template on it is tokenized on the
    base model's engine when saved, and each call is planned and scored there, with the
    base model's label ids (the call's target is resolved once, its base with it)."""
    first = start_gateway(models=[_entry(second_llm, tenants=["acme"])])
    plain = _push(first, "plain", make_adapter(tmp_path / "b", seed=1)).json()["version"]
    assert first.admin("PUT", "/tenants/default/models/llm2", json={"adapter": "plain"}).status_code == 200
    gw = start_gateway(models=[_entry(second_llm, tenants=["*"])])
    second_llm.vocab.update({"unrelated": 500, "words": 501})  # its tokenizer's ids differ from the base model's
    labels = [{"name": "negative"}, {"name": "positive"}]
    doc = {"name": "mood", "kind": "classify", "instruction": "Good or bad?", "inputs": {"text": {}}}
    saved = gw.admin(
        "PUT", "/templates/mood", params={"tenant": "default"}, json=doc | {"labels": labels, "model": "llm2"}
    )
    assert saved.status_code == 201, saved.text
    assert second_llm.tokenize_calls == 0 and fake.tokenize_calls > 0  # the alias's base: the base model
    assert gw.post("/v1/templates/mood", {"inputs": {"text": "a fine day"}}).status_code == 200
    assert second_llm.tokenize_calls == 0 and not _chats(second_llm)
    scored = [r for r in _chats(fake) if r.get("logprob_token_ids")]
    assert scored and {r["model"] for r in scored} == {f"plain--{plain}"}
    assert {i for r in scored for i in r["logprob_token_ids"]} == {fake.vocab["negative"], fake.vocab["positive"]}


def test_an_alias_of_an_entrys_adapter_is_unknown_once_the_entry_takes_no_adapters(
    start_gateway: Callable[..., RunningGateway], second_llm: FakeState, tmp_path: Path
) -> None:
    first = start_gateway(models=[_entry(second_llm)])
    assert _push(first, "tone", make_adapter(tmp_path / "a"), "llm2").status_code == 201
    assert first.admin("PUT", "/tenants/default/models/toned", json={"adapter": "tone"}).status_code == 200
    assert first.post("/v1/chat/completions", {"model": "toned", "messages": HI}).status_code == 200
    later = start_gateway(models=[_entry(second_llm, adapters=False)])  # the same database, settings changed
    gone = later.post("/v1/chat/completions", {"model": "toned", "messages": HI})
    assert_openai_error(gone, 404, "model_not_found", "model")
    assert "toned" not in {m.id for m in later.client().models.list().data}
    assert len(_chats(second_llm)) == 1  # only the first gateway's call reached it


def test_an_entry_without_adapters_still_refuses_them(
    start_gateway: Callable[..., RunningGateway], second_llm: FakeState, tmp_path: Path
) -> None:
    gw = start_gateway(models=[_entry(second_llm, adapters=False)])
    assert_openai_error(_push(gw, "tone", make_adapter(tmp_path / "a"), "llm2"), 400, "model_not_adaptable", "base")
    alias = gw.admin("PUT", "/tenants/default/models/llm2", json={"base": True})
    assert_openai_error(alias, 400, "model_not_adaptable", "alias")
    assert gw.post("/v1/chat/completions", {"model": "llm2", "messages": HI}).json()["model"] == "llm2"
    assert second_llm.load_calls == []
