"""Settings come from a mapping, read secrets from `*_FILE`, and report every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from civicline.common.settings import (
    DEFAULT_AMQP_URL,
    DEFAULT_DATABASE_URL,
    Settings,
    SettingsError,
    redact_url,
)


def test_defaults_point_at_a_local_machine() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.app_secrets == ()
    assert settings.verify_token == ""
    assert settings.amqp_url == DEFAULT_AMQP_URL == "amqp://guest:guest@127.0.0.1:5672/"
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.max_body_bytes == 4 * 1024 * 1024
    assert settings.publish_timeout == 5.0
    assert settings.park_after == 600.0  # under RabbitMQ's default consumer_timeout, 30 min
    assert settings.log_level == "info"


def test_empty_mapping_does_not_read_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WHATSAPP_VERIFY_TOKEN", "from-process")
    assert Settings.from_env({}).verify_token == ""
    assert Settings.from_env().verify_token == "from-process"


def test_values_are_read_and_converted() -> None:
    settings = Settings.from_env(
        {
            "WHATSAPP_VERIFY_TOKEN": "vt",
            "CIVICLINE_AMQP_URL": "amqp://u:p@broker:5672/v",
            "GRAPH_API_BASE_URL": "http://graph.local:9000/",
            "INGRESS_PORT": "9080",
            "INGRESS_MAX_BODY_BYTES": "1024",
            "CIVICLINE_PUBLISH_TIMEOUT": "0.5",
            "CIVICLINE_PARK_AFTER": "300",
            "CIVICLINE_LOG_LEVEL": "DEBUG",
        },
        service_name="ingress",
    )
    assert settings.verify_token == "vt"
    assert settings.amqp_url == "amqp://u:p@broker:5672/v"
    assert settings.graph_api_base_url == "http://graph.local:9000"
    assert settings.ingress_port == 9080
    assert settings.max_body_bytes == 1024
    assert settings.publish_timeout == 0.5
    assert settings.park_after == 300.0
    assert settings.log_level == "debug"
    assert settings.service_name == "ingress"


def test_app_secrets_are_comma_separated_and_stripped() -> None:
    settings = Settings.from_env({"WHATSAPP_APP_SECRET": " old-secret , new-secret,, ,"})
    assert settings.app_secrets == ("old-secret", "new-secret")


def test_secret_is_read_from_its_file_and_stripped(tmp_path: Path) -> None:
    secret_file = tmp_path / "app-secret"
    secret_file.write_text("s1,s2\n", encoding="utf-8")
    token_file = tmp_path / "verify-token"
    token_file.write_text("  vt-from-file \n", encoding="utf-8")
    settings = Settings.from_env(
        {
            "WHATSAPP_APP_SECRET_FILE": str(secret_file),
            "WHATSAPP_VERIFY_TOKEN_FILE": str(token_file),
        },
        require=("WHATSAPP_APP_SECRET", "WHATSAPP_VERIFY_TOKEN"),
    )
    assert settings.app_secrets == ("s1", "s2")
    assert settings.verify_token == "vt-from-file"


def test_name_and_name_file_together_is_an_error(tmp_path: Path) -> None:
    secret_file = tmp_path / "app-secret"
    secret_file.write_text("from-file", encoding="utf-8")
    with pytest.raises(SettingsError, match="WHATSAPP_APP_SECRET or WHATSAPP_APP_SECRET_FILE"):
        Settings.from_env(
            {"WHATSAPP_APP_SECRET": "direct", "WHATSAPP_APP_SECRET_FILE": str(secret_file)}
        )


def test_unreadable_secret_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    with pytest.raises(SettingsError, match="WHATSAPP_ACCESS_TOKEN_FILE") as raised:
        Settings.from_env({"WHATSAPP_ACCESS_TOKEN_FILE": str(missing)})
    assert "cannot be read" in str(raised.value)


def test_every_missing_required_name_is_listed_in_one_error() -> None:
    required = ("WHATSAPP_APP_SECRET", "WHATSAPP_VERIFY_TOKEN", "WHATSAPP_ACCESS_TOKEN")
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({}, require=required)
    message = str(raised.value)
    for name in required:
        assert f"{name} (or {name}_FILE) is required" in message


def test_problems_of_different_kinds_are_reported_together() -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env(
            {"INGRESS_PORT": "eighty", "CIVICLINE_PREFETCH": "0", "CIVICLINE_LOG_LEVEL": "loud"},
            require=("WHATSAPP_VERIFY_TOKEN",),
        )
    message = str(raised.value)
    assert "WHATSAPP_VERIFY_TOKEN (or WHATSAPP_VERIFY_TOKEN_FILE) is required" in message
    assert "INGRESS_PORT must be an integer, got 'eighty'" in message
    assert "CIVICLINE_PREFETCH must be positive" in message
    assert "CIVICLINE_LOG_LEVEL must be" in message


@pytest.mark.parametrize("raw", ["abc", "1.5", " ", "0x10"])
def test_bad_integer_is_refused(raw: str) -> None:
    with pytest.raises(SettingsError, match="AUDIT_BATCH_SIZE must be an integer"):
        Settings.from_env({"AUDIT_BATCH_SIZE": raw})


def test_an_empty_value_means_unset() -> None:
    settings = Settings.from_env(
        {"AUDIT_BATCH_SIZE": "", "CIVICLINE_AMQP_URL": "", "WHATSAPP_APP_SECRET": ""}
    )
    assert settings.audit_batch_size == Settings().audit_batch_size
    assert settings.amqp_url == Settings().amqp_url
    with pytest.raises(SettingsError, match=r"WHATSAPP_APP_SECRET .* is required"):
        Settings.from_env({"WHATSAPP_APP_SECRET": ""}, require=("WHATSAPP_APP_SECRET",))


def test_bad_seconds_are_refused() -> None:
    with pytest.raises(SettingsError, match="CIVICLINE_PUBLISH_TIMEOUT must be a number"):
        Settings.from_env({"CIVICLINE_PUBLISH_TIMEOUT": "soon"})
    with pytest.raises(SettingsError, match="CIVICLINE_PUBLISH_TIMEOUT must be positive"):
        Settings.from_env({"CIVICLINE_PUBLISH_TIMEOUT": "-1"})


def test_repr_never_shows_a_secret(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("access-token-from-file-QQQ", encoding="utf-8")
    settings = Settings.from_env(
        {
            "WHATSAPP_APP_SECRET": "app-secret-AAA,app-secret-BBB",
            "WHATSAPP_VERIFY_TOKEN": "verify-token-CCC",
            "WHATSAPP_ACCESS_TOKEN_FILE": str(token_file),
            "CIVICLINE_AMQP_URL": "amqp://user:amqp-password-DDD@broker/",
            "CIVICLINE_DATABASE_URL": "postgresql://user:db-password-EEE@db/civicline",
        }
    )
    shown = repr(settings) + str(settings)
    for secret in (
        "app-secret-AAA",
        "app-secret-BBB",
        "verify-token-CCC",
        "access-token-from-file-QQQ",
        "amqp-password-DDD",
        "db-password-EEE",
    ):
        assert secret not in shown


def test_settings_error_does_not_echo_secret_values(tmp_path: Path) -> None:
    secret_file = tmp_path / "app-secret"
    secret_file.write_text("from-file-SECRET", encoding="utf-8")
    with pytest.raises(SettingsError) as raised:
        Settings.from_env(
            {"WHATSAPP_APP_SECRET": "direct-SECRET", "WHATSAPP_APP_SECRET_FILE": str(secret_file)}
        )
    assert "direct-SECRET" not in str(raised.value)
    assert "from-file-SECRET" not in str(raised.value)


def test_redact_url_hides_only_the_password() -> None:
    assert redact_url("amqp://guest:hunter2@127.0.0.1:5672/vh") == (
        "amqp://guest:***@127.0.0.1:5672/vh"
    )
    assert redact_url("postgresql://postgres@127.0.0.1:5432/db") == (
        "postgresql://postgres@127.0.0.1:5432/db"
    )
