"""Settings precedence (defaults < YAML < environment < flags) and API-key handling."""

from __future__ import annotations

import stat

import pytest

from adaptserve.config import load_settings
from adaptserve.errors import AuthenticationError, ConfigurationError
from adaptserve.tenancy.auth import bearer, check_admin, ensure_api_key, hash_key


def test_precedence(tmp_path, monkeypatch):
    config = tmp_path / "settings.yaml"
    config.write_text("port: 9001\nhost: 0.0.0.0\nadapters:\n  support: ./adapters/support\nvllm:\n  max_loras: 2\n")
    monkeypatch.setenv("ADAPTSERVE_PORT", "9002")
    monkeypatch.setenv("ADAPTSERVE_VLLM__MAX_LORA_RANK", "32")
    settings = load_settings(config=config, port=None, host="127.0.0.2")
    assert settings.port == 9002  # env beats YAML
    assert settings.host == "127.0.0.2"  # flags beat everything
    assert settings.vllm.max_loras == 2 and settings.vllm.max_lora_rank == 32
    assert settings.adapters == {"support": tmp_path / "adapters" / "support"}  # relative to the file
    assert load_settings(config=config, port=9003).port == 9003


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


def test_bearer_and_admin_check():
    check_admin("Bearer k1", hash_key("k1"))
    assert bearer("bearer  k1 ") == "k1"
    for header in (None, "", "Bearer", "Basic k1", "Bearer k2"):
        with pytest.raises(AuthenticationError):
            check_admin(header, hash_key("k1"))
