"""The audit service's settings: the signing key is a secret (env or file, never in repr), the
checkpoint thresholds are validated, and no key means no signing rather than a failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from civicline.audit.app import load_privacy, load_signer
from civicline.audit.checkpoint import Signer
from civicline.audit.privacy import PrivacyKeys
from civicline.common.settings import Settings, SettingsError

SIGNER = Signer.generate("settings.civicline.example/audit")


def test_defaults_sign_nothing_and_write_no_files() -> None:
    settings = Settings.from_env({})
    assert settings.audit_signing_key == ""
    assert load_signer(settings) is None
    assert settings.audit_checkpoint_interval == 60.0
    assert settings.audit_checkpoint_size == 10_000
    assert settings.audit_checkpoint_dir is None


def test_the_signing_key_comes_from_a_file_and_never_shows(tmp_path: Path) -> None:
    key = tmp_path / "audit.key"
    key.write_text(SIGNER.encode() + "\n")
    settings = Settings.from_env(
        {
            "AUDIT_SIGNING_KEY_FILE": str(key),
            "AUDIT_CHECKPOINT_INTERVAL": "2.5",
            "AUDIT_CHECKPOINT_SIZE": "500",
            "AUDIT_CHECKPOINT_DIR": str(tmp_path / "heads"),
        }
    )
    assert load_signer(settings) == SIGNER
    assert SIGNER.encode() not in repr(settings)
    assert settings.audit_checkpoint_interval == 2.5
    assert settings.audit_checkpoint_size == 500
    assert settings.audit_checkpoint_dir == str(tmp_path / "heads")


def test_a_malformed_key_stops_the_service_with_a_clear_message() -> None:
    settings = Settings.from_env({"AUDIT_SIGNING_KEY": "PRIVATE+KEY+oops"})
    with pytest.raises(SettingsError, match="AUDIT_SIGNING_KEY"):
        load_signer(settings)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AUDIT_CHECKPOINT_INTERVAL", "0"),
        ("AUDIT_CHECKPOINT_INTERVAL", "soon"),
        ("AUDIT_CHECKPOINT_SIZE", "-1"),
        ("AUDIT_CHECKPOINT_SIZE", "1e3"),
    ],
)
def test_bad_checkpoint_thresholds_are_refused(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_key_and_key_file_together_are_refused(tmp_path: Path) -> None:
    key = tmp_path / "audit.key"
    key.write_text(SIGNER.encode())
    with pytest.raises(SettingsError, match="AUDIT_SIGNING_KEY"):
        Settings.from_env(
            {"AUDIT_SIGNING_KEY": SIGNER.encode(), "AUDIT_SIGNING_KEY_FILE": str(key)}
        )


def test_privacy_keys_come_from_files_both_or_neither(tmp_path: Path) -> None:
    assert load_privacy(Settings.from_env({})) is None
    pseudonym, master = tmp_path / "pseudonym", tmp_path / "master"
    pseudonym.write_text("a" * 64 + "\n")
    master.write_text("b" * 64 + "\n")
    settings = Settings.from_env(
        {"AUDIT_PSEUDONYM_KEY_FILE": str(pseudonym), "AUDIT_MASTER_KEY_FILE": str(master)}
    )
    keys = load_privacy(settings)
    assert keys is not None
    assert keys == PrivacyKeys.from_secrets("a" * 64, "b" * 64)
    assert "a" * 64 not in repr(settings)
    assert "b" * 64 not in repr(settings)
    with pytest.raises(SettingsError, match="both"):
        load_privacy(Settings.from_env({"AUDIT_PSEUDONYM_KEY": "a" * 64}))
    with pytest.raises(SettingsError, match="at least 32"):
        load_privacy(
            Settings.from_env({"AUDIT_PSEUDONYM_KEY": "short", "AUDIT_MASTER_KEY": "b" * 64})
        )
