"""Settings: defaults < TOML file < environment < flags; secrets only from the environment, never printed."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.settings import SECRET_FIELDS, Settings, load_settings

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "gateway.example.toml"


def test_example_file_documents_every_default() -> None:
    """config/gateway.example.toml loads and yields exactly the defaults."""
    assert load_settings(EXAMPLE, environ={}) == load_settings(None, environ={})


def test_example_file_lists_every_non_secret_setting() -> None:
    """Every setting except the secrets appears in the example file."""
    text = EXAMPLE.read_text(encoding="utf-8")
    missing = [n for n in Settings.model_fields if n not in SECRET_FIELDS and f"{n} =" not in text]
    assert missing == []


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    """The environment beats the file and explicit flags beat both."""
    config = tmp_path / "g.toml"
    config.write_text('[gateway]\nport = 7000\nhost = "10.0.0.1"\nplayout_lead_ms = 200\n', encoding="utf-8")
    s = load_settings(config, environ={"GATEWAY_PORT": "7100", "GATEWAY_HOST": "0.0.0.0"}, host="127.0.0.2")
    assert (s.port, s.host, s.playout_lead_ms) == (7100, "127.0.0.2", 200)


def test_design_env_names_are_read() -> None:
    """The fixed environment names (docs/design.md "Environment") set their settings."""
    env = {
        "HUME_API_KEY": "key",
        "HUME_SECRET_KEY": "secret",
        "HUME_CONFIG_ID": "cfg",
        "GATEWAY_EVI_URL": "ws://127.0.0.1:1/v0/evi/chat",
        "TWILIO_ACCOUNT_SID": "AC1",
        "TWILIO_AUTH_TOKEN": "tok",
        "GATEWAY_PUBLIC_URL": "https://voice.example.com/",
        "GATEWAY_HOST": "0.0.0.0",
        "GATEWAY_PORT": "9000",
    }
    s = load_settings(None, environ=env)
    assert s.hume_api_key is not None and s.hume_api_key.get_secret_value() == "key"
    assert s.hume_secret_key is not None and s.twilio_auth_token is not None
    assert (s.hume_config_id, s.evi_url, s.twilio_account_sid) == ("cfg", env["GATEWAY_EVI_URL"], "AC1")
    assert (s.public_url, s.host, s.port) == ("https://voice.example.com", "0.0.0.0", 9000)


def test_secrets_in_a_file_are_refused(tmp_path: Path) -> None:
    """A TOML file holding a secret is an error naming the secret, not its value."""
    config = tmp_path / "g.toml"
    config.write_text('twilio_auth_token = "hunter2"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="twilio_auth_token") as info:
        load_settings(config, environ={})
    assert "hunter2" not in str(info.value)


def test_bad_values_and_files_are_clear_errors(tmp_path: Path) -> None:
    """Unknown keys, wrong types and unreadable files raise ConfigError."""
    bad = tmp_path / "bad.toml"
    bad.write_text("port = 'x'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="port"):
        load_settings(bad, environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.toml", environ={})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("colour = 'blue'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="colour"):
        load_settings(unknown, environ={})


def test_redacted_hides_secret_values() -> None:
    """Printing settings shows whether a secret is set, never its value."""
    s = load_settings(None, environ={"HUME_API_KEY": "sk-live-123", "TWILIO_AUTH_TOKEN": "tok-456"})
    shown = repr(s.redacted()) + repr(s)
    assert "sk-live-123" not in shown and "tok-456" not in shown
    assert s.redacted()["hume_api_key"] == "***" and s.redacted()["hume_secret_key"] is None
