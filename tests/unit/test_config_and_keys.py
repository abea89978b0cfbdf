"""Settings precedence (defaults < YAML < environment < flags) and API-key handling."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from adaptserve.cli import main
from adaptserve.config import load_settings
from adaptserve.errors import AuthenticationError, ConfigurationError
from adaptserve.tenancy.auth import bearer, ensure_api_key, hash_key, key_matches


def test_precedence(tmp_path, monkeypatch):
    config = tmp_path / "settings.yaml"
    config.write_text("port: 9001\nhost: 0.0.0.0\nadapters:\n  support: ./adapters/support\nvllm:\n  max_loras: 2\n")
    monkeypatch.setenv("ADAPTSERVE_PORT", "9002")
    monkeypatch.setenv("ADAPTSERVE_VLLM__MAX_LORA_RANK", "32")
    settings = load_settings(config=config, port=None, host="127.0.0.2")
    assert settings.port == 9002  # env beats YAML
    assert settings.host == "127.0.0.2"  # flags beat everything
    assert settings.vllm.max_loras == 2 and settings.vllm.max_lora_rank == 32
    assert {n: a.path for n, a in settings.adapters.items()} == {"support": tmp_path / "adapters" / "support"}
    assert settings.adapters["support"].base is None  # relative to the file, the base model's
    assert load_settings(config=config, port=9003).port == 9003


def test_paths_in_the_file_are_relative_to_it_and_flags_to_where_the_command_runs(tmp_path, monkeypatch):
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "settings.yaml").write_text("templates_dir: mine\nadapters:\n  a: /abs/a\n")
    monkeypatch.chdir(tmp_path)
    from_file = load_settings(config=folder / "settings.yaml")
    assert from_file.templates_dir == folder / "mine" and from_file.adapters["a"].path == Path("/abs/a")
    from_flag = load_settings(config=folder / "settings.yaml", templates_dir=Path("templates"))
    assert from_flag.templates_dir.absolute() == tmp_path / "templates"  # the Makefile's --templates templates
    monkeypatch.setenv("ADAPTSERVE_TEMPLATES_DIR", "env-templates")
    assert load_settings(config=folder / "settings.yaml").templates_dir.absolute() == tmp_path / "env-templates"


def test_a_missing_templates_folder_is_one_line_naming_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTSERVE_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--templates", str(tmp_path / "nowhere")])
    assert str(exited.value) == f"adaptserve: templates_dir (--templates): {tmp_path / 'nowhere'} is not a folder"


def test_config_file_from_environment(tmp_path, monkeypatch):
    config = tmp_path / "s.yaml"
    config.write_text("served_model_name: smol\n")
    monkeypatch.setenv("ADAPTSERVE_CONFIG", str(config))
    monkeypatch.setenv("ADAPTSERVE_UPSTREAMS", "http://a:1/, http://b:2")
    settings = load_settings()
    assert settings.base_name == "smol"
    assert settings.upstreams == ["http://a:1", "http://b:2"]


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_settings(config=tmp_path / "nope.yaml")


def test_defaults(monkeypatch):
    settings = load_settings()
    assert settings.port == 8000 and settings.model == "default"
    assert settings.base_name == "SmolLM2-135M-Instruct"
    assert settings.resolved_models_dir == settings.data_dir / "models"


def test_api_key_is_secret_in_repr(monkeypatch):
    monkeypatch.setenv("ADAPTSERVE_API_KEY", "sk-very-secret")
    settings = load_settings()
    assert "sk-very-secret" not in repr(settings)
    assert settings.api_key.get_secret_value() == "sk-very-secret"


def test_generated_key_is_kept_with_mode_0600(tmp_path):
    key, path = ensure_api_key(None, tmp_path)
    assert key.startswith("sk-as-") and len(key) > 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_api_key(None, tmp_path) == (key, path)
    assert ensure_api_key("configured", tmp_path) == ("configured", None)


def test_the_metrics_key_must_be_a_key_of_its_own():
    assert load_settings(admin_key="a", api_key="b", metrics_key="m").metrics_key.get_secret_value() == "m"
    assert load_settings(admin_key="a").metrics_key is None  # never generated
    for taken in ("a", "b"):
        with pytest.raises(ConfigurationError, match="metrics_key"):
            load_settings(admin_key="a", api_key="b", metrics_key=taken)


def test_a_mistyped_setting_is_refused_in_one_line_naming_it(tmp_path, monkeypatch):
    """At the top, under `vllm:`, from the file or the environment: one line per wrong
    setting, the value never echoed (it may be a key). A removed key that never did
    anything (`startup_timeout_s`) still loads."""
    config = tmp_path / "s.yaml"
    config.write_text("bogus: 1\nvllm:\n  max_lorass: 2\n  startup_timeout_s: 600\n")
    with pytest.raises(ConfigurationError) as refused:
        load_settings(config=config)
    assert str(refused.value) == (
        "invalid settings: vllm.max_lorass: Extra inputs are not permitted; bogus: Extra inputs are not permitted"
    )
    config.write_text("vllm:\n  max_loras: 2\n  startup_timeout_s: 600\n")
    assert load_settings(config=config).vllm.max_loras == 2
    monkeypatch.setenv("ADAPTSERVE_VLLM__MAX_LORAZ", "3")
    with pytest.raises(ConfigurationError, match=r"vllm\.max_loraz: Extra inputs"):
        load_settings()
    monkeypatch.delenv("ADAPTSERVE_VLLM__MAX_LORAZ")
    monkeypatch.setenv("ADAPTSERVE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ADAPTSERVE_PORT", "sk-not-a-port")
    with pytest.raises(SystemExit) as exited:
        main(["serve"])
    assert str(exited.value).startswith("adaptserve: invalid settings: port: ")
    assert "sk-not-a-port" not in str(exited.value) and "\n" not in str(exited.value)


def test_a_settings_adapter_names_its_base_a_generate_entry_with_adapters_or_start_up_stops_in_one_line(
    tmp_path, monkeypatch
):
    """`name: folder` is the base model's adapter, as it always was; `name: {path, base}`
    is the adapter of a `models:` generate entry with `adapters: true` (its folder, too,
    relative to the file). A base that is no such entry, or a mistyped key, is one line."""
    config = tmp_path / "s.yaml"
    entries = (
        "models:\n"
        "  - {name: llm2, role: generate, upstreams: ['http://127.0.0.1:9'], adapters: true}\n"
        "  - {name: plain, role: generate, upstreams: ['http://127.0.0.1:9']}\n"
        "  - {name: enc, role: embed, path: minilm}\n"
    )
    adapters = "adapters:\n  old: ./a\n  new: {path: ./b, base: llm2}\n  named: {path: /c, base: %s}\n"
    config.write_text(entries + adapters % "SmolLM2-135M-Instruct")
    settings = load_settings(config=config)
    assert [(n, a.path, a.base) for n, a in settings.adapters.items()] == [
        ("old", tmp_path / "a", None),
        ("new", tmp_path / "b", "llm2"),
        ("named", Path("/c"), "SmolLM2-135M-Instruct"),  # the base model, by its name
    ]
    for wrong in ("plain", "enc", "nope"):
        config.write_text(entries + adapters % wrong)
        with pytest.raises(ConfigurationError) as refused:
            load_settings(config=config)
        assert str(refused.value) == (
            f"invalid settings: settings: Value error, adapters: named: base '{wrong}' is not a generate entry "
            "of models: with adapters: true"
        )
    config.write_text(entries + "adapters:\n  new: {path: ./b, bsae: llm2}\n")
    with pytest.raises(ConfigurationError) as mistyped:
        load_settings(config=config)
    assert str(mistyped.value) == "invalid settings: adapters.new.bsae: Extra inputs are not permitted"
    config.write_text(entries)
    monkeypatch.setenv("ADAPTSERVE_ADAPTERS", '{"new": 3}')
    with pytest.raises(ConfigurationError) as neither:
        load_settings(config=config)
    assert str(neither.value) == (
        "invalid settings: adapters: Value error, adapters: new: a PEFT LoRA folder, or {path: FOLDER, base: ENTRY}"
    )


def test_bearer_and_admin_check():
    assert key_matches("Bearer k1", hash_key("k1"))
    assert bearer("bearer  k1 ") == "k1"
    assert not key_matches("Bearer k2", hash_key("k1"))
    for header in (None, "", "Bearer", "Basic k1"):
        with pytest.raises(AuthenticationError):
            key_matches(header, hash_key("k1"))
